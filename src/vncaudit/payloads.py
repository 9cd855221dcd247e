"""What a result carries beyond the handshake: the typed payloads of `ServiceResult.extra`.

Owns: one frozen dataclass per kind of payload — the TLS session, the honeypot checks and
signals, the web front end, the active checks (authentication, screenshot, desktop verdict,
auth bypass, password audit), the connection ledger's note and the local listener — each with
`to_dict`/`from_dict` in the exact shape of the result schema v1 `extra` object
(docs/design.md §7), and `Extras`, the holder that `ServiceResult.extra` is. Must not: import
anything of the package, do I/O, or decide anything: the modules that run a check fill its
payload, `assess` grades it.

Adding a kind of payload: write a frozen dataclass with `to_dict()` and a classmethod
`from_dict()`, and add ONE field `key: NewKind | None = None` to `Extras` (or to `ActiveChecks`
for an opt-in check). The field name is its JSON key, the field order is the key order in
reports, and a field left None is left out, so results without it are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, Self, cast, get_args, get_type_hints

Json = dict[str, Any]


def _strings(items: Any) -> tuple[str, ...]:
    return tuple(items or ())


def _opt_strings(items: Any) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


class PayloadHolder:
    """A dataclass whose fields are optional payloads: None fields are left out of the dict,
    the others are written in field order under their field name."""

    def to_dict(self) -> Json:
        out: Json = {}
        for name in _names(cast(type, type(self))):
            value = getattr(self, name)
            if value is not None:
                out[name] = value if isinstance(value, str) else value.to_dict()
        return out

    def __bool__(self) -> bool:
        # Asked of every result's `extra` (most have nothing): the field names are the
        # class's, worked out once, not by `fields()` (a new tuple on each call).
        for name in _names(cast(type, type(self))):
            if getattr(self, name) is not None:
                return True
        return False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Reads the keys it knows; a key written by a newer version is left out."""
        loaders = _loaders(cast(type, cls))
        found = {name: load(d[name]) for name, load in loaders if d.get(name) is not None}
        return cast(Callable[..., Self], cls)(**found)


@cache
def _names(holder: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(holder))


@cache
def _loaders(holder: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    # Each field is `Kind | None`; `Kind.from_dict` (or `str`) reads its JSON value.
    hints = get_type_hints(holder)
    out = []
    for f in fields(holder):
        kind = next(a for a in get_args(hints[f.name]) if a is not type(None))
        out.append((f.name, getattr(kind, "from_dict", kind)))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Written by the probe


@dataclass(frozen=True)
class TlsSession:
    """The TLS the probe negotiated (type 18, or VeNCrypt's no-auth TLS sub-types)."""

    version: str | None
    cipher: str | None
    anonymous: bool
    certificate: bool  # the server presented one

    def to_dict(self) -> Json:
        return {"version": self.version, "cipher": self.cipher, "anonymous": self.anonymous,
                "certificate": self.certificate}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TlsSession:
        return cls(d.get("version"), d.get("cipher"), bool(d.get("anonymous")),
                   bool(d.get("certificate")))


@dataclass(frozen=True)
class SuspectedHoneypot:
    """Why the service looks like an emulator rather than a real product."""

    reasons: tuple[str, ...]

    def to_dict(self) -> Json:
        return {"reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SuspectedHoneypot:
        return cls(_strings(d.get("reasons")))


# --------------------------------------------------------------------------------------------
# Written by `active` (the honeypot checks of --active-checks, on connections of their own)

_UNASSIGNED = "unassigned_type_"


@dataclass(frozen=True)
class HoneypotChecks:
    """Outcomes of the honeypot checks; JSON key of the first: `unassigned_type_<number>`."""

    unassigned_type: int  # the unassigned security type selected
    unassigned_outcome: str  # "accepted", "refused", "closed", "no answer", ...
    connections: int
    challenge_random: bool | None = None  # None: no VNC challenge was read
    challenge_repeated: bool | None = None  # None: not asked for (nothing looked fake)

    def to_dict(self) -> Json:
        out: Json = {f"{_UNASSIGNED}{self.unassigned_type}": self.unassigned_outcome}
        if self.challenge_random is not None:
            out["challenge_random"] = self.challenge_random
        if self.challenge_repeated is not None:
            out["challenge_repeated"] = self.challenge_repeated
        out["connections"] = self.connections
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HoneypotChecks:
        key = next((k for k in d if k.startswith(_UNASSIGNED)), f"{_UNASSIGNED}0")
        return cls(int(key[len(_UNASSIGNED):]), str(d.get(key)), int(d.get("connections", 0)),
                   d.get("challenge_random"), d.get("challenge_repeated"))


# --------------------------------------------------------------------------------------------
# Written by `websocket` (a web front end: noVNC, websockify, a Java-viewer page)


@dataclass(frozen=True)
class WebFacts:
    """What the HTTP side says about a web front end; `error` when no page could be read."""

    kind: str  # "websockify" | "novnc" | "java-viewer" | "proxmox" | "http" | "none"
    server: str | None = None
    title: str | None = None
    status: int | None = None
    applet_port: int | None = None  # the RFB port the Java applet is told to use
    evidence: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> Json:
        if self.error is not None:
            return {"kind": self.kind, "error": self.error}
        return {"kind": self.kind, "server": self.server, "title": self.title,
                "status": self.status, "applet_port": self.applet_port,
                "evidence": list(self.evidence)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WebFacts:
        return cls(str(d.get("kind")), d.get("server"), d.get("title"), d.get("status"),
                   d.get("applet_port"), _strings(d.get("evidence")), d.get("error"))


@dataclass(frozen=True)
class WebSocketEndpoint:
    """The WebSocket the RFB probe ran through."""

    url: str
    path: str
    subprotocol: str | None
    server: str | None
    frames_received: int | None = None

    def to_dict(self) -> Json:
        out: Json = {"url": self.url, "path": self.path, "subprotocol": self.subprotocol,
                     "server": self.server}
        if self.frames_received is not None:
            out["frames_received"] = self.frames_received
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WebSocketEndpoint:
        return cls(str(d.get("url")), str(d.get("path")), d.get("subprotocol"), d.get("server"),
                   d.get("frames_received"))


@dataclass(frozen=True)
class UpgradeAttempt:
    """One WebSocket upgrade request; fields that did not apply are left out of the dict."""

    path: str
    status: int | None = None
    error: str | None = None
    server: str | None = None
    auth_required: bool | None = None  # 401/403: a token or ticket gateway

    def to_dict(self) -> Json:
        out: Json = {"path": self.path}
        for name in ("status", "error", "server", "auth_required"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UpgradeAttempt:
        return cls(str(d.get("path")), d.get("status"), d.get("error"), d.get("server"),
                   d.get("auth_required"))


@dataclass(frozen=True)
class WebFrontEnd:
    """A web front end: its page, the WebSocket RFB ran through, every upgrade tried."""

    transport: str | None = None  # "websocket" | "http-java-viewer" | None: no way to RFB
    http: WebFacts | None = None
    websocket: WebSocketEndpoint | None = None
    attempts: tuple[UpgradeAttempt, ...] = ()

    def to_dict(self) -> Json:
        return {
            "transport": self.transport,
            "http": self.http.to_dict() if self.http else None,
            "websocket": self.websocket.to_dict() if self.websocket else None,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WebFrontEnd:
        http, ws = d.get("http"), d.get("websocket")
        return cls(
            d.get("transport"),
            WebFacts.from_dict(http) if http else None,
            WebSocketEndpoint.from_dict(ws) if ws else None,
            tuple(UpgradeAttempt.from_dict(a) for a in d.get("attempts") or ()),
        )

    @property
    def servers(self) -> tuple[str, ...]:
        """Every distinct `Server:` header seen: page, WebSocket, refused upgrades."""
        found = [self.http.server if self.http else None,
                 self.websocket.server if self.websocket else None,
                 *(a.server for a in self.attempts)]
        return tuple(dict.fromkeys(s for s in found if s))


# --------------------------------------------------------------------------------------------
# Written by `budget` (the connection ledger)


@dataclass(frozen=True)
class BudgetNote:
    """What a result says about the connection ledger: not probed (the facts read last, and
    why), or probed with something worth saying (the last free connection, another source
    address, --risk-lockout)."""

    probed: bool
    reason: str
    source: str
    rule: str
    spent: int
    free: int
    next_block: float | None = None
    read_at: str | None = None  # ISO time of the facts reported, when not probed now
    age: float | None = None  # seconds since then (None: the clock cannot tell)
    liveness: str | None = None  # "open" (SYN-ACK to a half-open SYN), "closed", or None

    def to_dict(self) -> Json:
        return {
            "probed": self.probed,
            "reason": self.reason,
            "source": self.source,
            "rule": self.rule,
            "spent": self.spent,
            "free": self.free,
            "next_block": self.next_block,
            "read_at": self.read_at,
            "age": None if self.age is None else round(self.age, 1),
            "liveness": self.liveness,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BudgetNote:
        return cls(bool(d.get("probed")), str(d.get("reason", "")), str(d.get("source", "")),
                   str(d.get("rule", "")), d.get("spent", 0), d.get("free", 0),
                   d.get("next_block"), d.get("read_at"), d.get("age"), d.get("liveness"))


# --------------------------------------------------------------------------------------------
# Written by `local` (a listener of this host, probed from inside)


@dataclass(frozen=True)
class LocalBinding:
    bind: str  # the address the socket is bound to
    scope: str  # "loopback" | "lan" | "public" | ...

    def to_dict(self) -> Json:
        return {"bind": self.bind, "scope": self.scope}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalBinding:
        return cls(str(d.get("bind")), str(d.get("scope")))


# --------------------------------------------------------------------------------------------
# Written by `active` (opt-in checks, each on connections of its own)


@dataclass(frozen=True)
class ScreenSize:
    width: int
    height: int
    depth: int

    def to_dict(self) -> Json:
        return {"width": self.width, "height": self.height, "depth": self.depth}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScreenSize:
        return cls(d["width"], d["height"], d["depth"])


@dataclass(frozen=True)
class HandshakeRecord:
    """What one connection of an active check achieved (outcomes: `active.Outcome`)."""

    outcome: str
    server_version: str | None = None
    offered_types: tuple[int, ...] = ()
    security_path: tuple[str, ...] = ()  # e.g. ("VeNCrypt", "TLSVnc")
    security_result: str | None = None  # "ok" | "failed" | None (not read)
    reason: str | None = None
    desktop_name: str | None = None
    framebuffer: ScreenSize | None = None  # set when ServerInit was read
    elapsed: float = 0.0

    def to_dict(self) -> Json:
        return {
            "outcome": self.outcome,
            "server_version": self.server_version,
            "offered_types": list(self.offered_types),
            "security_path": list(self.security_path),
            "security_result": self.security_result,
            "reason": self.reason,
            "desktop_name": self.desktop_name,
            "framebuffer": self.framebuffer.to_dict() if self.framebuffer else None,
            "elapsed": round(self.elapsed, 4),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HandshakeRecord:
        fb = d.get("framebuffer")
        return cls(str(d.get("outcome")), d.get("server_version"),
                   tuple(d.get("offered_types") or ()), _strings(d.get("security_path")),
                   d.get("security_result"), d.get("reason"), d.get("desktop_name"),
                   ScreenSize.from_dict(fb) if fb else None, d.get("elapsed", 0.0))


@dataclass(frozen=True)
class AuthCheck:
    """`--password`: the handshake with the given password (masked unless shown)."""

    handshake: HandshakeRecord
    password: str
    password_shown: bool

    def to_dict(self) -> Json:
        return {**self.handshake.to_dict(), "password": self.password,
                "password_shown": self.password_shown}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuthCheck:
        return cls(HandshakeRecord.from_dict(d), str(d.get("password")),
                   bool(d.get("password_shown")))


@dataclass(frozen=True)
class ScreenshotCheck:
    """`--screenshot`. `outcome` is None when no connection was made (skipped, or the check
    failed before one): then only `status` and `reason` are recorded.

    `client_view` marks the copy handed to web clients: the PNG is named by `url`, and the
    server's own `path` is left out of the dict.
    """

    status: str  # "ok" | "failed" | "skipped"
    reason: str | None = None
    outcome: str | None = None
    path: str | None = None
    width: int = 0
    height: int = 0
    coverage: float = 0.0
    desktop_name: str | None = None
    security_path: tuple[str, ...] = ()
    encodings: tuple[tuple[str, int], ...] = ()  # (encoding name, rectangles), in order seen
    bytes_received: int = 0
    updates: int = 0
    elapsed: float = 0.0
    url: str | None = None
    client_view: bool = False

    @property
    def taken(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> Json:
        if self.outcome is None:
            out: Json = {"status": self.status, "reason": self.reason}
        else:
            out = {
                "status": self.status,
                "path": self.path,
                "width": self.width,
                "height": self.height,
                "coverage": round(self.coverage, 4),
                "desktop_name": self.desktop_name,
                "security_path": list(self.security_path),
                "outcome": self.outcome,
                "reason": self.reason,
                "encodings": dict(self.encodings),
                "bytes_received": self.bytes_received,
                "updates": self.updates,
                "elapsed": round(self.elapsed, 4),
            }
        if self.client_view:
            out.pop("path", None)
            out["url"] = self.url
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScreenshotCheck:
        return cls(
            status=str(d.get("status")),
            reason=d.get("reason"),
            outcome=d.get("outcome"),
            path=d.get("path"),
            width=d.get("width", 0),
            height=d.get("height", 0),
            coverage=d.get("coverage", 0.0),
            desktop_name=d.get("desktop_name"),
            security_path=_strings(d.get("security_path")),
            encodings=tuple((d.get("encodings") or {}).items()),
            bytes_received=d.get("bytes_received", 0),
            updates=d.get("updates", 0),
            elapsed=d.get("elapsed", 0.0),
            url=d.get("url"),
            client_view="url" in d and "path" not in d,
        )


@dataclass(frozen=True)
class ScreenRegion:
    """A window, panel or dialog the desktop classifier found (its bounding box)."""

    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> Json:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScreenRegion:
        return cls(d["x"], d["y"], d["width"], d["height"])


@dataclass(frozen=True)
class DesktopFeatures:
    """The classifier's measurements; those it did not get to are None and left out."""

    background_share_of_border: float | None = None
    foreground_share: float | None = None
    components: tuple[ScreenRegion, ...] | None = None
    main_centre_offset: float | None = None
    main_area_share: float | None = None
    title_bars: int | None = None
    docked_bars: int | None = None
    score: float | None = None

    def to_dict(self) -> Json:
        out: Json = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = [c.to_dict() for c in value] if f.name == "components" else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DesktopFeatures:
        found = {f.name: d[f.name] for f in fields(cls) if d.get(f.name) is not None}
        if "components" in found:
            found["components"] = tuple(ScreenRegion.from_dict(c) for c in found["components"])
        return cls(**found)


@dataclass(frozen=True)
class DesktopVerdict:
    """Login screen or live desktop, from the screenshot (`desktop.classify_desktop`)."""

    kind: str  # "login-screen" | "desktop" | "blank" | "unknown"
    confidence: float = 0.0
    evidence: tuple[str, ...] = ()
    features: DesktopFeatures = DesktopFeatures()
    seen: str | None = None  # what the screen shows, in words; None in results stored before

    def to_dict(self) -> Json:
        out: Json = {"kind": self.kind, "confidence": round(self.confidence, 2)}
        if self.seen is not None:
            out["seen"] = self.seen
        out.update(evidence=list(self.evidence), features=self.features.to_dict())
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DesktopVerdict:
        return cls(str(d.get("kind")), d.get("confidence", 0.0), _strings(d.get("evidence")),
                   DesktopFeatures.from_dict(d.get("features") or {}), d.get("seen"))


@dataclass(frozen=True)
class BypassCheck:
    """`--active-checks`: None selected although it was not offered (CVE-2006-2369/2450)."""

    status: str  # "vulnerable" | "not-vulnerable" | "not-applicable" | "skipped" | "error"
    cves: tuple[str, ...]
    offered_types: tuple[int, ...] | None = None
    evidence: str | None = None
    handshake: HandshakeRecord | None = None

    def to_dict(self) -> Json:
        return {
            "status": self.status,
            "cves": list(self.cves),
            "offered_types": list(self.offered_types) if self.offered_types is not None else None,
            "evidence": self.evidence,
            "handshake": self.handshake.to_dict() if self.handshake else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BypassCheck:
        offered, h = d.get("offered_types"), d.get("handshake")
        return cls(str(d.get("status")), _strings(d.get("cves")),
                   tuple(offered) if offered is not None else None, d.get("evidence"),
                   HandshakeRecord.from_dict(h) if h else None)


@dataclass(frozen=True)
class PasswordAttempt:
    attempt: int  # 1-based
    outcome: str
    reason: str | None
    elapsed: float

    def to_dict(self) -> Json:
        return {"attempt": self.attempt, "outcome": self.outcome, "reason": self.reason,
                "elapsed": round(self.elapsed, 4)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PasswordAttempt:
        return cls(d["attempt"], str(d.get("outcome")), d.get("reason"), d.get("elapsed", 0.0))


@dataclass(frozen=True)
class PasswordAudit:
    """`--check-passwords`: the lockout-aware weak-password audit."""

    status: str  # "found" | "not-found" | "stopped" | "skipped" | "not-applicable" | "error"
    source: str  # "builtin" | "wordlist"
    candidates: int
    max_attempts: int
    budget: int  # attempts allowed below the lockout threshold
    connections_before: int
    found: bool = False
    password: str | None = None  # masked unless shown
    password_shown: bool = False
    attempts: int = 0
    stop_reason: str | None = None
    security_path: tuple[str, ...] | None = None
    results: tuple[PasswordAttempt, ...] = ()
    server_init: HandshakeRecord | None = None  # the accepted attempt's handshake
    tried_all: bool = False

    def to_dict(self) -> Json:
        return {
            "status": self.status,
            "found": self.found,
            "password": self.password,
            "password_shown": self.password_shown,
            "source": self.source,
            "candidates": self.candidates,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "budget": self.budget,
            "connections_before": self.connections_before,
            "stop_reason": self.stop_reason,
            "security_path": list(self.security_path) if self.security_path is not None
            else None,
            "results": [r.to_dict() for r in self.results],
            "server_init": self.server_init.to_dict() if self.server_init else None,
            "tried_all": self.tried_all,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PasswordAudit:
        init = d.get("server_init")
        return cls(
            status=str(d.get("status")),
            source=str(d.get("source")),
            candidates=d.get("candidates", 0),
            max_attempts=d.get("max_attempts", 0),
            budget=d.get("budget", 0),
            connections_before=d.get("connections_before", 0),
            found=bool(d.get("found")),
            password=d.get("password"),
            password_shown=bool(d.get("password_shown")),
            attempts=d.get("attempts", 0),
            stop_reason=d.get("stop_reason"),
            security_path=_opt_strings(d.get("security_path")),
            results=tuple(PasswordAttempt.from_dict(r) for r in d.get("results") or ()),
            server_init=HandshakeRecord.from_dict(init) if init else None,
            tried_all=bool(d.get("tried_all")),
        )


@dataclass(frozen=True)
class ActiveChecks(PayloadHolder):
    """The opt-in checks that ran on one service (`extra.active`), in the order they ran;
    `error` alone when running them failed, `skipped` alone when they were not run."""

    auth: AuthCheck | None = None
    screenshot: ScreenshotCheck | None = None
    desktop_kind: DesktopVerdict | None = None
    unoffered_none: BypassCheck | None = None
    password_audit: PasswordAudit | None = None
    error: str | None = None
    skipped: str | None = None  # the connection ledger could not take them: why


# --------------------------------------------------------------------------------------------
# The holder


@dataclass(frozen=True)
class Extras(PayloadHolder):
    """`ServiceResult.extra`: every payload a result carries; None: not observed or not asked.
    Frozen and hashable all the way down (tuples, not lists), so results can key a memo."""

    tls: TlsSession | None = None
    honeypot_checks: HoneypotChecks | None = None
    protocol_guess: str | None = None  # open-not-vnc: what the first bytes look like
    suspected_honeypot: SuspectedHoneypot | None = None
    web: WebFrontEnd | None = None
    active: ActiveChecks | None = None
    budget: BudgetNote | None = None
    local: LocalBinding | None = None
