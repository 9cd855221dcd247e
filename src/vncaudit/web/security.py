"""Request-level protections of the web service: API tokens, CSRF tokens, the per-client rate
limit, the security headers, and which Host and Origin a request may carry.

Owns: constant-time token checks against hashes held at rest, signed double-submit CSRF
tokens, a bounded in-process token bucket per client address, the header set every response
carries, the Host allow-list match (`host_allowed`: DNS rebinding, a name that resolves to our
address, must not reach us) and the same-origin test of unsafe requests (`same_origin`). Must
not: decide which targets may be scanned (that is `policy`) or import FastAPI (the app wires
these into dependencies and middleware, `web/deploy.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import urlsplit

# Every page is server-rendered from our own origin: scripts and styles come from /static only
# (no inline script, no CDN), nothing may frame us, forms post only to us.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The HTML report is a self-contained document (inline styles, data: images); the API adds
# the hash of its one inline script (`routes.api.report_csp`), never 'unsafe-inline' script.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-write=(self)",
}

CSRF_COOKIE = "vncaudit_csrf"


def token_matches(token: str, hashes: Iterable[str]) -> bool:
    """True when sha256(token) equals one of *hashes* (``sha256:<hex>``), compared in
    constant time against every hash so timing says nothing about which one matched."""
    digest = "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    found = False
    for h in hashes:
        found |= hmac.compare_digest(digest, h)
    return found


class Csrf:
    """Signed double-submit: the cookie holds a random value, the form holds its HMAC under
    the server's secret. A forged cross-site post has neither; an attacker who can plant a
    cookie (a sibling subdomain) still cannot compute the matching form value."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()

    def valid(self, cookie: str | None, form_value: str | None) -> bool:
        if not cookie or not form_value or len(cookie) > 100:
            return False
        # Bytes: compare_digest raises TypeError on non-ASCII str (a 500 for "é" as token).
        return hmac.compare_digest(self.form_token(cookie).encode(),
                                   form_value.encode("utf-8", "surrogateescape"))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def within(text: str, networks: Iterable[Network]) -> bool:
    """True when *text* is an IP address inside one of *networks*."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


def forwarded_client(peer: str, forwarded_for: Iterable[str],
                     proxies: tuple[Network, ...]) -> str:
    """The requester's address: the TCP *peer*, or — when the peer is a trusted reverse proxy
    — the right-most X-Forwarded-For entry that is not itself a trusted proxy (entries left of
    it were written by the client and prove nothing)."""
    if not proxies or not within(peer, proxies):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",")]
    for hop in reversed(hops):
        if not within(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from the proxy chain: fall back to the proxy itself
    return peer


def bucket_key(client: str) -> str:
    """Whose bucket a client address draws from: an IPv6 client's /64 (one subscriber or
    host usually holds a whole /64, so one bucket per /128 would be no limit at all), an
    IPv4 address as itself (IPv4-mapped IPv6 unwrapped)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimiter:
    """A token bucket per client address (`bucket_key`): `burst` submissions at once, refilled at
    `per_minute`. Holds at most `max_clients` buckets (least recently used dropped), so a
    flood of source addresses cannot grow memory. Thread-safe."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token for *client*: 0.0 when allowed, else the seconds to wait."""
        t = time.monotonic() if now is None else now
        client = bucket_key(client)
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, t))
            tokens = min(self.burst, tokens + (t - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, t)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, t)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


# -- Host and Origin ------------------------------------------------------------------------------

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")


def _canonical(host: str) -> str:
    """Lower case; an IP literal in its compressed form, IPv6 without brackets."""
    bare = host.strip().lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.rstrip(".")


def host_pattern_problem(entry: str) -> str | None:
    """Why *entry* cannot be an allowed_hosts entry, or None: a host name, an IP address
    (IPv6 with or without brackets), '*.domain' for its subdomains, or '*'."""
    if entry == "*":
        return None
    name = entry[2:] if entry.startswith("*.") else entry
    canonical = _canonical(name)
    try:
        ipaddress.ip_address(canonical)
    except ValueError:
        pass
    else:
        return "a wildcard covers names, not addresses" if entry.startswith("*.") else None
    labels = canonical.split(".")
    if not canonical or not all(_LABEL.fullmatch(label) for label in labels):
        return "not a host name or IP address (no scheme, port or path)"
    return None


def split_host_header(value: str | None) -> tuple[str, int | None] | None:
    """A Host header as (canonical host, port or None); None when it is not one."""
    if not value:
        return None
    match = _HOST_HEADER.fullmatch(value.strip())
    if match is None:
        return None
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    return _canonical(host), port


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """True when the canonical *host* (from `split_host_header`) is allowed by *patterns*."""
    for pattern in patterns:
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            if host.endswith("." + _canonical(pattern[2:])):
                return True
        elif host == _canonical(pattern):
            return True
    return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host_header: str | None) -> bool:
    """True when a browser's Origin names the host the request was sent to (Host), so the
    page that sent it is one of ours. The scheme is not compared (behind a TLS proxy the
    service cannot see it); the port is, when Host carries one."""
    target = split_host_header(host_header)
    if target is None or origin.strip().lower() == "null":
        return False
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return False
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or parts.path:
        return False
    host, port = target
    if _canonical(parts.hostname) != host:
        return False
    return port is None or origin_port == port


def cross_origin(origin: str | None, fetch_site: str | None, host_header: str | None) -> bool:
    """True when a browser sent this unsafe request from a page that is not ours.

    Origin decides when it names a site. A form posted from a page whose Referrer-Policy is
    no-referrer (ours) carries `Origin: null`, as does a sandboxed frame: then the browser's
    Sec-Fetch-Site tells them apart (same-origin for ours). A request with neither header is
    no browser's cross-site request (curl, scripts) and passes."""
    site = (fetch_site or "").strip().lower()
    if origin is not None and origin.strip().lower() != "null":
        return not same_origin(origin, host_header)
    if origin is not None:  # "null"
        return site != "same-origin"
    return site in ("cross-site", "same-site")
