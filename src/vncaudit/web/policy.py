"""Target policy of the web service: may this requester have that target scanned?

Owns: turning what a web user typed (an IP address in any spelling, or a host name) and a port
list into a `Decision` — the literal addresses and ports the scan may touch — or a typed
refusal, before any packet is sent. The rules are docs/design.md §11 (and the README, "What
the service will scan"): exotic spellings normalised, a name resolved once and only its checked
literals scanned, special addresses refused unless an operator CIDR allows them, otherwise the
requester's own address or an allow-listed network or domain, and caps.

Must not: open sockets (resolution goes through the `resolve` callable it is given, which the
web layer runs in a thread), import FastAPI, or depend on anything of the package but
`exceptions` and the parsers of `targets`. Pure and synchronous, so every bypass is
unit-testable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from vncaudit.exceptions import UsageError

# canonical_resolver blocks (getaddrinfo): the web layer runs it in a thread.
from vncaudit.targets import format_ports, parse_ports
from vncaudit.targets.expressions import canonical_resolver, target_form_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]

DEFAULT_MAX_PORTS: Final = 65535  # the "all 65535" preset must pass by default
DEFAULT_MAX_ADDRESSES: Final = 8
MAX_TARGET_LENGTH: Final = 255
MIN_PREFIX: Final = {4: 8, 6: 16}  # broadest allow-list CIDR per IP version


class PolicyError(UsageError):
    """The request cannot be scanned. `code` is a stable short id; `status` an HTTP status."""

    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


class InvalidTarget(PolicyError):
    """The input is not an address, a host name or a port list we understand."""

    status = 400


class TargetRefused(PolicyError):
    """The input is understood, but this requester may not scan it."""

    status = 403


# --------------------------------------------------------------------------------------------
# Special networks. ipaddress's flags are the baseline; this table names the reason and adds
# ranges whose flags differ between Python versions.

_SPECIAL: Final[tuple[tuple[str, str], ...]] = (
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "NAT64 (embeds IPv4)"),
    ("64:ff9b:1::/48", "local NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo (embeds IPv4)"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (embeds IPv4)"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing SIDs"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_SPECIAL_NETS: Final = tuple((ipaddress.ip_network(n), why) for n, why in _SPECIAL)


def special_reason(ip: IPAddress) -> str | None:
    """Why *ip* is not a plain public unicast address, or None when it is one."""
    for net, why in _SPECIAL_NETS:
        if ip.version == net.version and ip in net:
            return why
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


# --------------------------------------------------------------------------------------------
# Normalisation

_V4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_NUMERICISH = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _v4_part(text: str) -> int | None:
    if len(text) > 12 or not _V4_PART.fullmatch(text):
        return None
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)
    return int(text)


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 in every spelling the BSD `inet_aton` accepts (what many resolvers and HTTP
    clients accept too): 1-4 parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the remaining bytes. None when *text* is not such a spelling."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_v4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [int(v) for v in values if v is not None]
    head, last = nums[:-1], nums[-1]
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for v in head:
        value = value << 8 | v
    value = value << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(value)


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped IPv6 address stands for; otherwise *ip* itself."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """IPv4 carried inside a translation/tunnel IPv6 form (checked as well as the v6 form)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.ip_network("64:ff9b::/96") or ip in ipaddress.ip_network("::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_address(text: str) -> IPAddress | None:
    """*text* as an IP address after normalising exotic forms; None when it is no address.

    Raises `InvalidTarget` for text that looks numeric but is no valid address (so
    "999999999999" is an error, never taken for a host name) and for IPv6 zone ids.
    """
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    if "%" in t:
        raise InvalidTarget("bad-target", f"{_show(text)}: IPv6 zone ids are not accepted")
    if ":" in t:
        try:
            return unwrap(ipaddress.IPv6Address(t))
        except ValueError:
            raise InvalidTarget("bad-target", f"{_show(text)} is not a valid IPv6 address "
                                "(give an address or a host name, without port or scheme)"
                                ) from None
    t = t[:-1] if t.endswith(".") else t
    if not t:
        return None
    v4 = parse_inet_aton(t)
    if v4 is not None:
        return v4
    last = t.split(".")[-1]
    if _NUMERICISH.fullmatch(last):
        # A name's last label is never all digits (RFC 1123 §2.1 / 3696 §2): numeric text
        # that inet_aton refuses is a mistyped address, not a host name.
        raise InvalidTarget("bad-target", f"{_show(text)} is not a valid IPv4 address")
    return None


def normalise_hostname(text: str) -> str:
    """Lower-case IDNA host name without the trailing dot; `InvalidTarget` when not one."""
    t = text.strip().lower()
    t = t[:-1] if t.endswith(".") else t
    if not t or len(t) > 253:
        raise InvalidTarget("bad-target", f"{_show(text)} is not a host name or address")
    if any(c in t for c in "/@:?#[] \t\\"):
        raise InvalidTarget("bad-target", f"{_show(text)}: give a bare address or host name "
                            "(no scheme, port, path or user)")
    labels: list[str] = []
    for label in t.split("."):
        try:
            encoded = label.encode("idna").decode("ascii") if label else ""
        except UnicodeError:
            encoded = ""
        if not _LABEL.fullmatch(encoded):
            raise InvalidTarget("bad-target", f"{_show(text)} is not a valid host name")
        labels.append(encoded)
    name = ".".join(labels)
    if len(name) > 253:
        raise InvalidTarget("bad-target", f"{_show(text)} is not a valid host name")
    return name


# Forms the command line reads as many addresses: a network (10.0.0.0/24, host.example/30),
# a range (10.0.0.1-50, fd00::1-ff) or an nmap octet pattern (10.0.0.*, 10.0.0.1,3). Some of
# them are valid host names ("10.0.0-1.1-254"): without this they would go to the resolver.
_MANY = re.compile(r"[^/]+/[0-9]+|[0-9.,*-]*[,*-][0-9.,*-]*|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*-[^/]*")


def _refuse_many(target: str) -> None:
    t = target.strip().strip("[]")
    if "://" not in t and _MANY.fullmatch(t):
        raise InvalidTarget("bad-target", f"{_show(target)} names many addresses (a network, "
                            "range or nmap pattern); this service scans one address or host "
                            "name per request (ranges: `vncaudit scan` on the command line)")


def _show(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


# --------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class Decision:
    """What the scan may touch: exactly these literal addresses and ports.

    With `discover` set (subdomain discovery of an allow-listed domain) `addresses` is empty
    until the scan job has found the domain's hosts and `Policy.decide_discovered` has checked
    each of their addresses; only then is anything connected to.
    """

    target: str  # the canonical form of what was asked ("127.0.0.1", "host.example.org")
    hostname: str | None  # the name when a name was asked
    addresses: tuple[str, ...]  # checked literals; the engine connects to these only
    ports: tuple[int, ...]
    discover: bool = False
    names: tuple[str | None, ...] = ()  # per address: the discovered name it belongs to

    def name_of(self, index: int) -> str | None:
        return self.names[index] if index < len(self.names) else self.hostname

    @property
    def ports_spec(self) -> str:
        return format_ports(self.ports)


@dataclass(frozen=True)
class Policy:
    """Who may scan what. Build with `Policy.build` from operator config strings."""

    allow_own_address: bool = True
    networks: tuple[IPNetwork, ...] = ()
    domains: tuple[str, ...] = ()
    max_ports: int = DEFAULT_MAX_PORTS
    max_addresses: int = DEFAULT_MAX_ADDRESSES
    allowed_ports: frozenset[int] | None = None  # None: any port (within max_ports)
    resolve: Resolver = field(default=canonical_resolver, compare=False)

    @classmethod
    def build(
        cls,
        allow: Iterable[str] = (),
        *,
        allow_own_address: bool = True,
        max_ports: int = DEFAULT_MAX_PORTS,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        allowed_ports: str | None = None,
        resolve: Resolver | None = None,
    ) -> Policy:
        """Allow-list entries are CIDRs / addresses ("127.0.0.1/32", "2001:db8::/48") or
        domains ("example.org" allows it and every name under it). `ValueError` on a bad
        entry (the operator's config, not a user's input)."""
        networks: list[IPNetwork] = []
        domains: list[str] = []
        for raw in allow:
            entry = raw.strip()
            if not entry:
                continue
            try:
                net = _network(entry)
            except ValueError:
                net = None
            if net is not None:
                if net.prefixlen < MIN_PREFIX[net.version]:
                    # 0.0.0.0/0 and the like would turn the service into an open scanner.
                    raise ValueError(f"allow-list entry {entry!r} is broader than "
                                     f"/{MIN_PREFIX[net.version]}: list your own networks")
                networks.append(net)
                continue
            try:
                domain = normalise_hostname(entry.removeprefix("*."))
            except InvalidTarget:
                raise ValueError(f"allow-list entry {entry!r} is neither a CIDR nor a domain"
                                 ) from None
            if "." not in domain:
                # "com" is the 0.0.0.0/0 of names: every public host under a TLD.
                raise ValueError(f"allow-list entry {entry!r} is a top-level domain: list "
                                 "your own domains")
            domains.append(domain)
        if max_ports < 1 or max_addresses < 1:
            raise ValueError("max_ports and max_addresses must be >= 1")
        fixed = frozenset(parse_ports(allowed_ports)) if allowed_ports else None
        return cls(allow_own_address, tuple(networks), tuple(domains), max_ports,
                   max_addresses, fixed, resolve or canonical_resolver)

    # -- checks -------------------------------------------------------------------------------

    def _in_networks(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)

    def _domain_allowed(self, name: str) -> bool:
        return any(name == d or name.endswith("." + d) for d in self.domains)

    def address_refusal(self, ip: IPAddress, requester: IPAddress | None,
                        hostname: str | None = None) -> str | None:
        """None when *ip* may be scanned by *requester*, else the reason it may not."""
        ip = unwrap(ip)
        if self._in_networks(ip):
            return None  # the operator allow-listed it explicitly: wins over everything
        why = special_reason(ip)
        embedded = _embedded_v4(ip)
        if why is None and embedded is not None:
            why = special_reason(embedded) and f"embeds {embedded}"
        if why is not None:
            return f"{ip} is {why} and not allow-listed"
        if hostname is not None and self._domain_allowed(hostname):
            return None
        if self.allow_own_address and requester is not None and ip == requester:
            return None
        if self.allow_own_address:
            return (f"{ip} is not your own address"
                    + (f" ({requester})" if requester is not None else "")
                    + ": only the address you connect from may be checked")
        return f"{ip} is not in the operator's allow-list"

    def check_ports(self, spec: str) -> tuple[int, ...]:
        try:
            ports = parse_ports(spec)
        except UsageError as exc:
            raise InvalidTarget("bad-ports", str(exc)) from None
        if len(ports) > self.max_ports:
            raise TargetRefused("too-many-ports", f"{len(ports)} ports asked; at most "
                                f"{self.max_ports} per scan")
        if self.allowed_ports is not None:
            bad = [p for p in ports if p not in self.allowed_ports]
            if bad:
                raise TargetRefused("port-not-allowed", f"port {bad[0]} may not be scanned "
                                    f"here (allowed: {format_ports(self.allowed_ports)})")
        return ports

    def decide(self, target: str, ports: str, requester: str | None) -> Decision:
        """Check *target* and *ports* for *requester* (the client's IP as the server saw it).

        Raises `InvalidTarget` / `TargetRefused`. Resolves a name at most once.
        """
        if len(target) > MAX_TARGET_LENGTH:
            raise InvalidTarget("bad-target", "target is longer than 255 characters")
        if not target.strip():
            raise InvalidTarget("bad-target", "no target: give an IP address or a host name")
        problem = target_form_problem(target, "ports", 'target "{host}", ports "{port}"')
        if problem is not None:
            # The command line's words for the same mistake (targets.expressions).
            raise InvalidTarget("bad-target", f"invalid target {_show(target)}: {problem}")
        port_list = self.check_ports(ports)
        _refuse_many(target)
        who = _requester(requester)
        ip = parse_address(target)
        name = normalise_hostname(target) if ip is None else ""
        if ip is None:
            # IDNA maps look-alikes to ASCII ("１２７.０.０.１" → "127.0.0.1"): the mapped
            # text is checked as an address again, so it never passes as a "name".
            ip = parse_address(name)
        if ip is not None:
            refusal = self.address_refusal(ip, who)
            if refusal:
                raise TargetRefused("address-refused", refusal)
            return Decision(str(ip), None, (str(ip),), port_list)
        if name == "localhost" or name.endswith(".localhost"):
            raise TargetRefused("address-refused", f"{name} is loopback (RFC 6761)")
        addresses, canonical = self._resolve_once(name)
        if len(addresses) > self.max_addresses:
            raise TargetRefused("too-many-addresses", f"{name} has {len(addresses)} addresses;"
                                f" at most {self.max_addresses} per scan")
        # A CNAME out of the allow-listed domains (a CDN, a dangling CNAME someone claimed)
        # leads to someone else's addresses: the name's domain gives them no privilege.
        external = canonical not in (None, name) and not self._domain_allowed(str(canonical))
        for addr in addresses:
            refusal = self.address_refusal(addr, who, None if external else name)
            if refusal and external:
                raise TargetRefused("address-refused", f"{name} is a CNAME to {canonical}, "
                                    f"outside the allow-listed domains: {refusal}")
            if refusal:
                # The refusal names the address first ("127.0.0.1 is loopback ..."): say it
                # once, as a sentence.
                rest = refusal.removeprefix(f"{addr} ")
                raise TargetRefused("address-refused", f"{name} resolves to {addr}, which "
                                    f"{rest}" if rest != refusal else f"{name}: {refusal}")
        return Decision(name, name, tuple(str(a) for a in addresses), port_list)

    def decide_discovery(self, target: str, ports: str, requester: str | None) -> Decision:
        """May *target*'s subdomains be discovered (DNS) and scanned? Only under a domain the
        operator allow-listed: discovery sends hundreds of DNS queries and zone-transfer
        attempts to the domain's name servers, which nobody may point at a stranger's zone.
        Addresses are checked later, one by one (`decide_discovered`)."""
        port_list = self.check_ports(ports)
        if not target.strip() or len(target) > MAX_TARGET_LENGTH:
            raise InvalidTarget("bad-target", "give the domain whose subdomains to check")
        if parse_address(target) is not None:
            raise InvalidTarget("bad-target", "subdomain discovery takes a domain, not an "
                                "address")
        name = normalise_hostname(target)
        if "." not in name:
            raise InvalidTarget("bad-target", f"{name} is a top-level domain")
        if not self._domain_allowed(name):
            raise TargetRefused("discovery-refused", f"subdomains of {name} may not be "
                                "discovered here: only domains the operator allow-lists")
        return Decision(name, name, (), port_list, discover=True)

    def decide_discovered(
        self, decision: Decision,
        hosts: Iterable[tuple[str, Sequence[str]] | tuple[str, Sequence[str], Sequence[str]]],
        requester: str | None,
    ) -> tuple[Decision, list[dict[str, str]]]:
        """Check every address of every discovered (name, addresses[, CNAME chain]); returns
        the decision with the allowed literals (at most `max_addresses`, first found first)
        and the refused ones with their reasons. `TargetRefused` when none may be scanned.

        A name whose CNAME chain ends outside the allow-listed domains (a CDN, a SaaS host, a
        dangling CNAME someone else has claimed) gets no privilege from the domain: its
        addresses belong to whoever holds the chain's last name."""
        who = _requester(requester)
        addresses: list[str] = []
        names: list[str | None] = []
        refused: list[dict[str, str]] = []
        for item in hosts:
            name, found = item[0], item[1]
            chain = tuple(item[2]) if len(item) > 2 else ()
            owner = chain[-1].lower().rstrip(".") if chain else name
            external = bool(chain) and not self._domain_allowed(owner)
            for text in found:
                try:
                    ip = unwrap(ipaddress.ip_address(str(text).split("%")[0]))
                except ValueError:
                    refused.append({"name": name, "address": str(text),
                                    "reason": "not an IP address"})
                    continue
                if str(ip) in addresses:
                    continue
                why = self.address_refusal(ip, who, None if external else name)
                if why is not None and external:
                    why = (f"{name} is a CNAME to {owner}, outside the allow-listed domains: "
                           f"{why}")
                if why is None and len(addresses) >= self.max_addresses:
                    why = f"over the cap of {self.max_addresses} addresses per scan"
                if why is not None:
                    refused.append({"name": name, "address": str(ip), "reason": why})
                    continue
                addresses.append(str(ip))
                names.append(name)
        if not addresses:
            first = refused[0]["reason"] if refused else "no host with an address was found"
            raise TargetRefused("address-refused", f"nothing under {decision.target} may be "
                                f"scanned ({first})")
        return Decision(decision.target, decision.hostname, tuple(addresses), decision.ports,
                        discover=True, names=tuple(names)), refused

    def _resolve_once(self, name: str) -> tuple[list[IPAddress], str | None]:
        """The name's addresses and the canonical name the resolver reported (or None)."""
        try:
            answer = self.resolve(name)
            canonical = getattr(answer, "canonical", None)
            raw = list(answer)
        except (OSError, UnicodeError) as exc:
            raise InvalidTarget("unresolvable", f"cannot resolve {name}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        out: list[IPAddress] = []
        for text in raw:
            try:
                ip = unwrap(ipaddress.ip_address(str(text).split("%")[0]))
            except ValueError:
                raise InvalidTarget("unresolvable", f"cannot resolve {name}: the resolver "
                                    f"returned {_show(str(text))}") from None
            if ip not in out:
                out.append(ip)
        if not out:
            raise InvalidTarget("unresolvable", f"cannot resolve {name}: no address")
        return out, str(canonical).lower().rstrip(".") if canonical else None


def _network(entry: str) -> IPNetwork:
    net = ipaddress.ip_network(entry.strip("[]"), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:  # "::ffff:127.0.0.1/128" means the IPv4 address
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def _requester(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return unwrap(ipaddress.ip_address(text.split("%")[0]))
    except ValueError:
        return None  # e.g. a Unix-socket peer or a test client's placeholder name
