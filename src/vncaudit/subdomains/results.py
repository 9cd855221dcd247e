"""What a subdomain discovery returns, and how it is handed to `vncaudit.targets`.

Owns: `FoundHost`, `DiscoveryResult` (with their dict forms for the store, the JSON report and
the web API), `AxfrStatus`, the `SOURCE_*` tags that say how a name was found, and the hand-over
(`is_external`, `to_target_expressions`, `to_resolver`) that lets the scan use the discovered
addresses without a second lookup.

Must not: send DNS queries or open any connection, or import anything of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

SOURCE_APEX: Final = "apex"  # the domain itself has addresses
SOURCE_NS: Final = "ns"  # an authoritative server's name, inside the domain
SOURCE_WORDLIST: Final = "wordlist"  # guessed from the built-in or the user's wordlist
SOURCE_AXFR_PREFIX: Final = "axfr:"  # + the NS name that gave the zone away


class AxfrStatus(StrEnum):
    """Outcome of one zone-transfer attempt (a closed set, as stored)."""

    OK = "ok"  # the whole zone came: this server gives it to anyone
    REFUSED = "refused"  # rcode REFUSED: the expected, safe answer
    NOTAUTH = "notauth"  # rcode NOTAUTH: not authoritative, or wants TSIG
    CLOSED = "closed"  # the server closed the connection without answering
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # TCP connect failed
    ERROR = "error"  # another rcode, or a malformed or interrupted transfer
    TRUNCATED = "truncated"  # stopped at MAX_AXFR_RECORDS; what came is kept
    NO_ADDRESS = "no-address"  # the NS name has no A/AAAA record


@dataclass(frozen=True)
class FoundHost:
    """One discovered name: its addresses, the CNAME chain to them, and how it was found.

    `sources` holds "apex", "ns", "wordlist" and "axfr:<ns name>" entries. A name whose CNAME
    chain leads nowhere (dangling, looping) is kept with empty `addresses`: it is attack
    surface too (subdomain takeover), but nothing to scan.
    """

    name: str
    addresses: tuple[str, ...]
    cnames: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "addresses": list(self.addresses),
                "cnames": list(self.cnames), "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoundHost:
        return cls(str(d["name"]), tuple(d.get("addresses", ())), tuple(d.get("cnames", ())),
                   tuple(d.get("sources", ())))


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything one discovery learned. `axfr` maps "<ns name>@<address>" (or the NS name
    alone when it has no address) to an `AxfrStatus` value; `wildcard` is None when the domain
    has no wildcard, else the addresses random names resolved to (`wildcard_cnames`: the first
    CNAME target they got, if any); `queries` counts every DNS message sent, retries and zone
    transfers included; `errors` holds one line per problem (at most MAX_ERRORS, then a count).
    """

    domain: str
    hosts: tuple[FoundHost, ...]
    wildcard: tuple[str, ...] | None
    axfr: dict[str, str]
    queries: int
    errors: list[str]
    resolver: str = ""
    wildcard_cnames: tuple[str, ...] = ()
    wildcard_dropped: int = 0  # wordlist names dropped because they answered like the wildcard

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the store, the JSON report and the web API)."""
        return {
            "domain": self.domain,
            "resolver": self.resolver,
            "hosts": [h.to_dict() for h in self.hosts],
            "wildcard": None if self.wildcard is None else list(self.wildcard),
            "wildcard_cnames": list(self.wildcard_cnames),
            "axfr": {k: str(v) for k, v in self.axfr.items()},
            "queries": self.queries,
            "wildcard_dropped": self.wildcard_dropped,
            "errors": list(self.errors),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveryResult:
        wildcard = d.get("wildcard")
        return cls(
            domain=str(d["domain"]),
            hosts=tuple(FoundHost.from_dict(h) for h in d.get("hosts", ())),
            wildcard=None if wildcard is None else tuple(wildcard),
            axfr={str(k): str(v) for k, v in d.get("axfr", {}).items()},
            queries=int(d.get("queries", 0)),
            errors=[str(e) for e in d.get("errors", ())],
            resolver=str(d.get("resolver", "")),
            wildcard_cnames=tuple(d.get("wildcard_cnames", ())),
            wildcard_dropped=int(d.get("wildcard_dropped", 0)),
        )


def is_external(host: FoundHost, domain: str) -> bool:
    """True when *host*'s CNAME chain ends outside *domain* (a CDN, a SaaS provider): its
    addresses belong to someone else, though the name is the domain's."""
    if not host.cnames:
        return False
    last = host.cnames[-1]
    return last != domain and not last.endswith("." + domain)


def to_target_expressions(result: DiscoveryResult, *, include_external: bool = False
                          ) -> list[str]:
    """The discovered names that have addresses, as target expressions for
    `vncaudit.targets.build_target_space`. Pass `to_resolver(result)` as its `resolve` so the
    names map to exactly the addresses discovery found (no second lookup through the system
    resolver), and each `Target` keeps its hostname. Names whose CNAME chain leaves the
    domain are left out unless *include_external*: scanning a CDN's or SaaS provider's
    addresses is scanning a third party."""
    return [h.name for h in result.hosts
            if h.addresses and (include_external or not is_external(h, result.domain))]


def to_resolver(result: DiscoveryResult,
                fallback: Callable[[str], list[str]] | None = None) -> Callable[[str], list[str]]:
    """A `vncaudit.targets.Resolver` answering the discovered names with their addresses;
    other names go to *fallback* (e.g. `targets.default_resolver`) or fail as unknown."""
    known = {h.name: list(h.addresses) for h in result.hosts if h.addresses}

    def resolve(name: str) -> list[str]:
        key = name.lower().removesuffix(".")
        if key in known:
            return list(known[key])
        if fallback is not None:
            return fallback(name)
        raise OSError(f"{name} was not found by the discovery of {result.domain}")

    return resolve
