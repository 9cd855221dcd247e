"""nmap's target syntax: octet patterns (`10.0.0.*`, `10.0.0-1.1-254`, `10.0.0.1,3`) and
`hostname/prefix` — exact counts, exclusions, flat memory, one-line errors, and the web
service refusing them with a clear message instead of resolving them as names."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vncaudit.exceptions import UsageError
from vncaudit.targets import TargetSpace, build_target_space
from vncaudit.web import Settings, create_app

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

HOSTS = {"host.test": ["10.9.8.7", "fd00::7"], "v6only.test": ["fd00::1:5"]}


def resolve(name: str) -> list[str]:
    try:
        return HOSTS[name]
    except KeyError:
        raise OSError(-2, "Name or service not known") from None


def space(*exprs: str, **kw: object) -> TargetSpace:
    return build_target_space(exprs, (5900,), resolve=resolve, **kw)  # type: ignore[arg-type]


def addresses(s: TargetSpace) -> set[str]:
    return {t.host for t in s.iter_targets()}


def expected(*octets: range | list[int]) -> set[str]:
    out = {""}
    for values in octets:
        out = {f"{p}.{v}" if p else str(v) for p in out for v in values}
    return out


@pytest.mark.parametrize(("expr", "want"), [
    ("10.0.0.*", expected([10], [0], [0], range(256))),
    ("10.0.0-1.1-254", expected([10], [0], [0, 1], range(1, 255))),
    ("10.0.0.1,3", {"10.0.0.1", "10.0.0.3"}),
    ("192.168.1,3.1-2,250-", expected([192], [168], [1, 3], [1, 2, *range(250, 256)])),
    ("10.0.0.-3", expected([10], [0], [0], range(4))),
    ("10.0.0.250-", expected([10], [0], [0], range(250, 256))),
    ("10.0.*.1", expected([10], [0], range(256), [1])),
    ("10.0.0.5,1-3,2", expected([10], [0], [0], [1, 2, 3, 5])),
])
def test_octet_patterns_yield_exactly_their_addresses(expr: str, want: set[str]) -> None:
    s = space(expr)
    assert addresses(s) == want
    assert s.count == s.addresses_count == len(want)  # exact, and nothing twice
    assert len(list(s.iter_targets())) == len(want)


def test_the_range_forms_that_were_there_mean_what_they_meant() -> None:
    assert addresses(space("10.0.0.1-3")) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert space("10.0.0.1-10.0.1.0").count == 256
    assert space("10.0.0.0/30").describe() == ["10.0.0.0/30"]


def test_exclusions_take_the_same_syntax() -> None:
    s = build_target_space(["10.0.0-1.1-254"], (5900, 5901), excludes=["10.0.1.*", "10.0.0.1,3"],
                           resolve=resolve)
    assert s.count == (254 - 2) * 2
    got = addresses(s)
    assert "10.0.0.2" in got and not {"10.0.0.1", "10.0.0.3"} & got
    assert not any(a.startswith("10.0.1.") for a in got)
    with pytest.raises(UsageError, match="the exclusions cover every target"):
        build_target_space(["10.0.0.1,3"], (5900,), excludes=["10.0.0.*"])


def test_special_networks_are_still_refused() -> None:
    with pytest.raises(UsageError, match="224.0.0.0/4 \\(multicast\\)"):
        space("224-225.0.0.1")
    assert space("224-225.0.0.1", allow_special=True).count == 2


_MEMORY_PROBE = """
import json, resource, sys
from vncaudit.targets import build_target_space
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
big = build_target_space([sys.argv[1]], (5900,))
split = build_target_space([sys.argv[2]], (5900,))
first = next(iter(split.iter_targets())).host
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps([big.count, split.count, first, grown]))
"""


def test_a_huge_pattern_is_intervals_not_addresses() -> None:
    """1.6 billion addresses in one interval, 16.6 million in 65,536: the process grows by a
    few MB (one address each would be gigabytes)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "1-100.*.*.*", "10.*.*.1-254"],
                         capture_output=True, text=True, timeout=120, check=True)
    big, split, first, grown_kib = json.loads(out.stdout)
    assert big == 100 * 2**24
    assert split == 2**16 * 254
    assert grown_kib < 40_000, grown_kib
    assert ipaddress.ip_address(first) in ipaddress.ip_network("10.0.0.0/8")
    assert first.rsplit(".", 1)[1] not in ("0", "255")


def test_hostname_with_prefix_is_the_network_around_its_address() -> None:
    s = space("host.test/30")
    assert addresses(s) == {"10.9.8.4", "10.9.8.5", "10.9.8.6", "10.9.8.7"}
    names = {t.host: t.hostname for t in s.iter_targets()}
    assert names["10.9.8.7"] == "host.test" and names["10.9.8.4"] is None
    assert s.describe() == ["host.test/30"]
    six = space("host.test/126")  # a prefix past 32 is the name's IPv6 network
    assert addresses(six) == {"fd00::4", "fd00::5", "fd00::6", "fd00::7"}
    assert space("host.test/30", excludes=["host.test"]).count == 3


@pytest.mark.parametrize(("expr", "message"), [
    ("*.*.*.1", "invalid target '*.*.*.1': it splits into 16,777,216 separate ranges (at most "
                "65,536 per expression); use fewer values in the first octets, or a CIDR"),
    ("10.0.0.300", "invalid target '10.0.0.300': octet 4: 300 is over 255"),
    ("10.0.9-3.1", "invalid target '10.0.9-3.1': octet 3: 9-3 runs backwards"),
    ("10.0.0.1,,2", "invalid target '10.0.0.1,,2': octet 4 has ''; give N, N-M, -M, N- or *"),
    ("10.0.0.1**", "invalid target '10.0.0.1**': octet 4 has '1**'; give N, N-M, -M, N- or *"),
    ("10.0.0.08", "invalid target '10.0.0.08': octet 4 has 08: a leading zero is ambiguous "
                  "(octal or decimal?); write it without"),
    ("v6only.test/24", "invalid network 'v6only.test/24': v6only.test has no IPv4 address (an "
                       "IPv6 network of a name needs a prefix of /33-/128)"),
    ("host.test/200", "invalid network 'host.test/200': the prefix length must be a number "
                      "0-128, not '200'"),
    ("gone.test/30", "cannot resolve gone.test: [Errno -2] Name or service not known"),
])
def test_bad_forms_are_one_clear_line(expr: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        space(expr)
    assert str(info.value) == message


def test_cli_scans_an_nmap_pattern_and_refuses_a_bad_one(tmp_path: Path) -> None:
    """End to end: 127.0.0.1,2 with one port, nothing listening: two verdicts stored."""
    db = tmp_path / "s.db"
    ok = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1,2", "-p", "9",
                         "--db", str(db), "-o", "json", "--all", "--timeout", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert sorted(s["host"] for s in json.loads(ok.stdout)["services"]) == [
        "127.0.0.1", "127.0.0.2"]
    bad = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.256", "--db",
                          str(db)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == ("vncaudit: error: invalid target '127.0.0.256': octet 4: 256 is "
                          "over 255\n")


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_web_api_refuses_nmap_syntax_with_a_clear_message(tmp_path: Path) -> None:
    """The service scans one address or name per request, checked by its policy; a range
    or pattern is refused up front (some are valid host names, which it would otherwise
    send to the resolver), and nothing is queued."""
    looked_up: list[str] = []

    def resolver(name: str) -> list[str]:
        looked_up.append(name)
        return ["127.0.0.1"]

    app = create_app(Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.0/8",),
                              rate_burst=50, rate_per_minute=600, resolver=resolver))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40001)) as c:
        for target in ("127.0.0.*", "127.0.0-1.1-254", "127.0.0.1,3", "localhost.test/30",
                       "127.0.0.0/30", "127.0.0.1-5"):
            response = c.post("/api/scans", json={"target": target, "ports": "5900"})
            assert response.status_code == 400, (target, response.text)
            body = response.json()
            assert body["code"] == "bad-target"
            assert "names many addresses" in body["detail"], body
            assert "one address or host name per request" in body["detail"], body
        assert c.get("/api/scans").json() == []
    assert looked_up == []
