"""Request-level protections of the web service: API tokens, CSRF tokens, the per-client rate
limit and the security headers.

Owns: constant-time token checks against hashes held at rest, signed double-submit CSRF
tokens, a bounded in-process token bucket per client address, and the header set every
response carries. Must not: decide which targets may be scanned (that is `policy`) or import
FastAPI (the app wires these into dependencies and middleware).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

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
