"""vncaudit.targets: port and target syntax, inputs, exclusions, policy, the randomised walk.

No test sends a packet: hostnames go through an injected resolver (or "localhost", which the
system answers from /etc/hosts), and addresses are only ever parsed, never contacted.
"""

from __future__ import annotations

import io
import ipaddress
import pickle
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit.exceptions import UsageError
from vncaudit.models import Target
from vncaudit.targets import (
    DEFAULT_PORTS,
    SPECIAL_NETWORKS,
    TargetSpace,
    build_target_space,
    format_ports,
    parse_ports,
)

DATA = Path(__file__).parent / "data" / "targets"
HOSTS = {  # a hosts-file-like table for the injected resolver
    "lab-host.test": ["198.18.5.5"],
    "dual.lab.test": ["198.18.5.6", "fd00::6"],
    "dup.lab.test": ["198.18.5.7", "198.18.5.7"],
    "multicast.lab.test": ["224.0.0.251"],
    "linklocal.lab.test": ["fe80::1%lo"],
}


def fake_resolver(calls: list[str] | None = None) -> Callable[[str], list[str]]:
    def resolve(name: str) -> list[str]:
        if calls is not None:
            calls.append(name)
        try:
            return list(HOSTS[name])
        except KeyError:
            raise OSError(-2, "Name or service not known") from None

    return resolve


def space(*exprs: str, ports: tuple[int, ...] = (5900,), **kw: Any) -> TargetSpace:
    kw.setdefault("resolve", fake_resolver())
    return build_target_space(exprs, ports, **kw)


def pairs(s: TargetSpace, **kw: Any) -> list[tuple[str, int]]:
    return [(t.host, t.port) for t in s.iter_targets(**kw)]


def hosts(s: TargetSpace) -> set[str]:
    return {t.host for t in s.iter_targets()}


def usage_error(fn: Callable[[], object]) -> str:
    with pytest.raises(UsageError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip() == message and message
    return message


# ------------------------------------------------------------------------------------ ports


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5900", (5900,)),
        ("5900-5903", (5900, 5901, 5902, 5903)),
        ("5900-5902,5800", (5800, 5900, 5901, 5902)),
        ("5901,5900,5901, 5900", (5900, 5901)),
        (":0", (5900,)),
        (":1", (5901,)),
        (":0-:3", (5900, 5901, 5902, 5903)),
        (":2-3", (5902, 5903)),
        (":0,5800,22", (22, 5800, 5900)),
        ("65530-", (65530, 65531, 65532, 65533, 65534, 65535)),
        ("-3", (1, 2, 3)),
        ("1", (1,)),
        ("65535", (65535,)),
    ],
)
def test_parse_ports(spec: str, expected: tuple[int, ...]) -> None:
    assert parse_ports(spec) == expected


@pytest.mark.parametrize("spec", ["-", "all", "ALL", "1-65535", "-,5900"])
def test_parse_ports_all(spec: str) -> None:
    assert parse_ports(spec) == tuple(range(1, 65536))


def test_default_ports() -> None:
    assert parse_ports(DEFAULT_PORTS) == (5800, *range(5900, 5911))
    assert format_ports(parse_ports(DEFAULT_PORTS)) == DEFAULT_PORTS


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("0", "port 0 is outside 1-65535"),
        ("65536", "port 65536 is outside 1-65535"),
        ("5910-5900", "reversed"),
        (":9-:0", "reversed"),
        ("vnc", "'vnc' is not a port number"),
        ("", "empty port list"),
        ("  ", "empty port list"),
        ("5900,,5901", "empty item"),
        ("5900,", "empty item"),
        (":59636", "would be port 65536"),
        (":x", "not a display number"),
        ("1-2-3", "not a port number"),
        ("5_900", "not a port number"),
        ("\u0665\u0669\u0660\u0660", "not a port number"),  # Arabic-Indic digits
        ("5900\n5901", "not a port number"),
        ("99999999999999999999", "not a port number"),
    ],
)
def test_parse_ports_rejects(spec: str, fragment: str) -> None:
    message = usage_error(lambda: parse_ports(spec))
    assert fragment in message
    if spec.strip():
        assert message.startswith("invalid port list ")


@given(st.text(alphabet=st.sampled_from("0123456789:-, al"), max_size=20) | st.text(max_size=20))
def test_parse_ports_never_crashes(spec: str) -> None:
    try:
        ports = parse_ports(spec)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert ports == tuple(sorted(set(ports)))
    assert ports and all(1 <= p <= 65535 for p in ports)


@given(st.sets(st.integers(1, 65535), min_size=1, max_size=50))
def test_format_ports_round_trip(ports: set[int]) -> None:
    assert parse_ports(format_ports(ports)) == tuple(sorted(ports))


# ------------------------------------------------------------------------------ expressions


def test_single_addresses() -> None:
    assert pairs(space("10.1.2.3")) == [("10.1.2.3", 5900)]
    assert pairs(space("fd00::1")) == [("fd00::1", 5900)]
    assert pairs(space("[fd00:0:0::2]")) == [("fd00::2", 5900)]
    assert pairs(space("  10.1.2.3  ")) == [("10.1.2.3", 5900)]


def test_cidrs() -> None:
    s = space("10.0.0.0/30", "fd00::/126", ports=(5900, 5901))
    assert len(s) == s.count == 16 and s.addresses_count == 8
    assert hosts(s) == {"10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3",
                        "fd00::", "fd00::1", "fd00::2", "fd00::3"}
    assert s.describe() == ["10.0.0.0/30", "fd00::/126"]
    # host bits set: like nmap, scan the whole network and record it normalised
    assert space("10.0.0.5/30").describe() == ["10.0.0.4/30"]
    assert space("10.0.0.5/32").describe() == ["10.0.0.5"]


def test_ranges() -> None:
    full = space("10.0.0.250-10.0.1.2")
    assert hosts(full) == {f"10.0.0.{i}" for i in range(250, 256)} | {"10.0.1.0", "10.0.1.1",
                                                                      "10.0.1.2"}
    assert full.describe() == ["10.0.0.250-10.0.1.2"]
    short = space("10.0.0.1-50")
    assert len(short) == 50 and short.describe() == ["10.0.0.1-10.0.0.50"]
    assert hosts(space("10.0.0.7-7")) == {"10.0.0.7"}
    v6 = space("fd00::1-fd00::4")
    assert hosts(v6) == {"fd00::1", "fd00::2", "fd00::3", "fd00::4"}
    assert space("fd00::1-ff").count == 255  # short form: the last 16-bit group, in hex
    assert space("fd00::1-ff").describe() == ["fd00::1-fd00::ff"]


def test_hostnames_resolved_once_and_all_addresses_kept() -> None:
    calls: list[str] = []
    s = space("dual.lab.test", "DUAL.lab.test.", "lab-host.test", "dup.lab.test",
              resolve=fake_resolver(calls), ports=(5900, 5901))
    assert sorted(calls) == ["dual.lab.test", "dup.lab.test", "lab-host.test"]
    targets = list(s.iter_targets())
    assert len(targets) == 8
    assert {(t.host, t.hostname) for t in targets} == {
        ("198.18.5.6", "dual.lab.test"), ("fd00::6", "dual.lab.test"),
        ("198.18.5.5", "lab-host.test"), ("198.18.5.7", "dup.lab.test"),
    }
    assert s.describe() == ["dual.lab.test", "lab-host.test", "dup.lab.test"]


def test_plain_addresses_have_no_hostname() -> None:
    assert {t.hostname for t in space("10.0.0.0/29").iter_targets()} == {None}


def test_localhost_with_the_system_resolver() -> None:
    s = build_target_space(["localhost"], [5900])  # /etc/hosts: no packet leaves the machine
    targets = list(s.iter_targets())
    assert targets and all(t.hostname == "localhost" for t in targets)
    assert all(ipaddress.ip_address(t.host).is_loopback for t in targets)


def test_resolution_failure() -> None:
    message = usage_error(lambda: space("nowhere.lab.test"))
    assert message.startswith("cannot resolve nowhere.lab.test")


def test_resolver_returning_garbage() -> None:
    message = usage_error(lambda: space("x.test", resolve=lambda _: ["not-an-ip"]))
    assert "cannot resolve x.test" in message and "not-an-ip" in message
    assert "no IPv4 or IPv6 address" in usage_error(lambda: space("x.test", resolve=lambda _: []))


def test_link_local_with_zone() -> None:
    assert pairs(space("fe80::1%lo")) == [("fe80::1%lo", 5900)]
    assert pairs(space("linklocal.lab.test")) == [("fe80::1%lo", 5900)]
    assert hosts(space("169.254.0.1-3")) == {"169.254.0.1", "169.254.0.2", "169.254.0.3"}


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("10.0.0.256", "invalid target '10.0.0.256'"),
        ("10.1", "invalid target '10.1'"),
        ("1", "invalid target '1'"),
        ("010.0.0.1", "invalid target '010.0.0.1'"),
        ("10.0.5-1.1", "octet 3: 5-1 runs backwards"),
        ("10.0.0.1,,3", "octet 4 has ''"),
        ("10.0.1-3-5.1", "octet 3 has '1-3-5'"),
        ("10.0.0.256", "octet 4: 256 is over 255"),
        ("10.0.0.1,300", "octet 4: 300 is over 255"),
        ("10.0.0.01", "a leading zero is ambiguous"),
        ("*.*.*.1", "splits into 16,777,216 separate ranges (at most 65,536"),
        ("foo bar", "invalid target 'foo bar'"),
        ("-bad.example", "invalid target"),
        ("a..b", "invalid target"),
        ("*.example.com", "invalid target"),
        ("10.0.0.0/33", "invalid network '10.0.0.0/33'"),
        ("10.0.0.0/8/8", "invalid network"),
        ("host.test/24", "cannot resolve host.test"),
        ("host.test/x", "invalid network 'host.test/x': the prefix length must be"),
        ("fd00::/129", "invalid network"),
        ("10.0.0.9-10.0.0.1", "the end comes before the start"),
        ("10.0.0.9-3", "the end comes before the start"),
        ("10.0.0.1-256", "is not an address or last octet"),
        ("10.0.0.1--", "is not an address or last octet"),
        ("10.0.0.1-fd00::1", "mixes IPv4 and IPv6"),
        ("fe80::1%lo-fe80::5", "zone index"),
        ("fd00::1-fe80::1%lo", "zone index"),
        ("fd00:::1", "invalid IPv6 address"),
        ("", "empty target expression"),
        ("10.0.0.1\nrm -rf /", "invalid network"),
        ("10.0.0.1\nfoo", "invalid target"),
        ("x" * 300 + ".test", "invalid target"),
    ],
)
def test_bad_expressions(expr: str, fragment: str) -> None:
    message = usage_error(lambda: space(expr))
    assert fragment in message


def test_nothing_resolves_a_broken_address() -> None:
    """Names that look numeric are errors; getaddrinfo would read '10.1' as 10.0.0.1."""
    calls: list[str] = []
    for expr in ("10.1", "10.0.0.256", "1-254", "10.0.0.1.5"):
        usage_error(lambda: space(expr, resolve=fake_resolver(calls)))  # noqa: B023
    assert calls == []


@settings(max_examples=300)
@given(st.text(max_size=40) | st.from_regex(r"[0-9a-f:.\-/%\[\]]{1,30}", fullmatch=True))
def test_any_expression_parses_or_is_a_usage_error(expr: str) -> None:
    try:
        s = build_target_space([expr], [5900], resolve=fake_resolver(), allow_special=True)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert s.count >= 1


# ---------------------------------------------------------------------------- special ranges


@pytest.mark.parametrize(
    ("expr", "network"),
    [
        ("0.0.0.0", "0.0.0.0/8"),
        ("0.1.2.3", "0.0.0.0/8"),
        ("255.255.255.255", "255.255.255.255/32"),
        ("224.0.0.1", "224.0.0.0/4 (multicast)"),
        ("239.255.255.250", "224.0.0.0/4 (multicast)"),
        ("240.0.0.1", "240.0.0.0/4 (reserved)"),
        ("192.0.2.10", "192.0.2.0/24"),
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("::", "::/128"),
        ("ff02::1", "ff00::/8 (IPv6 multicast)"),
        ("::ffff:10.0.0.1", "::ffff:0:0/96"),
        ("2001:db8::1", "2001:db8::/32"),
        ("0.0.0.0/0", "0.0.0.0/8"),
        ("223.255.255.250-224.0.0.3", "224.0.0.0/4"),
        ("multicast.lab.test", "224.0.0.0/4"),
    ],
)
def test_special_ranges_refused_unless_allowed(expr: str, network: str) -> None:
    message = usage_error(lambda: space(expr))
    assert network in message and "--allow-special" in message
    assert repr(expr) in message or expr in message
    assert space(expr, allow_special=True).count >= 1


def test_special_message_names_the_resolved_address() -> None:
    message = usage_error(lambda: space("multicast.lab.test"))
    assert "'multicast.lab.test' (resolves to 224.0.0.251)" in message


@pytest.mark.parametrize(
    "expr",
    ["127.0.0.1", "127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
     "198.18.0.0/15", "100.64.0.0/10", "169.254.0.0/16", "fe80::/112", "fd00::/104",
     "1.1.1.1", "2606:4700::1111"],
)
def test_normal_ranges_allowed(expr: str) -> None:
    assert space(expr).count >= 1


def test_special_networks_table_is_valid() -> None:
    for net, why in SPECIAL_NETWORKS:
        ipaddress.ip_network(net)
        assert why and "\n" not in why


def test_excluding_the_special_part_makes_a_range_acceptable() -> None:
    message = usage_error(lambda: space("223.255.255.0/24", "224.0.0.0/24"))
    assert "'224.0.0.0/24'" in message
    s = space("0.0.0.0/7", excludes=["0.0.0.0/8"], ports=(5900,))
    assert s.count == 2**24 and s.describe() == ["0.0.0.0/7"] and s.excludes == ("0.0.0.0/8",)


def test_big_ipv6_prefix_refused() -> None:
    message = usage_error(lambda: space("fd00::/64"))
    assert "2**64" in message and "/104" in message and "'fd00::/64'" in message
    assert "2**25" in usage_error(lambda: space("fd00::/103"))
    assert space("fd00::/104").count == 2**24
    assert "16777217" in usage_error(lambda: space("fd00::-fd00::100:0"))
    # excluding from a large IPv6 prefix is fine
    assert space("fd00:1::/120", excludes=["fd00::/64"], ports=(1,)).count == 256


# ------------------------------------------------------------------------------- exclusions


def test_exclusion_inside_a_range() -> None:
    s = space("10.0.0.0/24", excludes=["10.0.0.64/26", "10.0.0.200-210", "10.0.0.255"],
              ports=(5900, 5901))
    expected = {f"10.0.0.{i}" for i in range(256)} - {f"10.0.0.{i}" for i in range(64, 128)}
    expected -= {f"10.0.0.{i}" for i in range(200, 211)} | {"10.0.0.255"}
    assert hosts(s) == expected
    assert s.addresses_count == len(expected) and s.count == 2 * len(expected)
    assert s.excludes == ("10.0.0.64/26", "10.0.0.200-10.0.0.210", "10.0.0.255")


def test_exclusion_by_hostname_and_file() -> None:
    s = space("198.18.5.0/29", "198.18.0.0/28", excludes=["lab-host.test"],
              exclude_files=[DATA / "excludes.lst"])
    assert "198.18.5.5" not in hosts(s)
    assert "198.18.0.1" not in hosts(s) and "198.18.0.11" not in hosts(s)
    assert s.count == 8 + 16 - 3


def test_everything_excluded() -> None:
    message = usage_error(lambda: space("10.0.0.0/30", excludes=["10.0.0.0/24"]))
    assert message.startswith("no targets left")


def test_bad_exclusion() -> None:
    message = usage_error(lambda: space("10.0.0.1", excludes=["10.0.0.300"]))
    assert message == "invalid target '10.0.0.300': octet 4: 300 is over 255"
    message = usage_error(lambda: space("10.0.0.1", excludes=["gone.lab.test"]))
    assert message.startswith("cannot resolve gone.lab.test")


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=6),
    st.lists(st.integers(1, 4), min_size=1, max_size=3),
)
def test_interval_arithmetic_matches_sets(
    targets: list[tuple[int, int]], cuts: list[tuple[int, int]], ports: list[int]
) -> None:
    base = int(ipaddress.IPv4Address("10.0.0.0"))

    def expr(start: int, length: int) -> str:
        first, last = base + start, base + start + length
        return f"{ipaddress.IPv4Address(first)}-{ipaddress.IPv4Address(last)}"

    wanted = {base + s + i for s, n in targets for i in range(n + 1)}
    wanted -= {base + s + i for s, n in cuts for i in range(n + 1)}
    try:
        s = build_target_space([expr(*t) for t in targets], ports,
                               excludes=[expr(*c) for c in cuts])
    except UsageError as exc:
        assert not wanted and str(exc).startswith("no targets left")
        return
    got = [(int(ipaddress.IPv4Address(t.host)), t.port) for t in s.iter_targets(seed=1)]
    assert len(got) == len(set(got)) == s.count == len(wanted) * len(set(ports))
    assert {a for a, _ in got} == wanted and s.addresses_count == len(wanted)
    assert all(Target(str(ipaddress.IPv4Address(a)), p) in s for a, p in got)


def test_overlapping_expressions_are_scanned_once() -> None:
    s = space("10.0.0.0/24", "10.0.0.5", "10.0.0.10-20", "10.0.0.128/25", ports=(5900, 5901))
    got = pairs(s)
    assert len(got) == len(set(got)) == 512 == s.count


# ------------------------------------------------------------------------------ input files


def test_input_list_file() -> None:
    s = space(input_files=[DATA / "targets.lst"])
    assert hosts(s) == {"198.18.0.0", "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.10",
                        "198.18.0.11", "198.18.0.12", "198.18.0.20", "fd00::1", "198.18.5.5"}
    assert s.describe() == ["198.18.0.0/30", "198.18.0.10-198.18.0.12", "198.18.0.20",
                            "fd00::1", "lab-host.test"]


def test_input_list_error_names_file_and_line() -> None:
    path = DATA / "bad-target.lst"
    message = usage_error(lambda: space(input_files=[path]))
    assert message.startswith(f"{path}:3: invalid target '198.18.0.300'")


def test_input_list_special_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.lst"
    path.write_text("10.0.0.1\n\n  224.0.0.5 # mdns\n")
    message = usage_error(lambda: space(input_files=[path]))
    assert message.startswith(f"{path}:3: target '224.0.0.5' is in 224.0.0.0/4")


def test_input_list_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("10.0.0.1\n10.0.0.2 # two\n"))
    assert hosts(space(input_files=["-"])) == {"10.0.0.1", "10.0.0.2"}


@pytest.mark.parametrize("option", ["input_files", "exclude_files", "nmap_xml", "masscan"])
def test_missing_file(tmp_path: Path, option: str) -> None:
    missing = tmp_path / "nope.lst"
    kw: dict[str, Any] = {option: [missing], "input_files": [DATA / "targets.lst"]}
    kw[option] = [missing]
    message = usage_error(lambda: space(**kw))
    assert message.startswith(f"cannot read {missing}: ")


def test_binary_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin.lst"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8 text" in usage_error(lambda: space(input_files=[binary]))


def test_empty_inputs(tmp_path: Path) -> None:
    assert usage_error(lambda: space()).startswith("no targets given")
    assert usage_error(lambda: build_target_space(iter([]), [5900])).startswith("no targets")
    empty = tmp_path / "empty.lst"
    empty.write_text("# nothing here\n\n")
    assert "input files list no target" in usage_error(lambda: space(input_files=[empty]))
    assert "no ports given" in usage_error(lambda: space("10.0.0.1", ports=()))
    assert "invalid port 0" in usage_error(lambda: space("10.0.0.1", ports=(0,)))


def test_nmap_xml_real_output() -> None:
    s = space(nmap_xml=[DATA / "nmap-loopback-real.xml"])
    assert pairs(s) == [("127.0.0.1", 15999)]  # only the open port; port 1 was closed


def test_nmap_xml_hosts_and_ports() -> None:
    s = space(nmap_xml=[DATA / "nmap-mixed.xml"], ports=(5900, 5901))
    targets = set(s.iter_targets())
    assert targets == {
        Target("198.18.0.1", 5900, "vnc1.lab.test"),  # its open ports; user-given name kept
        Target("198.18.0.1", 5901, "vnc1.lab.test"),
        # 198.18.0.2: port-scanned, nothing open -> nothing; 198.18.0.3: down
        Target("198.18.0.4", 5900, "pinged.lab.test"),  # up, not port-scanned: the -p ports
        Target("198.18.0.4", 5901, "pinged.lab.test"),
        Target("fd00::5", 5905),
    }
    assert s.count == 5 and s.addresses_count == 3
    assert s.describe() == ["198.18.0.1", "198.18.0.4", "fd00::5"]


def test_nmap_xml_with_exclusions_and_duplicates() -> None:
    s = space("198.18.0.1", nmap_xml=[DATA / "nmap-mixed.xml"], excludes=["198.18.0.4"],
              ports=(5900,))
    assert sorted(pairs(s)) == [("198.18.0.1", 5900), ("198.18.0.1", 5901), ("fd00::5", 5905)]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("nmap-xxe.xml", "refusing XML with a DTD or entities"),
        ("nmap-billion-laughs.xml", "refusing XML with a DTD or entities"),
        ("nmap-external-dtd.xml", "refusing XML with a DTD or entities"),
        ("nmap-truncated.xml", "not valid nmap XML"),
        ("targets.lst", "not valid nmap XML"),
        ("masscan-oJ.json", "not valid nmap XML"),
    ],
)
def test_nmap_xml_refused(name: str, fragment: str) -> None:
    message = usage_error(lambda: space(nmap_xml=[DATA / name]))
    assert message.startswith(str(DATA / name)) and fragment in message


def test_nmap_xml_wrong_root(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text("<html><host/></html>")
    assert "not nmap XML (root element <html>)" in usage_error(lambda: space(nmap_xml=[path]))
    path.write_text("")
    assert "not valid nmap XML" in usage_error(lambda: space(nmap_xml=[path]))


def test_nmap_xml_bad_port(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text('<nmaprun><host><address addr="10.0.0.1" addrtype="ipv4"/><ports>'
                    '<port protocol="tcp" portid="70000"><state state="open"/></port>'
                    "</ports></host></nmaprun>")
    assert "'70000' is not a port number" in usage_error(lambda: space(nmap_xml=[path]))


def test_nmap_xml_special_host(tmp_path: Path) -> None:
    path = tmp_path / "x.xml"
    path.write_text('<nmaprun><host><address addr="224.0.0.1" addrtype="ipv4"/></host></nmaprun>')
    message = usage_error(lambda: space(nmap_xml=[path]))
    assert message.startswith(f"{path}: host 224.0.0.1 is in 224.0.0.0/4")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("masscan-oJ.json", {("198.18.0.5", 5900), ("198.18.0.6", 5901)}),
        ("masscan-old.json", {("198.18.0.8", 5902), ("198.18.0.9", 5903)}),
        ("masscan-oD.ndjson", {("198.18.0.10", 5900), ("198.18.0.11", 5901)}),
        ("masscan-pretty.json", {("198.18.0.13", 5900), ("198.18.0.13", 5800)}),
        ("masscan-oL.txt", {("198.18.0.20", 5900), ("198.18.0.20", 5901)}),
        ("masscan-oX.xml", {("198.18.1.1", 5900), ("198.18.1.2", 5901)}),
    ],
)
def test_masscan_formats(name: str, expected: set[tuple[str, int]]) -> None:
    s = space(masscan=[DATA / name], ports=(1,))  # pairs ignore -p: masscan found them open
    got = pairs(s)
    assert len(got) == len(set(got)) and set(got) == expected


def test_masscan_pairs_merge_with_the_port_space() -> None:
    s = space("198.18.0.20", masscan=[DATA / "masscan-oL.txt"], ports=(5900,))
    assert sorted(pairs(s)) == [("198.18.0.20", 5900), ("198.18.0.20", 5901)]
    assert s.addresses_count == 1 and Target("198.18.0.20", 5901) in s


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("open tcp 5900\n", ":1: not a masscan list line"),
        ("hello world\n", ":1: not a masscan list line"),
        ("open tcp 99999 10.0.0.1 1\n", "'99999' is not a port number"),
        ("open tcp 5900 10.0.0.300 1\n", "invalid host address '10.0.0.300'"),
        ('[{"ip": "10.0.0.1", "ports": [{"port": "x"}]}]', "'x' is not a port number"),
        ('[{"ip": 5, "ports": []}]', "needs a string 'ip'"),
        ("[1, 2]", "record is not a JSON object"),
        ('[{"ip": "10.0.0.1", "ports": [5900]}]', "port entry is not a JSON object"),
        ('{"ip": "10.0.0.1", "ports": [\n', "not valid masscan JSON"),
        ('[{"ip": "224.0.0.1", "ports": [{"port": 1}]}]', "host 224.0.0.1 is in 224.0.0.0/4"),
    ],
)
def test_masscan_bad_input(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "m.out"
    path.write_text(content)
    message = usage_error(lambda: space(masscan=[path]))
    assert message.startswith(str(path)) and fragment in message


# --------------------------------------------------------------------- the randomised walk


def test_permutation_covers_every_target_exactly_once() -> None:
    s = space("10.0.0.0/22", "10.0.8.0/24", "fd00::/120", ports=(5900, 5901, 5902))
    got = pairs(s)
    expected = {(h, p) for h in hosts(s) for p in (5900, 5901, 5902)}
    assert len(got) == len(set(got)) == s.count == 3 * (1024 + 256 + 256) == len(expected)
    assert set(got) == expected


def test_order_is_random_and_reproducible() -> None:
    s = space("10.0.0.0/20")
    assert pairs(s, seed=42) == pairs(s, seed=42)
    assert pairs(s, seed=42) != pairs(s, seed=43)
    assert pairs(s) == pairs(s)  # no seed: the space's own seed, fixed at build time
    first = [int(ipaddress.IPv4Address(h)) & 0xFFF for h, _ in pairs(s, seed=7)[:200]]
    assert first != sorted(first) and first != sorted(first, reverse=True)
    steps = [abs(b - a) for a, b in zip(first, first[1:], strict=False)]
    assert sum(1 for d in steps if d == 1) < 10  # not walking neighbours


def test_same_order_in_another_process_shape() -> None:
    """The order depends only on the seed and the space: a pickled copy (a Dask worker) agrees."""
    s = space("10.0.0.0/24", "fd00::/125", ports=(5900, 5901))
    clone = pickle.loads(pickle.dumps(s))
    assert pairs(clone, seed=5) == pairs(s, seed=5)
    assert clone.seed == s.seed and pairs(clone) == pairs(s)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 9), st.integers(0, 2**64))
def test_shards_are_disjoint_and_cover(n_addresses: int, shards: int, seed: int) -> None:
    s = space(f"10.0.0.0-{ipaddress.IPv4Address(167772160 + n_addresses - 1)}")
    parts = [pairs(s, seed=seed, shard=(i, shards)) for i in range(shards)]
    flat = [t for part in parts for t in part]
    assert len(flat) == len(set(flat)) == s.count == n_addresses
    assert set(flat) == set(pairs(s, seed=seed))
    assert s.shard(0, shards, seed) is not None and list(s.shard(0, shards, seed)) == [
        Target(h, p) for h, p in parts[0]
    ]


def test_each_shard_spreads_over_the_whole_space() -> None:
    s = space("10.0.0.0/16")
    for i in range(4):
        addrs = [int(ipaddress.IPv4Address(h)) & 0xFFFF for h, _ in pairs(s, shard=(i, 4))]
        assert 16000 - 200 < len(addrs) < 16400
        head = addrs[:500]
        assert min(head) < 6000 and max(head) > 60000


@pytest.mark.parametrize("shard", [(1, 1), (-1, 2), (0, 0), (3, 2)])
def test_bad_shard(shard: tuple[int, int]) -> None:
    message = usage_error(lambda: space("10.0.0.1").iter_targets(shard=shard))
    assert message.startswith("invalid shard")


def test_tiny_spaces() -> None:
    for n in range(1, 12):
        s = space(f"10.0.0.1-{n}")
        for seed in range(5):
            got = pairs(s, seed=seed)
            assert sorted(got) == sorted((f"10.0.0.{i}", 5900) for i in range(1, n + 1))


def test_huge_space_is_flat_in_memory_and_fast() -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        s = space("10.0.0.0/8", ports=(5900,))
        it = s.iter_targets(seed=3)
        first = [next(it) for _ in range(1000)]
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(s) == 2**24 and len(set(first)) == 1000
    assert all(t.host.startswith("10.") for t in first)
    assert peak < 2 * 1024 * 1024, peak
    assert elapsed < 2.0, elapsed


def test_whole_internet_all_ports_is_just_arithmetic() -> None:
    s = space("0.0.0.0/0", ports=parse_ports("-"), allow_special=True)
    assert s.count == 2**32 * 65535 and s.addresses_count == 2**32
    it = s.iter_targets(seed=1, shard=(3, 1000))
    assert len({next(it) for _ in range(100)}) == 100


def test_contains_and_repr() -> None:
    s = space("10.0.0.0/30", "fe80::1%lo", ports=(5900,))
    assert Target("10.0.0.3", 5900) in s
    assert Target("10.0.0.4", 5900) not in s and Target("10.0.0.3", 5901) not in s
    assert Target("fe80::1%lo", 5900) in s and Target("nonsense", 5900) not in s
    assert "not a target" not in s
    assert repr(s) == "<TargetSpace 5 targets, 5 addresses, ports 5900>"
    assert list(iter(s)) == list(s.iter_targets())
