"""Subdomain discovery: find the hosts of a DNS domain, so the scan can probe them.

Owns: validating a user's domain, the built-in label wordlist (`data/subdomain_labels.txt`),
every DNS query of the discovery (NS, A, AAAA, with CNAME chasing), zone-transfer attempts
(AXFR) on each of the domain's authoritative servers, wildcard-DNS detection, the concurrency
and rate limits of that DNS traffic, and `DiscoveryResult`, which records how each name was
found (`FoundHost.sources`). `to_target_expressions` and `to_resolver` hand the result to
`vncaudit.targets` without a second lookup.

Must not: probe VNC or open any connection but DNS (UDP/TCP to the chosen resolver; TCP to the
domain's own authoritative servers for AXFR); query the system resolver when a resolver was
given; import anything of the package but `exceptions`; print. Bad user input is a `UsageError`
with one line; a resolver that cannot answer for the domain at all is a `NetworkError`; every
other failure (a timeout on one name, a refused transfer) is recorded in the result, never
raised.

The package re-exports its public names; the parts live in:
  * `results`  — `FoundHost`, `DiscoveryResult`, `AxfrStatus`, the hand-over to `targets`;
  * `names`    — validating the domain and the resolver address;
  * `query`    — `DnsSender`, the one sender of DNS messages (limits, retries, counting);
  * `lookup`   — A/AAAA with CNAME chasing, the apex and its NS (`Discovery`);
  * `axfr`     — zone transfers and the hosts a zone lists;
  * `wordlist` — the built-in and user wordlists, wildcard detection;
  * `run`      — `discover` / `discover_sync`: the steps in order.
Each part imports only parts listed before it (`results` and `names` none).
"""

# `NAME as NAME`: the limits are importable from here without joining `__all__`.
from vncaudit.subdomains.axfr import AXFR_LIFETIME_FACTOR as AXFR_LIFETIME_FACTOR
from vncaudit.subdomains.axfr import MAX_AXFR_RECORDS as MAX_AXFR_RECORDS
from vncaudit.subdomains.axfr import MAX_AXFR_TARGETS as MAX_AXFR_TARGETS
from vncaudit.subdomains.lookup import MAX_CNAME_CHAIN
from vncaudit.subdomains.names import normalize_domain, parse_resolver
from vncaudit.subdomains.query import EDNS_PAYLOAD as EDNS_PAYLOAD
from vncaudit.subdomains.query import MAX_ERRORS as MAX_ERRORS
from vncaudit.subdomains.results import (
    SOURCE_APEX,
    SOURCE_AXFR_PREFIX,
    SOURCE_NS,
    SOURCE_WORDLIST,
    AxfrStatus,
    DiscoveryResult,
    FoundHost,
    is_external,
    to_resolver,
    to_target_expressions,
)
from vncaudit.subdomains.run import discover, discover_sync
from vncaudit.subdomains.wordlist import WILDCARD_LABEL_LENGTH as WILDCARD_LABEL_LENGTH
from vncaudit.subdomains.wordlist import WILDCARD_PROBES as WILDCARD_PROBES
from vncaudit.subdomains.wordlist import builtin_wordlist, read_wordlist

__all__ = [
    "MAX_CNAME_CHAIN",
    "SOURCE_APEX",
    "SOURCE_AXFR_PREFIX",
    "SOURCE_NS",
    "SOURCE_WORDLIST",
    "AxfrStatus",
    "DiscoveryResult",
    "FoundHost",
    "builtin_wordlist",
    "discover",
    "discover_sync",
    "is_external",
    "normalize_domain",
    "parse_resolver",
    "read_wordlist",
    "to_resolver",
    "to_target_expressions",
]
