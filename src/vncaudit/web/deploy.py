"""The web service as people deploy it: ASGI middlewares around the app.

Owns: `HostGuard` (only the Host names of `allowed_hosts` are answered: a page on a name that
rebinds to our address gets 400, not our pages), `OriginGuard` (a POST a browser sent from another
site is refused, whatever its content type), `ForwardedScheme` (the scheme a trusted reverse
proxy reports in X-Forwarded-Proto, and HSTS on HTTPS responses), `AccessLog` (one line per
request, plain or JSON, to a file or stderr) and opening that log. Must not: route, check
tokens or CSRF, or decide targets (`routes`, `deps`, `policy` do); the pure tests live in
`security`. Plain ASGI (no web framework import), so `app` can wrap any ASGI app with them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from vncaudit.web.metrics import Metrics
from vncaudit.web.policy import IPNetwork
from vncaudit.web.security import (
    cross_origin,
    forwarded_client,
    host_allowed,
    split_host_header,
    within,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                 code: str) -> None:
    """Answer with the service's error shape, {"detail", "code"}; a WebSocket handshake is
    closed instead (policy violation)."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [bytes(v).decode("latin-1") for k, v in scope.get("headers") or () if k == name]


class HostGuard:
    """400 for a request whose Host header names no allowed host (or is missing/garbled)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str], metrics: Metrics) -> None:
        self.app = app
        self.hosts = tuple(hosts)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"host")
        parsed = split_host_header(given)
        if parsed is not None and host_allowed(parsed[0], self.hosts):
            await self.app(scope, receive, send)
            return
        self.metrics.refused.labels("host").inc()
        shown = (given or "")[:100]
        await refuse(scope, receive, send, 400,
                     f"this service does not answer to the host name {shown!r} (the operator "
                     "lists the names it answers in allowed_hosts)", "host-not-allowed")


class OriginGuard:
    """403 for an unsafe request (POST ...) that a browser sent from another origin. Requests
    without Origin (curl, scripts) pass: the CSRF token and API token rules still apply."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        site = _header(scope, b"sec-fetch-site")
        if not cross_origin(origin, site, _header(scope, b"host")):
            await self.app(scope, receive, send)
            return
        self.metrics.refused.labels("cross-origin").inc()
        sender = f"Origin {origin[:100]!r}" if origin is not None else f"Sec-Fetch-Site {site!r}"
        await refuse(scope, receive, send, 403,
                     f"cross-origin request refused ({sender}: not a page of this service)",
                     "cross-origin")


class ForwardedScheme:
    """Behind a trusted reverse proxy, the scheme it reports (X-Forwarded-Proto) becomes the
    request's, so URLs, the Secure cookie and HSTS follow the client's HTTPS. Every response
    to an HTTPS request carries Strict-Transport-Security (unless `hsts_max_age` is 0)."""

    def __init__(self, app: ASGIApp, proxies: tuple[IPNetwork, ...], hsts_max_age: int) -> None:
        self.app = app
        self.proxies = proxies
        self.hsts = f"max-age={hsts_max_age}".encode() if hsts_max_age > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else ""
        if self.proxies and within(peer, self.proxies):
            proto = (_headers(scope, b"x-forwarded-proto") or [""])[-1].split(",")[-1]
            proto = proto.strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto if scope["type"] == "http" else proto.replace(
                    "http", "ws")
        if self.hsts is None or scope.get("scheme") not in ("https", "wss"):
            await self.app(scope, receive, send)
            return
        hsts = self.hsts

        async def with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"strict-transport-security", hsts)]
            await send(message)

        await self.app(scope, receive, with_hsts)


ACCESS_LOGGER = "vncaudit.web.access"
_app_number = itertools.count(1)


def open_access_log(target: str) -> logging.Logger:
    """The access logger writing to *target* ("-" stderr, else a file opened for appending
    and reopened when logrotate moves it). Raises OSError when the file cannot be opened."""
    logger = logging.getLogger(f"{ACCESS_LOGGER}.{next(_app_number)}")  # one per app
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


def close_access_log(logger: logging.Logger) -> None:
    """Close the log's file (a handler reopens it if the app serves again)."""
    for handler in logger.handlers:
        handler.close()


def _quote(text: str) -> str:
    """A request field made safe for one log line: no quotes, control characters escaped."""
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}"
                   for c in text)[:1000]


class AccessLog:
    """One line per HTTP request once its response has started: client (as the rate limit
    sees it, through trusted proxies), method, path, status, bytes, seconds."""

    def __init__(self, app: ASGIApp, logger: logging.Logger, fmt: str,
                 proxies: tuple[IPNetwork, ...]) -> None:
        self.app = app
        self.logger = logger
        self.json = fmt == "json"
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0
        size = 0

        async def counting(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting)
        finally:
            self._log(scope, status or 500, size, time.monotonic() - started)

    def _log(self, scope: Scope, status: int, size: int, seconds: float) -> None:
        client = scope.get("client")
        peer = client[0] if client else ""
        who = forwarded_client(peer, _headers(scope, b"x-forwarded-for"), self.proxies)
        path = str(scope.get("path", ""))
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        method = str(scope.get("method", ""))
        agent = _header(scope, b"user-agent") or ""
        referer = _header(scope, b"referer") or ""
        now = dt.datetime.now(dt.UTC)
        if self.json:
            line = json.dumps({
                "time": now.isoformat(timespec="milliseconds"), "client": who, "peer": peer,
                "method": method, "path": target, "http": scope.get("http_version", ""),
                "status": status, "bytes": size, "seconds": round(seconds, 6),
                "host": _header(scope, b"host") or "", "user_agent": agent,
                "referer": referer}, separators=(",", ":"))
        else:
            stamp = now.strftime("%d/%b/%Y:%H:%M:%S +0000")
            line = (f'{who or "-"} - - [{stamp}] "{_quote(method)} {_quote(target)} '
                    f'HTTP/{scope.get("http_version", "1.1")}" {status} {size} '
                    f'"{_quote(referer) or "-"}" "{_quote(agent) or "-"}" {seconds:.6f}')
        self.logger.info(line)
