"""Subdomain discovery against a real DNS server on loopback (tests/dns_server.py).

Every test passes the loopback resolver explicitly, the test zones' NS records point at
127.0.0.x, and an autouse guard fails any test whose sockets would reach anything but loopback
or whose code would consult the system resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.resolver
import pytest

from vncaudit import subdomains
from vncaudit.exceptions import NetworkError, UsageError
from vncaudit.subdomains import (
    DiscoveryResult,
    FoundHost,
    builtin_wordlist,
    discover,
    discover_sync,
    normalize_domain,
    parse_resolver,
    to_resolver,
    to_target_expressions,
)

from dns_server import DnsServer, make_zone

NS2 = "127.0.0.2"

# --------------------------------------------------------------------------------------------
# Safety: loopback only, never the system resolver


def _check_address(address: Any) -> None:
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        host = address[0]
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to reach {address}: loopback only")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("connect", "connect_ex", "sendto"):
        original = getattr(socket.socket, method)

        def guarded(self: socket.socket, *args: Any, _original: Any = original) -> Any:
            _check_address(args[-1])
            return _original(self, *args)

        monkeypatch.setattr(socket.socket, method, guarded)
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            text = host.decode() if isinstance(host, bytes) else str(host)
            ipaddress.ip_address(text.split("%")[0])  # a name here would use the system DNS
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def no_system_resolver(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("test reached the system resolver")

    monkeypatch.setattr(dns.resolver.Resolver, "__init__", no_system_resolver)


# --------------------------------------------------------------------------------------------
# Zones

OPEN = """
@ NS ns1
@ NS ns2
@ A 10.0.0.1
@ MX 10 vnc
ns1 A 127.0.0.1
ns2 A 127.0.0.2
vnc A 10.0.0.5
vnc AAAA fd00::5
zz-hidden-kvm-7 A 10.0.0.77
v6only AAAA fd00::6
desk CNAME vnc
txtonly TXT "no address here"
_sip._tcp SRV 0 0 5060 vnc
"""

WILD = """
@ NS ns1
ns1 A 127.0.0.1
* A 10.9.9.9
vnc A 10.1.1.1
admin A 10.9.9.9
remote CNAME vnc
dev AAAA fd00::d
"""

CWILD = """
@ NS ns1
ns1 A 127.0.0.1
* CNAME lb
lb A 10.7.7.7
vnc A 10.7.7.8
"""

CHAIN = """
@ NS ns1
ns1 A 127.0.0.1
vnc CNAME a
a CNAME b
b A 10.0.0.5
remote CNAME host.other.test.
loop1 CNAME loop2
loop2 CNAME loop1
ghost CNAME nothere
""" + "".join(f"c{i} CNAME c{i + 1}\n" for i in range(12)) + "c12 A 10.0.0.12\n"

OTHER = """
@ NS ns1.chain.test.
host A 10.2.2.2
host AAAA fd00::2
"""


def _server(*zones: tuple[str, str], **options: Any) -> DnsServer:
    options.setdefault("hosts", ("127.0.0.1", NS2))
    return DnsServer([make_zone(origin, text) for origin, text in zones], **options)


@pytest.fixture
def servers() -> Iterator[list[DnsServer]]:
    started: list[DnsServer] = []
    yield started
    for server in started:
        server.stop()


def _start(servers: list[DnsServer], *zones: tuple[str, str], **options: Any) -> DnsServer:
    server = _server(*zones, **options).start()
    servers.append(server)
    return server


def _opts(server: DnsServer, **extra: Any) -> dict[str, Any]:
    return {"resolver": server.resolver, "axfr_port": server.port, "timeout": 1.0, **extra}


def _hosts(result: DiscoveryResult) -> dict[str, FoundHost]:
    return {h.name: h for h in result.hosts}


# --------------------------------------------------------------------------------------------
# Zone transfer


def test_axfr_allowed_finds_every_host_and_says_so(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN),
                    axfr={"open.test": {"127.0.0.1": "allow", NS2: "refuse"}})
    result = discover_sync("open.test", **_opts(server))

    assert result.axfr == {"ns1.open.test@127.0.0.1": "ok", "ns2.open.test@127.0.0.2": "refused"}
    hosts = _hosts(result)
    assert set(hosts) == {"open.test", "ns1.open.test", "ns2.open.test", "vnc.open.test",
                          "zz-hidden-kvm-7.open.test", "v6only.open.test", "desk.open.test"}
    axfr1 = "axfr:ns1.open.test"
    assert hosts["zz-hidden-kvm-7.open.test"] == FoundHost(
        "zz-hidden-kvm-7.open.test", ("10.0.0.77",), (), (axfr1,))
    assert hosts["vnc.open.test"].addresses == ("10.0.0.5", "fd00::5")
    assert hosts["desk.open.test"] == FoundHost(
        "desk.open.test", ("10.0.0.5", "fd00::5"), ("vnc.open.test",), (axfr1,))
    assert hosts["v6only.open.test"].addresses == ("fd00::6",)  # AAAA-only host
    assert hosts["open.test"].sources == ("apex", axfr1)
    assert hosts["ns1.open.test"].sources == ("ns", axfr1)
    # The complete transfer already answered every wordlist name: none was asked.
    assert not any("wordlist" in h.sources for h in result.hosts)
    assert "rdp.open.test" not in server.stats.names()
    assert any("REFUSED" in e and "ns2.open.test" in e for e in result.errors)
    assert result.queries < 40


def test_axfr_refused_falls_back_to_the_wordlist(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))  # every server refuses transfers
    result = discover_sync("open.test", wordlist=["desk", "v6only", "txtonly"],
                           **_opts(server))

    assert result.axfr == {"ns1.open.test@127.0.0.1": "refused",
                           "ns2.open.test@127.0.0.2": "refused"}
    hosts = _hosts(result)
    assert "zz-hidden-kvm-7.open.test" not in hosts  # only a transfer reveals it
    assert "txtonly.open.test" not in hosts  # exists, but has no address
    assert hosts["vnc.open.test"] == FoundHost(
        "vnc.open.test", ("10.0.0.5", "fd00::5"), (), ("wordlist",))
    assert hosts["desk.open.test"].cnames == ("vnc.open.test",)
    assert hosts["v6only.open.test"] == FoundHost(
        "v6only.open.test", ("fd00::6",), (), ("wordlist",))
    assert hosts["ns2.open.test"].sources == ("ns", "wordlist")
    assert result.wildcard is None
    assert "rdp.open.test" in server.stats.names("A")
    assert sum(1 for q in server.stats.queries if q.rdtype == "AXFR") == 2


def test_axfr_timeout_and_closed_connection_are_recorded(
        servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN),
                    axfr={"open.test": {"127.0.0.1": "hang", NS2: "close"}})
    started = time.monotonic()
    result = discover_sync("open.test", builtin=False, **_opts(server, timeout=0.3))
    assert time.monotonic() - started < 3
    assert result.axfr == {"ns1.open.test@127.0.0.1": "timeout",
                           "ns2.open.test@127.0.0.2": "closed"}


def test_axfr_off_sends_no_transfer(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN), axfr={"open.test": {"127.0.0.1": "allow"}})
    result = discover_sync("open.test", builtin=False, axfr=False, **_opts(server))
    assert result.axfr == {}
    assert not [q for q in server.stats.queries if q.rdtype == "AXFR"]
    assert set(_hosts(result)) == {"open.test", "ns1.open.test", "ns2.open.test"}


# --------------------------------------------------------------------------------------------
# Wildcards


def test_wildcard_zone_gives_no_flood_but_keeps_real_records(
        servers: list[DnsServer]) -> None:
    server = _start(servers, ("wild.test", WILD))
    result = discover_sync("wild.test", **_opts(server))

    assert result.wildcard == ("10.9.9.9",)
    hosts = _hosts(result)
    assert set(hosts) == {"ns1.wild.test", "vnc.wild.test", "remote.wild.test",
                          "dev.wild.test"}
    assert hosts["remote.wild.test"].cnames == ("vnc.wild.test",)
    assert hosts["dev.wild.test"].addresses == ("fd00::d",)  # AAAA-only, not the wildcard
    # admin answers exactly like the wildcard: indistinguishable, so dropped with the rest.
    assert result.wildcard_dropped >= len(builtin_wordlist()) - 5
    assert result.axfr == {"ns1.wild.test@127.0.0.1": "refused"}


def test_wildcard_names_from_a_transfer_are_kept(servers: list[DnsServer]) -> None:
    server = _start(servers, ("wild.test", WILD), axfr={"wild.test": {"127.0.0.1": "allow"}})
    result = discover_sync("wild.test", **_opts(server))
    hosts = _hosts(result)
    assert result.wildcard == ("10.9.9.9",)
    assert hosts["admin.wild.test"].sources == ("axfr:ns1.wild.test",)
    assert "*.wild.test" not in hosts
    assert len(hosts) == 5


def test_cname_wildcard_is_detected_by_its_target(servers: list[DnsServer]) -> None:
    server = _start(servers, ("cwild.test", CWILD))
    result = discover_sync("cwild.test", **_opts(server))
    assert result.wildcard == ("10.7.7.7",)
    assert result.wildcard_cnames == ("lb.cwild.test",)
    assert set(_hosts(result)) == {"ns1.cwild.test", "vnc.cwild.test"}


# --------------------------------------------------------------------------------------------
# CNAME chains


@pytest.mark.parametrize("chase", [True, False], ids=["server-chases", "minimal-answers"])
def test_cname_chains_loops_and_limits(servers: list[DnsServer], chase: bool) -> None:
    server = _start(servers, ("chain.test", CHAIN), ("other.test", OTHER),
                    chase_cnames=chase)
    result = discover_sync("chain.test", builtin=False,
                           wordlist=["vnc", "remote", "loop1", "c0", "c4", "ghost", "absent"],
                           **_opts(server))
    hosts = _hosts(result)
    assert hosts["vnc.chain.test"] == FoundHost(
        "vnc.chain.test", ("10.0.0.5",), ("a.chain.test", "b.chain.test"), ("wordlist",))
    # Out of the zone: the authoritative server stops, discovery asks again.
    assert hosts["remote.chain.test"].addresses == ("10.2.2.2", "fd00::2")
    assert hosts["remote.chain.test"].cnames == ("host.other.test",)
    # A loop ends at the repeated name; a dangling CNAME stays visible without addresses.
    assert hosts["loop1.chain.test"].addresses == ()
    assert hosts["loop1.chain.test"].cnames == ("loop2.chain.test", "loop1.chain.test")
    assert any("CNAME loop" in e and "loop1.chain.test" in e for e in result.errors)
    assert hosts["ghost.chain.test"] == FoundHost(
        "ghost.chain.test", (), ("nothere.chain.test",), ("wordlist",))
    # 12 links from c0 is over the bound; 8 from c4 is within it.
    assert hosts["c0.chain.test"].addresses == ()
    assert len(hosts["c0.chain.test"].cnames) == subdomains.MAX_CNAME_CHAIN + 1
    assert any("longer than 8" in e for e in result.errors)
    assert hosts["c4.chain.test"].addresses == ("10.0.0.12",)
    # remote's addresses belong to another domain: not scanned unless asked for.
    assert "remote.chain.test" not in to_target_expressions(result)
    assert "remote.chain.test" in to_target_expressions(result, include_external=True)
    assert "vnc.chain.test" in to_target_expressions(result)
    assert "absent.chain.test" not in hosts
    assert result.queries == len(server.stats.queries)
    assert result.queries < 80


# --------------------------------------------------------------------------------------------
# Limits


def test_concurrency_is_respected_server_side(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN), delay=0.03)
    labels = [f"h{i}" for i in range(40)]
    result = discover_sync("open.test", builtin=False, wordlist=labels, axfr=False,
                           concurrency=4, **_opts(server))
    assert 3 <= server.stats.max_in_flight <= 4
    assert result.queries == len(server.stats.queries) >= 80


def test_rate_is_respected_server_side(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))
    rate = 100.0
    result = discover_sync("open.test", builtin=False, wordlist=[f"h{i}" for i in range(25)],
                           axfr=False, rate=rate, **_opts(server))
    # The kernel's receive stamps: what went on the wire, whatever the server thread's turns.
    times = sorted(q.arrived for q in server.stats.queries if q.arrived is not None)
    assert len(times) == len(server.stats.queries) == result.queries >= 50
    assert times[-1] - times[0] >= (len(times) - 1) / rate * 0.9
    window = 10  # any 11 consecutive queries span at least 10 intervals
    assert min(b - a for a, b in zip(times, times[window:], strict=False)) >= window / rate * 0.8


def test_rate_holds_after_the_event_loop_was_late() -> None:
    """The event loop blocked for 0.2 s (a loaded machine) while callers wait for their slots:
    when it comes back, the messages still leave one interval apart, not all those whose slot
    passed meanwhile at once."""
    from vncaudit.subdomains.query import DnsSender

    rate = 100.0
    sender = DnsSender([("127.0.0.1", 53)], 8, rate, 1.0, 0)
    out: list[float] = []

    async def one() -> None:
        async with sender.slot():
            out.append(asyncio.get_running_loop().time())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.03, time.sleep, 0.2)  # the loop stalls with slots due meanwhile
        await asyncio.gather(*(one() for _ in range(30)))

    asyncio.run(main())
    gaps = [b - a for a, b in zip(out, out[1:], strict=False)]
    assert len(out) == 30 and min(gaps) >= 0.9 / rate, [round(g, 4) for g in gaps]


def test_progress_is_reported(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))
    seen: list[tuple[int, int]] = []
    asyncio.run(discover("open.test", builtin=False, wordlist=["vnc", "a", "b"], axfr=False,
                         progress=lambda done, total: seen.append((done, total)),
                         **_opts(server)))
    assert sorted(seen) == [(1, 3), (2, 3), (3, 3)]


def test_unanswered_names_are_errors_not_failures(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN), silent={"vnc.open.test"})
    result = discover_sync("open.test", builtin=False, wordlist=["vnc", "v6only"], axfr=False,
                           **_opts(server, timeout=0.2, retries=1))
    assert "vnc.open.test" not in _hosts(result)
    assert "v6only.open.test" in _hosts(result)
    assert any(e.startswith("vnc.open.test A: timeout") for e in result.errors)
    # The words say the real rule and the real time, not the timeout of one try.
    line = next(e for e in result.errors if e.startswith("vnc.open.test A:"))
    assert "no answer to 2 tries of 0.2 s each (" in line, line
    spent = float(line.rsplit("(", 1)[1].split(" s in all")[0])
    assert 0.4 <= spent < 2.0, line
    assert server.stats.names().count("vnc.open.test") == 4  # A and AAAA, each tried twice


# --------------------------------------------------------------------------------------------
# Bad input and dead ends


def test_nxdomain_apex_is_a_usage_error(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))
    with pytest.raises(UsageError) as info:
        discover_sync("nope.open.test", **_opts(server))
    assert "does not exist" in str(info.value) and "NXDOMAIN" in str(info.value)
    assert "\n" not in str(info.value)
    assert server.stats.names() == ["nope.open.test"]  # stopped after the first answer


def test_domain_the_resolver_refuses_is_a_network_error(
        servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))
    with pytest.raises(NetworkError, match="REFUSED"):
        discover_sync("elsewhere.test", **_opts(server))


def test_resolver_that_does_not_answer_is_a_network_error() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))  # bound, never read: queries vanish
    port = probe.getsockname()[1]
    try:
        with pytest.raises(NetworkError, match="no answer"):
            discover_sync("example.test", resolver=f"127.0.0.1:{port}", timeout=0.2,
                          retries=0)
    finally:
        probe.close()


@pytest.mark.parametrize("domain", [
    "", "   ", "https://example.com/", "user@example.com", "10.0.0.1", "::1", "[::1]", "com",
    "com.", "a..b.test", ".example.com", "-a.example.com", "a-.example.com",
    "exa mple.com", "*.example.com", "x" * 64 + ".test", ".".join(["abcdefghi"] * 26) + ".test",
    "example.123", "bad!.example.com", "a\nb.example.com",
])
def test_bad_domains_are_one_line_usage_errors(domain: str) -> None:
    with pytest.raises(UsageError) as info:
        # A closed port: validation must fail before any packet (the guard sees every one).
        discover_sync(domain, resolver="127.0.0.1:9", timeout=0.1)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message


def test_domains_are_normalised() -> None:
    assert normalize_domain(" Example.COM. ") == "example.com"
    assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
    assert normalize_domain("_dmarc.example.com") == "_dmarc.example.com"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353)), ("[::1]", ("::1", 53)),
])
def test_resolver_parsing(text: str, expected: tuple[str, int]) -> None:
    assert parse_resolver(text) == expected


@pytest.mark.parametrize("text", ["dns.example.com", "1.2.3.4:0", "1.2.3.4:70000",
                                  "1.2.3.4:", "[::1", "[::1]x", "[::1]:", "1.2.3.4:ab", ""])
def test_bad_resolvers_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_resolver(text)


@pytest.mark.parametrize("options", [
    {"wordlist": ["ok", "not ok"]}, {"wordlist": ["*"]}, {"wordlist": "vnc"},
    {"concurrency": 0}, {"rate": 0}, {"timeout": 0}, {"axfr_port": 0},
])
def test_bad_options_are_usage_errors(options: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        discover_sync("example.test", resolver="127.0.0.1:9", **options)


# --------------------------------------------------------------------------------------------
# Wordlist and hand-over to the scan


def test_builtin_wordlist() -> None:
    labels = builtin_wordlist()
    assert 100 <= len(labels) <= 300
    assert len(set(labels)) == len(labels)
    assert {"vnc", "remote", "rdp", "desktop", "admin", "dev"} <= set(labels)
    for label in labels:
        assert normalize_domain(f"{label}.example.com") == f"{label}.example.com"


def test_read_wordlist(tmp_path: Any) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# mine\nvnc\n\n  kvm-2  \nlab.internal\n", encoding="utf-8")
    assert subdomains.read_wordlist(path) == ["vnc", "kvm-2", "lab.internal"]
    with pytest.raises(UsageError, match="cannot read wordlist"):
        subdomains.read_wordlist(tmp_path / "missing.txt")


def test_full_names_and_duplicates_in_wordlists(servers: list[DnsServer]) -> None:
    server = _start(servers, ("open.test", OPEN))
    result = discover_sync("open.test", builtin=False, axfr=False,
                           wordlist=["vnc.open.test", "VNC", "vnc.", "open.test"],
                           **_opts(server))
    assert server.stats.names("A").count("vnc.open.test") == 1
    assert _hosts(result)["vnc.open.test"].sources == ("wordlist",)


def test_results_feed_targets_and_round_trip(servers: list[DnsServer]) -> None:
    from vncaudit.targets import build_target_space

    server = _start(servers, ("open.test", OPEN))
    result = discover_sync("open.test", builtin=False, wordlist=["vnc", "v6only"],
                           **_opts(server))
    expressions = to_target_expressions(result)
    assert expressions == ["open.test", "ns1.open.test", "ns2.open.test", "v6only.open.test",
                           "vnc.open.test"]
    resolve = to_resolver(result)
    assert resolve("VNC.open.test.") == ["10.0.0.5", "fd00::5"]
    with pytest.raises(OSError):
        resolve("unknown.example")
    assert to_resolver(result, fallback=lambda name: ["10.3.3.3"])("x.test") == ["10.3.3.3"]

    space = build_target_space(expressions, [5900], resolve=resolve)
    targets = {(t.host, t.hostname) for t in space.iter_targets()}
    assert ("fd00::6", "v6only.open.test") in targets
    assert ("10.0.0.5", "vnc.open.test") in targets

    data = json.loads(json.dumps(result.to_dict()))
    assert data["hosts"][0] == {"name": "open.test", "addresses": ["10.0.0.1"], "cnames": [],
                                "sources": ["apex"]}
    assert data["axfr"]["ns1.open.test@127.0.0.1"] == "refused"
    assert DiscoveryResult.from_dict(data) == result


def test_subdomains_table_prints_zone_names_as_text() -> None:
    """A zone transfer may carry any label: "[/]x" (valid in DNS) is shown, not read as
    markup."""
    import subprocess
    import sys

    zone = make_zone("corp.test", """
@ NS ns1
ns1 A 127.0.0.1
[/]x A 127.0.0.9
y CNAME [bold]z
[bold]z A 127.0.0.8
""")
    with DnsServer([zone], hosts=("127.0.0.1",),
                   axfr={"corp.test": {"127.0.0.1": "allow"}}) as dns:
        run = subprocess.run([sys.executable, "-m", "vncaudit", "subdomains", "corp.test",
                              "--resolver", dns.resolver, "--axfr-port", str(dns.port),
                              "--no-builtin-wordlist"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    assert "[/]x.corp.test" in run.stdout
    assert "y.corp.test" in run.stdout and "[bold]z.corp.test" in run.stdout


# Runs inside a namespace of its own, where 127.0.0.1:53 is free: `scan --domain` sends its
# zone transfer to the zone's name servers on port 53, and those are the test's server here.
_AXFR_CHILD = r"""
import asyncio, functools, json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from dns_server import DnsServer, _Udp, make_zone

class Port53(DnsServer):
    async def _bind(self):
        loop = asyncio.get_running_loop()
        self._closers = []
        for host in self.hosts:
            udp, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, self, host), local_addr=(host, 53))
            tcp = await asyncio.start_server(functools.partial(self._tcp, local=host), host, 53)
            self._closers += [udp, tcp]
        self.port = 53

zone = make_zone("corp.test", sys.argv[2])
with Port53([zone], hosts=("127.0.0.1",), axfr={"corp.test": {"127.0.0.1": "allow"}}):
    run = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "--domain", "corp.test",
                          "--resolver", "127.0.0.1:53", "-p", "1", "--db", sys.argv[3],
                          "--timeout", "1", "--all", "-o", "json"],
                         capture_output=True, text=True, timeout=120)
print(json.dumps({"rc": run.returncode, "out": run.stdout, "err": run.stderr}))
"""


AXFR_ZONE = """
@ NS ns1
ns1 A 127.0.0.1
vnc A 127.0.0.1
[/]x A 127.0.0.1
a/b A 127.0.0.1
c:d A 127.0.0.1
"""


@pytest.mark.netns
def test_scan_domain_skips_names_no_target_parser_takes(tmp_path: Path) -> None:
    """A zone transfer may carry any label; "a/b.corp.test" is skipped with a warning, not an
    abort of the whole `scan --domain` (exit 2, nothing scanned) by which a zone could keep its
    hosts from being audited."""
    import json
    import secrets
    import subprocess
    import sys

    from netns import require_netns

    require_netns()
    ns = f"vncaudit-sec-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        child = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _AXFR_CHILD,
             str(Path(__file__).parent), AXFR_ZONE, str(tmp_path / "scan.db")],
            capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    run = json.loads(child.stdout)
    assert run["rc"] == 0, run["err"]
    doc = json.loads(run["out"])
    assert doc["scan"]["targets"] == ["ns1.corp.test", "vnc.corp.test"]  # the plain names
    assert [s["host"] for s in doc["services"]] == ["127.0.0.1"]  # … were probed
    assert "not a plain host name" in run["err"] and "a/b.corp.test" in run["err"]
