"""The web service's target policy: normalisation, precedence, DNS rebinding, caps.

Unit tests of `vncaudit.web.policy` (pure: no packet is sent, names go through injected
resolvers), plus end-to-end checks through the app that listen on the forbidden address and
see zero connections while every bypass form is submitted.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vncaudit.web.policy import (
    InvalidTarget,
    Policy,
    PolicyError,
    TargetRefused,
    parse_address,
    parse_inet_aton,
    special_reason,
)

from servers import free_port

# The Host the service answers by default (allowed_hosts: the localhost names).
LOCAL = "http://localhost"

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

PUBLIC = "1.1.1.1"  # only ever an argument to decide(): no test connects to it

LOOPBACK_FORMS = [
    "127.0.0.1",
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0X7F000001",
    "017700000001",  # octal
    "0177.0.0.1",  # octal first part
    "0x7f.0.0.0x1",  # mixed radix
    "127.1",  # short form
    "127.0.1",
    "127.0.0.1.",  # trailing dot
    "::ffff:127.0.0.1",  # IPv4-mapped IPv6
    "::ffff:7f00:1",
    "[::ffff:127.0.0.1]",
    " 127.0.0.1 ",
]


@pytest.mark.parametrize("text", LOOPBACK_FORMS)
def test_exotic_forms_normalise_to_loopback(text: str) -> None:
    assert parse_address(text) == ipaddress.IPv4Address("127.0.0.1")


def test_look_alike_digits_are_checked_as_the_address_they_map_to() -> None:
    resolver = CountingResolver({})
    form = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"  # fullwidth digits
    with pytest.raises(TargetRefused, match="loopback"):
        Policy.build(resolve=resolver).decide(form, "5900", "127.0.0.1")
    assert Policy.build(["127.0.0.1/32"], resolve=resolver).decide(
        form, "5900", None).addresses == ("127.0.0.1",)
    with pytest.raises(PolicyError):  # an ideographic full stop: refused one way or another
        Policy.build(resolve=resolver).decide("\uff11\uff12\uff17\u3002\uff10.0.1", "5900",
                                              "127.0.0.1")
    assert resolver.calls == []  # never sent to DNS as a "name"


@pytest.mark.parametrize("text", ["999999999999", "1.2.3.256", "0x1ffffffff", "08.0.0.1",
                                  "1.2.3.4.5", "fe80::1%eth0", "::ffff:1.2.3", "1..2"])
def test_numeric_garbage_is_invalid_not_a_hostname(text: str) -> None:
    with pytest.raises(InvalidTarget):
        parse_address(text)


def test_inet_aton_matches_the_c_library() -> None:
    for text in ["1", "1.2", "1.2.3", "0x10.0.0.1", "010.0.0.1", "0", "255.255.65535"]:
        expected = socket.inet_ntoa(socket.inet_aton(text))
        assert str(parse_inet_aton(text)) == expected, text
    for text in ["256.1.1.1", "1.2.3.4.5", "08", "1.2.3.0x100", "0x"]:
        with pytest.raises(OSError):
            socket.inet_aton(text)
        assert parse_inet_aton(text) is None, text


@pytest.mark.parametrize("ip, reason", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.1.1", "private"),
    ("172.16.0.1", "private"), ("169.254.169.254", "link-local"), ("100.64.0.1", "CGNAT"),
    ("0.0.0.0", "this-network"), ("224.0.0.1", "multicast"), ("255.255.255.255", "reserved"),
    ("198.18.0.1", "benchmarking"), ("192.0.2.1", "documentation"), ("::1", "loopback"),
    ("::", "unspecified"), ("fe80::1", "link-local"), ("fd00::1", "unique local"),
    ("2002:7f00:1::", "6to4"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo"),
    ("64:ff9b::7f00:1", "NAT64"), ("::127.0.0.1", "IPv4-compatible"), ("ff02::1", "multicast"),
])
def test_special_ranges_are_named(ip: str, reason: str) -> None:
    why = special_reason(ipaddress.ip_address(ip))
    assert why is not None and reason.lower() in why.lower()


def test_public_unicast_is_not_special() -> None:
    assert special_reason(ipaddress.ip_address(PUBLIC)) is None
    assert special_reason(ipaddress.ip_address("2606:4700::1111")) is None


class CountingResolver:
    """Answers from a table, one answer list per call (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, name: str) -> list[str]:
        self.calls.append(name)
        seq = self.answers.get(name)
        if not seq:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        n = sum(1 for c in self.calls if c == name) - 1
        return seq[min(n, len(seq) - 1)]


# -- default policy: the requester's own address only -------------------------------------


def test_own_public_address_is_allowed_in_every_spelling() -> None:
    policy = Policy.build()
    for form in [PUBLIC, "16843009", "0x01010101", "::ffff:1.1.1.1", "1.1.1.1."]:
        decision = policy.decide(form, "5900", PUBLIC)
        assert decision.addresses == (PUBLIC,)
        assert decision.ports == (5900,)
    # The requester's own address seen through a dual-stack socket is the same address.
    assert policy.decide(PUBLIC, "5900", "::ffff:1.1.1.1").addresses == (PUBLIC,)


def test_someone_elses_address_is_refused() -> None:
    policy = Policy.build()
    with pytest.raises(TargetRefused, match="not your own address"):
        policy.decide("1.1.1.2", "5900", PUBLIC)
    with pytest.raises(TargetRefused):
        policy.decide(PUBLIC, "5900", None)  # no usable client address: nothing is own


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_loopback_refused_even_as_own_address(form: str) -> None:
    with pytest.raises(TargetRefused, match="loopback"):
        Policy.build().decide(form, "5900", "127.0.0.1")


@pytest.mark.parametrize("form", ["10.0.0.5", "192.168.0.10", "fd12::5", "fe80::1",
                                  "169.254.169.254", "0.0.0.0", "::", "2002:a00:5::"])
def test_special_refused_even_as_own_address(form: str) -> None:
    with pytest.raises(TargetRefused):
        Policy.build().decide(form, "5900", form)


def test_hostname_resolving_to_forbidden_is_refused_and_resolved_once() -> None:
    resolver = CountingResolver({"evil.example": [["127.0.0.1"]],
                                 "mixed.example": [[PUBLIC, "10.0.0.1"]]})
    policy = Policy.build(resolve=resolver)
    with pytest.raises(TargetRefused, match="evil.example resolves to 127.0.0.1"):
        policy.decide("evil.example", "5900", "127.0.0.1")
    with pytest.raises(TargetRefused, match="10.0.0.1"):
        policy.decide("mixed.example", "5900", PUBLIC)  # one bad address refuses the name
    assert resolver.calls == ["evil.example", "mixed.example"]


def test_hostname_resolving_to_own_address_gives_the_literal() -> None:
    resolver = CountingResolver({"me.example": [["::ffff:1.1.1.1", PUBLIC]]})
    decision = Policy.build(resolve=resolver).decide("ME.Example.", "5900-5901", PUBLIC)
    assert decision.hostname == "me.example"
    assert decision.addresses == (PUBLIC,)  # mapped duplicate folded; literal, not the name
    assert decision.ports == (5900, 5901)
    assert resolver.calls == ["me.example"]


def test_unresolvable_and_localhost() -> None:
    resolver = CountingResolver({})
    policy = Policy.build(resolve=resolver)
    with pytest.raises(InvalidTarget, match="cannot resolve"):
        policy.decide("nothing.example", "5900", PUBLIC)
    with pytest.raises(TargetRefused, match="loopback"):
        policy.decide("localhost", "5900", "127.0.0.1")
    with pytest.raises(TargetRefused, match="loopback"):
        policy.decide("a.localhost.", "5900", "127.0.0.1")
    assert resolver.calls == ["nothing.example"]  # localhost never reached the resolver


@pytest.mark.parametrize("text", ["http://1.1.1.1/", "1.1.1.1:5900", "a b", "user@host",
                                  "", " ", "-bad-.example", "x" * 256, "a..b"])
def test_bad_input_is_invalid(text: str) -> None:
    with pytest.raises(InvalidTarget):
        Policy.build(resolve=CountingResolver({})).decide(text, "5900", PUBLIC)


# -- operator allow-list -------------------------------------------------------------------


def test_allow_list_cidr_beats_the_special_rule() -> None:
    policy = Policy.build(["127.0.0.1/32", "::ffff:127.0.0.3"])
    for form in LOOPBACK_FORMS:
        assert policy.decide(form, "5900", "203.0.113.9").addresses == ("127.0.0.1",)
    assert policy.decide("127.0.0.3", "5900", None).addresses == ("127.0.0.3",)
    with pytest.raises(TargetRefused, match="loopback"):
        policy.decide("127.0.0.2", "5900", "127.0.0.2")


def test_allow_list_domain_allows_public_addresses_only() -> None:
    resolver = CountingResolver({"vnc.corp.example": [["1.0.0.1"]],
                                 "inner.corp.example": [["10.9.9.9"]],
                                 "other.example": [["1.0.0.2"]]})
    policy = Policy.build(["corp.example"], allow_own_address=False, resolve=resolver)
    assert policy.decide("vnc.corp.example", "5900", None).addresses == ("1.0.0.1",)
    with pytest.raises(TargetRefused, match="private"):
        policy.decide("inner.corp.example", "5900", None)
    with pytest.raises(TargetRefused, match="allow-list"):
        policy.decide("other.example", "5900", None)
    with pytest.raises(TargetRefused, match="allow-list"):
        policy.decide("1.0.0.1", "5900", "1.0.0.1")  # own-address mode is off


def test_bad_allow_list_entry_is_an_operator_error() -> None:
    with pytest.raises(ValueError):
        Policy.build(["not a network!"])
    for broad in ["0.0.0.0/0", "::/0", "10.0.0.0/7", "2000::/3"]:
        with pytest.raises(ValueError, match="broader"):
            Policy.build([broad])
    assert Policy.build(["10.0.0.0/8", "2001:db8::/16"]).networks


# -- caps ----------------------------------------------------------------------------------


def test_caps_on_ports_and_addresses() -> None:
    resolver = CountingResolver({"many.example": [[f"1.0.0.{i}" for i in range(1, 10)]]})
    policy = Policy.build(["1.0.0.0/24"], max_ports=11, max_addresses=8, resolve=resolver)
    assert len(policy.decide("1.0.0.1", "5900-5910", None).ports) == 11
    with pytest.raises(TargetRefused, match="at most 11"):
        policy.decide("1.0.0.1", "5900-5911", None)
    with pytest.raises(TargetRefused, match="at most 8"):
        policy.decide("many.example", "5900", None)
    with pytest.raises(InvalidTarget):
        policy.decide("1.0.0.1", "70000", None)


def test_default_caps_allow_the_all_ports_preset() -> None:
    assert len(Policy.build().decide(PUBLIC, "1-65535", PUBLIC).ports) == 65535


def test_allowed_ports() -> None:
    policy = Policy.build(allowed_ports="5900-5910")
    assert policy.decide(PUBLIC, "5901", PUBLIC).ports == (5901,)
    with pytest.raises(TargetRefused, match="port 22"):
        policy.decide(PUBLIC, "22,5900", PUBLIC)


# -- end to end: nothing reaches a forbidden address ------------------------------------------


class Listener:
    """A TCP listener that only counts the connections the kernel accepted for it."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def count(self) -> int:
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def loopback_listener() -> Iterator[Listener]:
    listener = Listener("127.0.0.1")
    try:
        yield listener
    finally:
        listener.close()


def _client(tmp_path: Path, **settings: object) -> object:
    from starlette.testclient import TestClient

    from vncaudit.web import Settings, create_app

    app = create_app(Settings(db_path=str(tmp_path / "web.db"), probe_timeout=1.0,
                              rate_burst=100, **settings))  # type: ignore[arg-type]
    return TestClient(app, base_url=LOCAL, client=("127.0.0.1", 40000))


def _wait_final(client: object, scan_id: str, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = client.get(f"/api/scans/{scan_id}").json()  # type: ignore[attr-defined]
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_every_bypass_is_refused_before_any_connection(tmp_path: Path,
                                                       loopback_listener: Listener) -> None:
    resolver = CountingResolver({"evil.example": [["127.0.0.1"]],
                                 "mapped.example": [["::ffff:127.0.0.1"]],
                                 "rebind.example": [["127.0.0.1"], ["127.0.0.1"]]})
    port = str(loopback_listener.port)
    with _client(tmp_path, resolver=resolver) as client:  # type: ignore[attr-defined]
        for form in [*LOOPBACK_FORMS, "evil.example", "mapped.example", "rebind.example",
                     "localhost", "2002:7f00:1::", "64:ff9b::7f00:1", "::127.0.0.1",
                     "\uff11\uff12\uff17.\uff10.\uff10.\uff11"]:
            response = client.post("/api/scans", json={"target": form, "ports": port})
            assert response.status_code == 403, (form, response.text)
            assert response.json()["code"] == "address-refused"
        time.sleep(0.3)  # a connection, had one been started, would have been accepted by now
        assert client.get("/api/scans").json() == []
    assert loopback_listener.count() == 0
    assert resolver.calls.count("rebind.example") == 1


def test_the_form_refuses_bypasses_too(tmp_path: Path,
                                                    loopback_listener: Listener) -> None:
    port = str(loopback_listener.port)
    with _client(tmp_path) as client:  # type: ignore[attr-defined]
        page = client.get("/")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        for form in ["2130706433", "0x7f000001", "017700000001", "::ffff:127.0.0.1"]:
            response = client.post("/scans", data={"target": form, "preset": "custom",
                                                   "ports": port, "csrf_token": token},
                                   follow_redirects=False)
            assert response.status_code == 403, form
            assert "loopback" in response.text
    assert loopback_listener.count() == 0


def test_second_resolution_never_reaches_the_engine(tmp_path: Path) -> None:
    good = Listener("127.0.0.1")
    evil = Listener("127.0.0.2", good.port)  # same port on the address a rebind would give
    try:
        resolver = CountingResolver({"rebind.example": [["127.0.0.1"], ["127.0.0.2"]]})
        with _client(tmp_path, resolver=resolver, allow=("127.0.0.1/32",)) as client:  # type: ignore[attr-defined]
            response = client.post("/api/scans", json={"target": "rebind.example",
                                                       "ports": str(good.port)})
            assert response.status_code == 201, response.text
            body = _wait_final(client, response.json()["id"])
            assert body["status"] == "finished"
            assert body["addresses"] == ["127.0.0.1"]
            services = body["services"]
            assert isinstance(services, list)
            assert [(s["host"], s["port"]) for s in services] == [("127.0.0.1", good.port)]
            # Had anything resolved the name again, the second answer would be 127.0.0.2.
            assert resolver.calls == ["rebind.example"]
        assert good.count() == 1
        assert evil.count() == 0
    finally:
        good.close()
        evil.close()


def test_discovery_only_for_allow_listed_domains_and_checked_per_address() -> None:
    policy = Policy.build(["corp.example", "127.0.0.1/32"], max_addresses=2)
    with pytest.raises(TargetRefused, match="discovered"):
        Policy.build().decide_discovery("example.org", "5900", PUBLIC)
    with pytest.raises(InvalidTarget):
        policy.decide_discovery("127.0.0.1", "5900", PUBLIC)
    pending = policy.decide_discovery("Corp.Example.", "5900", PUBLIC)
    assert pending.discover and pending.addresses == () and pending.target == "corp.example"
    hosts = [("a.corp.example", ["1.0.0.1", "::ffff:1.0.0.1"]),
             ("b.corp.example", ["10.0.0.1", "127.0.0.1"]),
             ("c.corp.example", ["1.0.0.3"]),
             ("evil.example", ["1.0.0.4"])]
    decision, refused = policy.decide_discovered(pending, hosts, PUBLIC)
    assert decision.addresses == ("1.0.0.1", "127.0.0.1")
    assert decision.names == ("a.corp.example", "b.corp.example")
    reasons = {r["address"]: r["reason"] for r in refused}
    assert "private" in reasons["10.0.0.1"]
    assert "cap" in reasons["1.0.0.3"]
    assert "allow-list" in reasons["1.0.0.4"] or "own address" in reasons["1.0.0.4"]
    with pytest.raises(TargetRefused, match="nothing under corp.example"):
        policy.decide_discovered(pending, [("x.corp.example", ["192.168.1.1"])], PUBLIC)


def test_discovered_cname_out_of_the_domain_gets_no_domain_privilege() -> None:
    """Allow-listing corp.example does not let discovery scan every address its names lead
    to: not through a CNAME to someone else's host (a CDN, or a dangling CNAME an attacker
    claimed and points at any victim). Pure policy check: nothing is sent to these
    addresses."""
    from vncaudit.web.policy import Policy, TargetRefused

    policy = Policy.build(["corp.example", "partner.example"])
    pending = policy.decide_discovery("corp.example", "5900", "9.9.9.9")
    hosts = [("www.corp.example", ["1.0.0.1"], ()),
             ("shop.corp.example", ["1.0.0.2"], ("shops.saas.example",)),
             ("old.corp.example", ["1.0.0.3"], ("x.corp.example", "gone.cloud.example")),
             ("in.corp.example", ["1.0.0.4"], ("edge.partner.example",)),
             ("me.corp.example", ["9.9.9.9"], ("home.dyn.example",))]
    decision, refused = policy.decide_discovered(pending, hosts, "9.9.9.9")
    # Plain names and chains that stay in allow-listed domains keep the domain's privilege;
    # the requester's own address stays allowed whatever name leads to it.
    assert decision.addresses == ("1.0.0.1", "1.0.0.4", "9.9.9.9")
    reasons = {r["address"]: r["reason"] for r in refused}
    assert set(reasons) == {"1.0.0.2", "1.0.0.3"}
    assert "CNAME to shops.saas.example" in reasons["1.0.0.2"]
    assert "CNAME to gone.cloud.example" in reasons["1.0.0.3"]
    with pytest.raises(TargetRefused):
        policy.decide_discovered(pending, hosts[1:2], "9.9.9.9")
    # The two-element form (no chain known) is still accepted.
    plain, _ = policy.decide_discovered(pending, [("a.corp.example", ["1.0.0.9"])], None)
    assert plain.addresses == ("1.0.0.9",)


CNAME_ZONE = """
@ NS ns1
ns1 A 127.0.0.1
vnc A 127.0.0.1
shop CNAME www.other.test.
"""


def test_web_discovery_passes_the_cname_chain_to_the_policy(tmp_path: Path) -> None:
    """End to end through the scan job: the refused list names the CNAME that leaves the
    domain (its address is private, so no version of the code would probe it)."""
    from starlette.testclient import TestClient

    from vncaudit.web import Settings, create_app

    from dns_server import DnsServer, make_zone

    port = free_port()
    zones = [make_zone("corp.test", CNAME_ZONE),
             make_zone("other.test", "@ NS ns1.corp.test.\nwww A 10.0.0.7\n")]
    with DnsServer(zones, hosts=("127.0.0.1",),
                   axfr={"corp.test": {"127.0.0.1": "allow"}}) as dns:
        settings = Settings(db_path=str(tmp_path / "web.db"), allow=("corp.test",
                            "127.0.0.1/32"), dns_resolver=dns.resolver,
                            dns_axfr_port=dns.port, dns_timeout=1.0, probe_timeout=2.0,
                            rate_burst=50, rate_per_minute=600)
        with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40006)) as c:
            r = c.post("/api/scans", json={"target": "corp.test", "ports": str(port),
                                           "subdomains": True})
            assert r.status_code == 201, r.text
            body = _wait_final(c, r.json()["id"])
    refused = {x["name"]: x for x in body["refused"]}
    assert refused["shop.corp.test"]["address"] == "10.0.0.7"
    assert "CNAME to www.other.test" in refused["shop.corp.test"]["reason"]
    assert "127.0.0.1" in body["addresses"]


def test_a_typed_name_whose_cname_leaves_the_domain_gets_no_domain_privilege() -> None:
    """decide("shop.corp.example") refuses what the name's CNAME leads out of the domain to
    (with a dangling CNAME claimed by someone else, any public address). Pure policy check
    (injected resolver, nothing is sent)."""
    from vncaudit.targets.expressions import Resolution, canonical_resolver
    from vncaudit.web.policy import Policy, TargetRefused

    def answer(addresses: list[str], canonical: str | None) -> Resolution:
        r = Resolution(addresses)
        r.canonical = canonical
        return r

    table = {"shop.corp.example": answer(["1.0.0.2"], "shops.saas.example"),
             "www.corp.example": answer(["1.0.0.1"], "www.corp.example"),
             "in.corp.example": answer(["1.0.0.4"], "Edge.Partner.Example."),
             "me.corp.example": answer(["9.9.9.9"], "home.dyn.example"),
             "old.corp.example": ["1.0.0.5"]}  # a resolver that reports no canonical name
    policy = Policy.build(["corp.example", "partner.example"], resolve=lambda n: table[n])
    with pytest.raises(TargetRefused, match="CNAME to shops.saas.example"):
        policy.decide("shop.corp.example", "5900", "8.8.4.4")
    assert policy.decide("www.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.1",)
    assert policy.decide("in.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.4",)
    assert policy.decide("me.corp.example", "5900", "9.9.9.9").addresses == ("9.9.9.9",)
    assert policy.decide("old.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.5",)
    # The default resolver reports the canonical name (from /etc/hosts here: no network).
    local = canonical_resolver("localhost")
    assert "127.0.0.1" in local and local.canonical == "localhost"
    assert Policy().resolve is canonical_resolver


@pytest.mark.parametrize("entry", ["com", "*.org", "COM.", "localhost"])
def test_a_top_level_domain_is_no_allow_list_entry(entry: str) -> None:
    """CIDRs broader than /8 are refused as an open scanner, and so is "com", which would
    allow every public host under .com."""
    from vncaudit.web import Settings

    with pytest.raises(ValueError, match="top-level domain"):
        Policy.build([entry])
    with pytest.raises(ValueError, match="top-level domain"):
        Settings(allow=(entry,))
    assert Policy.build(["corp.example"]).domains == ("corp.example",)  # the control
