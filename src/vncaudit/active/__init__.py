"""Active checks: proof on request (screenshot, password audit, authentication, auth bypass).

Owns: the opt-in checks of issue 8, each of which opens its OWN connection and only when the
caller (the engine, on an explicit CLI flag) asks for it:
  * `screenshot()`       — one full framebuffer update as PNG (`--screenshot`; with `--password`
                           on protected servers);
  * `authenticate()`     — VNC Authentication with a known password, to read ServerInit
                           (`--password`);
  * `check_passwords()`  — a lockout-aware weak-password audit (`--check-passwords`);
  * `check_unoffered_none()` — CVE-2006-2369/CVE-2006-2450: select None although it was not
                           offered (`--active-checks`);
  * `desktop_kind()`     — login screen or live desktop, from a screenshot (`desktop`).
Results are plain dicts in the shape documented for `ServiceResult.extra["active"]`.

Must not: run anything by default, send input events (KeyEvent/PointerEvent) or a non-shared
ClientInit (a connected user must never be kicked), parse RFB bytes itself (that is `rfb` and
`framebuffer`), or grade (that is `assess`). Passwords are masked in every result unless
`show_passwords` is set, and never logged.

Lockout etiquette (DESIGN.md "Probing etiquette", rfb.md §6.2): TigerVNC and RealVNC 4 count
EVERY connection from an address that ends before a successful authentication and start a
block at the 5th; a successful authentication clears the count. Each password attempt is one
connection, so the audit never makes more than `LOCKOUT_CONNECTIONS - 1` connections per server
per scan including the ones the scan already made (the probe's), never more than
`max_attempts` (3) attempts, and stops at the first sign of throttling.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from vncaudit import framebuffer as fb
from vncaudit import rfb
from vncaudit.desktop import DesktopKind, classify_desktop
from vncaudit.exceptions import LocalProtocolError, NotRfbError, RemoteProtocolError
from vncaudit.models import RfbFacts, ServiceResult, State, Target
from vncaudit.probe import tls_context
from vncaudit.vncauth import password_bytes, vnc_auth_response

log = logging.getLogger(__name__)

READ_CHUNK: Final = 65536
DEFAULT_MAX_ATTEMPTS: Final = 3
# The strictest known lockout (TigerVNC/RealVNC 4 Blacklist.cxx, BlacklistThreshold=5): the 5th
# connection from one address starts a block. We stay one below it.
LOCKOUT_CONNECTIONS: Final = 5
MASK: Final = "********"  # fixed width: a masked password does not reveal its length

CVE_UNOFFERED_NONE: Final = ("CVE-2006-2369", "CVE-2006-2450")


# --------------------------------------------------------------------------------------------
# Transport: asyncio streams, or anything shaped like them (websocket.WebSocketStream)


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def start_tls(self, sslcontext: ssl.SSLContext) -> None: ...


Connector = Callable[[Target], Awaitable[tuple[ByteReader, ByteWriter]]]


async def tcp_connector(target: Target) -> tuple[ByteReader, ByteWriter]:
    """The default transport: a plain TCP connection to (host, port)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    return reader, writer


async def _close(writer: ByteWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        transport = getattr(writer, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()


# --------------------------------------------------------------------------------------------
# One RFB connection up to ServerInit


NonePolicy = Literal["if-offered", "never", "force"]
Outcome = Literal[
    "ok",  # authenticated (or no auth) and ServerInit read
    "auth-required",  # the server wants credentials we do not have / will not send
    "auth-failed",  # SecurityResult failed
    "locked-out",  # "Too many security failures" and friends
    "refused",  # the server refused with another reason, or closed on our choice
    "unsupported",  # only security types we cannot complete
    "not-vnc",
    "timeout",
    "network-error",
    "protocol-error",
]


@dataclass
class Handshake:
    """What one connection achieved; `server_init` is set when outcome is "ok"."""

    outcome: Outcome = "protocol-error"
    server_version: str | None = None
    offered_types: tuple[int, ...] = ()
    security_path: list[str] = field(default_factory=list)  # e.g. ["VeNCrypt", "TLSVnc"]
    security_result: str | None = None  # "ok" | "failed" | None (not read)
    reason: str | None = None
    server_init: rfb.ServerInit | None = None
    elapsed: float = 0.0

    @property
    def locked_out(self) -> bool:
        return self.outcome == "locked-out"

    def to_dict(self) -> dict[str, Any]:
        si = self.server_init
        return {
            "outcome": self.outcome,
            "server_version": self.server_version,
            "offered_types": list(self.offered_types),
            "security_path": list(self.security_path),
            "security_result": self.security_result,
            "reason": self.reason,
            "desktop_name": si.name if si else None,
            "framebuffer": (
                {"width": si.width, "height": si.height, "depth": si.pixel_format.depth}
                if si
                else None
            ),
            "elapsed": round(self.elapsed, 4),
        }


def _lockout_text(text: str | None) -> bool:
    low = (text or "").lower()
    return any(t in low for t in rfb.BLACKLIST_REASONS) or "too many" in low


class _Connection:
    """Moves bytes between a stream and an `RfbClient`; decisions are `_handshake`'s."""

    def __init__(self, reader: ByteReader, writer: ByteWriter, limits: rfb.Limits) -> None:
        self.reader = reader
        self.writer = writer
        self.client = rfb.RfbClient(limits)

    async def flush(self) -> None:
        out = self.client.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> rfb.Event:
        while True:
            event = self.client.next_event()
            await self.flush()
            if not isinstance(event, rfb._NeedData):
                return event
            if not self.client.their_turn:
                raise LocalProtocolError(f"no event and our turn while {self.client.state.value}")
            self.client.receive_data(await self.reader.read(READ_CHUNK))

    def leftover(self) -> bytes:
        # Bytes that arrived in the same read as ServerInit (a Bell, a cut text ...) belong to
        # the framebuffer phase. RfbClient has no public accessor for them yet.
        return bytes(self.client._buf)

    async def start_tls(self, anonymous: bool) -> None:
        await self.writer.start_tls(tls_context(anonymous))
        self.client.tls_established()


def _choose_type(
    types: Sequence[int], password: str | None, none_policy: NonePolicy, inside_tls: bool
) -> int | None:
    if none_policy == "force":
        return 1
    if 1 in types and none_policy == "if-offered":
        return 1
    if 2 in types and password is not None:
        return 2
    if 16 in types:
        return 16  # Tight: NOAUTH or VNCAUTH inside
    if 19 in types and not inside_tls:
        return 19  # VeNCrypt: TLSNone/X509None, or TLSVnc/X509Vnc with a password
    if 18 in types and not inside_tls:
        return 18
    return None


async def _handshake(
    conn: _Connection, h: Handshake, *, password: str | None, none_policy: NonePolicy
) -> Handshake:
    """Drive one handshake to ServerInit (or to the reason it cannot get there).

    Fills `h` as it goes, so the facts read before an exception (a close, a timeout) survive.
    """
    client = conn.client
    while True:
        event = await conn.next_event()
        if isinstance(event, rfb.ServerVersion):
            h.server_version = event.version
            if event.client_version is None:
                h.outcome, h.reason = "unsupported", f"server version {event.version}"
                return h
        elif isinstance(event, rfb.SecurityTypes):
            if not event.inside_tls:
                h.offered_types = tuple(dict.fromkeys(event.types))
            if event.server_chosen:
                chosen = event.types[0]
                h.security_path.append(rfb.security_type_name(chosen))
                if chosen == 1 and none_policy != "never":
                    client.send_client_init(shared=True)
                elif chosen == 2 and password is not None:
                    pass  # the challenge follows
                else:
                    h.outcome = "auth-required" if chosen == 2 else "unsupported"
                    return h
                continue
            choice = _choose_type(event.types, password, none_policy, event.inside_tls)
            if choice is None:
                h.outcome = "auth-required" if password is None else "unsupported"
                h.reason = "no security type this check can complete"
                return h
            h.security_path.append(rfb.security_type_name(choice))
            client.select_security_type(choice)
        elif isinstance(event, rfb.VeNCryptSubtypes):
            subs = event.subtypes
            pick: int | None = next(
                (s for s in (257, 260) if s in subs and none_policy != "never"), None
            )
            if pick is None and password is not None:
                pick = next((s for s in (258, 261) if s in subs), None)
            if pick is None:
                h.outcome = "auth-required" if password is None else "unsupported"
                return h
            h.security_path.append(rfb.vencrypt_subtype_name(pick))
            client.select_vencrypt_subtype(pick)
        elif isinstance(event, rfb.TightCapabilities):
            codes = [c.code for c in event.auth]
            if not codes:
                continue  # zero auth capabilities: the protocol goes on as None
            if 1 in codes and none_policy != "never":
                h.security_path.append("None")
                client.select_tight_auth(1)
            elif 2 in codes and password is not None:
                h.security_path.append("VNC Authentication")
                client.select_tight_auth(2)
            else:
                h.outcome = "auth-required" if password is None else "unsupported"
                return h
        elif isinstance(event, rfb.StartTls):
            try:
                await conn.start_tls(event.anonymous)
            except (ssl.SSLError, OSError, NotImplementedError) as exc:
                h.outcome, h.reason = "unsupported", f"TLS handshake failed: {exc}"
                return h
        elif isinstance(event, rfb.VncAuthChallenge):
            if password is None:
                h.outcome = "auth-required"
                return h
            client.send_vnc_auth_response(vnc_auth_response(password, event.challenge))
        elif isinstance(event, rfb.SecurityResult):
            h.security_result = "ok" if event.ok else "failed"
            h.reason = event.reason
            if event.ok:
                client.send_client_init(shared=True)
                continue
            if event.status == 2 or _lockout_text(event.reason):
                h.outcome = "locked-out"
            else:
                h.outcome = "auth-failed"
            return h
        elif isinstance(event, rfb.ServerInit):
            h.server_init = event
            h.outcome = "ok"
            return h
        elif isinstance(event, rfb.Failure):
            h.reason = event.reason
            h.outcome = "locked-out" if event.blacklisted else "refused"
            return h
        elif isinstance(event, rfb.Unsupported):
            h.outcome, h.reason = "unsupported", event.reason
            return h
        else:  # ConnectionClosed
            h.outcome, h.reason = "refused", "server closed the connection"
            return h


async def _connect_and_handshake(
    target: Target,
    *,
    password: str | None,
    none_policy: NonePolicy,
    timeout: float,
    connector: Connector | None,
    limits: rfb.Limits | None = None,
    after: Callable[[_Connection, Handshake], Awaitable[None]] | None = None,
) -> Handshake:
    """One connection, one deadline; `after` runs on an "ok" handshake (screenshot)."""
    started = time.monotonic()
    h = Handshake()
    writer: ByteWriter | None = None
    conn: _Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await (connector or tcp_connector)(target)
            conn = _Connection(reader, writer, limits or rfb.Limits())
            await _handshake(conn, h, password=password, none_policy=none_policy)
            if h.outcome == "ok" and after is not None:
                await after(conn, h)
    except TimeoutError:
        h.outcome, h.reason = "timeout", f"no result within {timeout:g} s"
    except NotRfbError as exc:
        h.outcome, h.reason = "not-vnc", str(exc)
    except RemoteProtocolError as exc:
        text = str(exc)
        # TigerVNC closes without a word when an un-offered type is selected.
        h.outcome = "refused" if "connection closed" in text else "protocol-error"
        h.reason = text
    except (ConnectionError, OSError) as exc:
        h.outcome, h.reason = "network-error", str(exc) or type(exc).__name__
    finally:
        if writer is not None:
            await _close(writer)
    h.elapsed = time.monotonic() - started
    return h


# --------------------------------------------------------------------------------------------
# Password helpers


def mask_password(password: str, show: bool) -> str:
    return password if show else MASK


def builtin_passwords() -> list[str]:
    """The built-in list of common VNC passwords (data/passwords.txt), most likely first."""
    text = resources.files("vncaudit").joinpath("data/passwords.txt").read_text("utf-8")
    return read_wordlist(text.splitlines())


def read_wordlist(lines: Iterable[str]) -> list[str]:
    """Candidates in order; '#' comments and blank lines dropped; duplicates AS THE SERVER SEES
    THEM (only the first 8 bytes count) removed, so no attempt is wasted on an equivalent."""
    out: list[str] = []
    seen: set[bytes] = set()
    for line in lines:
        word = line.rstrip("\r\n")
        if not word or word.startswith("#"):
            continue
        key = password_bytes(word)
        if key in seen:
            continue
        seen.add(key)
        out.append(word)
    return out


def load_wordlist(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return read_wordlist(fh)


# --------------------------------------------------------------------------------------------
# authenticate / check_passwords


async def authenticate(
    target: Target,
    password: str,
    *,
    timeout: float = 10.0,
    connector: Connector | None = None,
    show_passwords: bool = False,
) -> dict[str, Any]:
    """Authenticate with a known password (`--password`) and read ServerInit.

    None is used instead when the server offers it (no secret is sent where none is needed).
    Returns `Handshake.to_dict()` plus "password" (masked unless `show_passwords`).
    """
    h = await _connect_and_handshake(
        target, password=password, none_policy="if-offered", timeout=timeout, connector=connector
    )
    out = h.to_dict()
    out["password"] = mask_password(password, show_passwords)
    out["password_shown"] = show_passwords
    return out


def attempt_budget(max_attempts: int, connections_used: int) -> int:
    """Password attempts allowed: never reach the 5th connection, never more than asked."""
    return max(0, min(max_attempts, LOCKOUT_CONNECTIONS - 1 - connections_used))


def _vncauth_reachable(facts: RfbFacts | None) -> tuple[bool, str | None]:
    """Whether the facts show a way to VNC Authentication; (True, None) when unknown."""
    if facts is None or not facts.security_types:
        return True, None
    types = {t.id for t in facts.security_types}
    if facts.auth_required is False:
        return False, "no authentication required (None is offered)"
    if 2 in types:
        return True, None
    if facts.vencrypt is not None and {s.id for s in facts.vencrypt.subtypes} & {2, 258, 261}:
        return True, None
    if facts.tight is not None and any(c.code == 2 for c in facts.tight.auth):
        return True, None
    if (16 in types and facts.tight is None) or (19 in types and facts.vencrypt is None):
        return True, None  # a sub-list the probe did not read might hold it
    return False, "VNC Authentication is not offered"


async def check_passwords(
    target: Target,
    passwords: Sequence[str],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connections_used: int = 1,
    facts: RfbFacts | None = None,
    state: State | None = None,
    timeout: float = 10.0,
    connector: Connector | None = None,
    show_passwords: bool = False,
    source: str = "builtin",
) -> dict[str, Any]:
    """Weak-password audit over VNC Authentication, lockout-aware (`--check-passwords`).

    `connections_used` is how many connections this scan already made to the server (the probe:
    1); `facts`/`state` are the probe's, used to skip servers that need no password, cannot do
    VNC Authentication or are already refusing us. One connection per attempt; stops at the
    first success, at the first lockout sign, and at any answer other than a plain failure
    (the server's remaining budget is then unknown).
    """
    candidates = read_wordlist(passwords)
    budget = attempt_budget(max_attempts, connections_used)
    out: dict[str, Any] = {
        "status": "not-found",
        "found": False,
        "password": None,
        "password_shown": show_passwords,
        "source": source,
        "candidates": len(candidates),
        "attempts": 0,
        "max_attempts": max_attempts,
        "budget": budget,
        "connections_before": connections_used,
        "stop_reason": None,
        "security_path": None,
        "results": [],
        "server_init": None,
        "tried_all": False,
    }
    reachable, why = _vncauth_reachable(facts)
    if state is State.BLACKLISTED or (facts and _lockout_text(facts.failure_reason)):
        out.update(status="skipped", stop_reason="the server is already refusing this address")
        return out
    if not reachable:
        out.update(status="not-applicable", stop_reason=why)
        return out
    if budget == 0:
        out.update(
            status="skipped",
            stop_reason=(
                f"no attempt left below the lockout threshold ({connections_used} connections "
                f"already made; a block starts at the {LOCKOUT_CONNECTIONS}th)"
            ),
        )
        return out
    for index, candidate in enumerate(candidates[:budget]):
        h = await _connect_and_handshake(
            target, password=candidate, none_policy="never", timeout=timeout, connector=connector
        )
        out["attempts"] = index + 1
        out["security_path"] = h.security_path or out["security_path"]
        out["results"].append(
            {
                "attempt": index + 1,
                "outcome": h.outcome,
                "reason": h.reason,
                "elapsed": round(h.elapsed, 4),
            }
        )
        if h.outcome == "ok":
            log.info(
                "password audit: %s:%d accepted attempt %d", target.host, target.port, index + 1
            )
            out.update(
                status="found",
                found=True,
                password=mask_password(candidate, show_passwords),
                server_init=h.to_dict(),
                stop_reason="password accepted",
            )
            return out
        if h.outcome == "locked-out":
            out.update(status="stopped", stop_reason=f"lockout reported: {h.reason}")
            return out
        if h.outcome != "auth-failed":
            # Anything but a plain failure: the server's remaining budget is unknown; stop.
            status = {"auth-required": "not-applicable", "unsupported": "not-applicable"}
            out.update(
                status=status.get(h.outcome, "error" if h.outcome == "not-vnc" else "stopped"),
                stop_reason=(
                    f"attempt {index + 1} ended with {h.outcome}"
                    + (f" ({h.reason})" if h.reason else "")
                    + ": the server's remaining budget is unknown"
                ),
            )
            return out
    if len(candidates) > budget:
        out["stop_reason"] = (
            f"attempt budget of {budget} reached ({len(candidates) - budget} candidates untried)"
        )
    else:
        out["stop_reason"] = "every candidate tried"
    out["tried_all"] = len(candidates) <= budget
    return out


# --------------------------------------------------------------------------------------------
# CVE-2006-2369 / CVE-2006-2450: None accepted although not offered


async def check_unoffered_none(
    target: Target,
    *,
    facts: RfbFacts | None = None,
    timeout: float = 10.0,
    connector: Connector | None = None,
) -> dict[str, Any]:
    """Select security type None although the server did not offer it (`--active-checks`).

    RealVNC 4.1.0-4.1.1 (CVE-2006-2369) and old LibVNCServer (CVE-2006-2450) accept it and hand
    out a full session. A sound server closes or fails the SecurityResult. Only meaningful
    for RFB 3.7+ (3.3 servers choose the type themselves) and when 1 is not in the list.
    """
    out: dict[str, Any] = {
        "status": "not-applicable",
        "cves": list(CVE_UNOFFERED_NONE),
        "offered_types": [t.id for t in facts.security_types] if facts else None,
        "evidence": None,
        "handshake": None,
    }
    if facts is not None:
        if facts.security_types_server_chosen:
            out["evidence"] = "RFB 3.3: the server chooses the type; nothing to select"
            return out
        if any(t.id == 1 for t in facts.security_types):
            out["evidence"] = "None is offered openly; no bypass to test"
            return out
        if not facts.security_types:
            out["evidence"] = "the probe read no security types"
            return out
    h = await _connect_and_handshake(
        target, password=None, none_policy="force", timeout=timeout, connector=connector
    )
    out["handshake"] = h.to_dict()
    out["offered_types"] = list(h.offered_types)
    if 1 in h.offered_types:
        out["evidence"] = "None is offered openly; no bypass to test"
        return out
    if h.outcome == "ok":
        si = h.server_init
        out["status"] = "vulnerable"
        out["evidence"] = (
            f"offered {list(h.offered_types)}, selected 1 (None): SecurityResult "
            f"{h.security_result or 'not sent (3.7)'}, ServerInit received"
            + (f" (desktop {si.name!r}, {si.width}x{si.height})" if si else "")
        )
    elif h.outcome in ("refused", "auth-failed", "unsupported"):
        out["status"] = "not-vulnerable"
        out["evidence"] = f"offered {list(h.offered_types)}, selected 1 (None): " + (
            f"SecurityResult failed ({h.reason})"
            if h.security_result == "failed"
            else (h.reason or h.outcome)
        )
    else:
        out["status"] = "error" if h.outcome != "locked-out" else "skipped"
        out["evidence"] = f"{h.outcome}: {h.reason}"
    return out


# --------------------------------------------------------------------------------------------
# Screenshot


@dataclass
class Screenshot:
    """A screenshot and its facts; `png` is None when none could be taken."""

    handshake: Handshake
    png: bytes | None = None
    rgb: bytes | None = None  # packed RGB, for `desktop_kind`
    width: int = 0
    height: int = 0
    coverage: float = 0.0
    encodings: dict[str, int] = field(default_factory=dict)
    bytes_received: int = 0
    updates: int = 0
    error: str | None = None

    def to_dict(self, path: str | None = None) -> dict[str, Any]:
        si = self.handshake.server_init
        return {
            "status": "ok" if self.png is not None else "failed",
            "path": path,
            "width": self.width,
            "height": self.height,
            "coverage": round(self.coverage, 4),
            "desktop_name": si.name if si else None,
            "security_path": list(self.handshake.security_path),
            "outcome": self.handshake.outcome,
            "reason": self.error or self.handshake.reason,
            "encodings": dict(self.encodings),
            "bytes_received": self.bytes_received,
            "updates": self.updates,
            "elapsed": round(self.handshake.elapsed, 4),
        }


def encode_png(rgb: bytes, width: int, height: int) -> bytes:
    from PIL import Image  # Pillow is only needed when a screenshot is actually taken

    image = Image.frombytes("RGB", (width, height), rgb)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def screenshot_filename(target: Target) -> str:
    """A file name for a target's screenshot that is safe on every filesystem (IPv6 too)."""
    host = "".join(c if c.isalnum() or c in ".-" else "_" for c in target.host)
    return f"{host}_{target.port}.png"


def save_screenshot(png: bytes, directory: str | Path, target: Target) -> Path:
    path = Path(directory) / screenshot_filename(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


async def screenshot(
    target: Target,
    password: str | None = None,
    *,
    timeout: float = 15.0,
    max_pixels: int = fb.FramebufferLimits.max_pixels,
    max_requests: int = 8,
    settle: float = 0.75,
    connector: Connector | None = None,
) -> Screenshot:
    """One full framebuffer update as PNG (`--screenshot`).

    Only where no authentication is required, or with `password` (VNC Authentication, also
    inside VeNCrypt TLSVnc or Tight). ClientInit is shared; no input event is ever sent. The
    image is taken when every pixel has been painted, or at the deadline with what arrived
    (`coverage` < 1). After the full picture, incremental updates are applied until the server
    has been quiet for `settle` seconds (at most `max_requests` requests in all), because some
    servers first send a stale copy. `max_pixels` caps the framebuffer we accept to decode.
    """
    limits = fb.FramebufferLimits(max_pixels=max_pixels)
    shot = Screenshot(Handshake())

    async def grab(conn: _Connection, h: Handshake) -> None:
        si = h.server_init
        assert si is not None
        parser = fb.FramebufferParser(si.width, si.height, fb.CANONICAL_FORMAT, limits)
        shot.width, shot.height = si.width, si.height
        await conn.send(
            fb.set_pixel_format()
            + fb.set_encodings()
            + fb.framebuffer_update_request(0, 0, si.width, si.height)
        )
        requests = 1
        pending = conn.leftover()
        settling = False  # the full picture is in; now only late changes are awaited
        try:
            while True:
                if pending:
                    parser.receive_data(pending)
                event = parser.next_event()
                pending = b""
                if isinstance(event, rfb._NeedData):
                    if not settling:
                        pending = await conn.reader.read(READ_CHUNK)
                    else:
                        try:
                            async with asyncio.timeout(settle):
                                pending = await conn.reader.read(READ_CHUNK)
                        except TimeoutError:
                            return  # nothing changed within `settle`: the picture is current
                    if not pending:
                        parser.receive_data(b"")
                    continue
                if isinstance(event, fb.DesktopResized):
                    shot.width, shot.height = event.width, event.height
                elif isinstance(event, fb.UpdateComplete):
                    cv = parser.canvas
                    if requests >= max_requests:
                        return
                    if event.coverage < 1.0:
                        # Some servers split a full update; ask for all of it again.
                        await conn.send(fb.framebuffer_update_request(0, 0, cv.width, cv.height))
                    elif settle > 0:
                        # x11vnc stops polling the screen while no viewer is connected and
                        # first sends what it saw last; ask for changes until it is quiet.
                        settling = True
                        await conn.send(
                            fb.framebuffer_update_request(0, 0, cv.width, cv.height, True)
                        )
                    else:
                        return
                    requests += 1
        finally:
            shot.coverage = parser.canvas.coverage
            shot.encodings = dict(parser.encodings_seen)
            shot.bytes_received = parser.bytes_received
            shot.updates = parser.updates
            shot.width, shot.height = parser.canvas.width, parser.canvas.height
            shot.rgb = parser.canvas.to_rgb()

    try:
        shot.handshake = await _connect_and_handshake(
            target,
            password=password,
            none_policy="if-offered",
            timeout=timeout,
            connector=connector,
            after=grab,
        )
    except ValueError as exc:  # a pixel format the parser refuses
        shot.error = str(exc)
    h = shot.handshake
    if shot.rgb is not None and shot.coverage > 0:
        shot.png = encode_png(shot.rgb, shot.width, shot.height)
        if h.outcome != "ok":
            shot.error = f"partial image ({shot.coverage:.0%} painted): {h.outcome}: {h.reason}"
            h.outcome = "ok"
    return shot


def desktop_kind(shot: Screenshot) -> DesktopKind:
    """Login screen or live desktop, from a screenshot plus the desktop name and geometry."""
    si = shot.handshake.server_init
    return classify_desktop(
        shot.rgb or b"", shot.width, shot.height, desktop_name=si.name if si else None
    )


# --------------------------------------------------------------------------------------------
# What the engine calls


@dataclass(frozen=True)
class ActiveOptions:
    """Which active checks to run. Every field defaults to off: nothing active by default."""

    screenshot: bool = False
    screenshot_dir: Path | None = None  # where PNGs go (next to the report); None: not saved
    max_pixels: int = fb.FramebufferLimits.max_pixels
    password: str | None = None  # --password
    check_passwords: bool = False
    wordlist: Sequence[str] | None = None  # None: the built-in list
    wordlist_source: str = "builtin"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    show_passwords: bool = False
    active_checks: bool = False  # --active-checks: CVE-2006-2369 un-offered None
    timeout: float = 15.0

    @property
    def enabled(self) -> bool:
        return self.screenshot or self.check_passwords or self.active_checks or bool(self.password)


async def run_active(
    result: ServiceResult, options: ActiveOptions, connector: Connector | None = None
) -> dict[str, Any]:
    """Run the requested checks against one probed service; returns `extra["active"]`.

    Order keeps the lockout count low: checks that authenticate successfully (which clear
    TigerVNC's marks) go first, the CVE check and the password audit last.
    """
    active: dict[str, Any] = {}
    if not options.enabled or result.state is not State.VNC or result.rfb is None:
        return active
    target = Target(result.host, result.port, result.hostname)
    facts = result.rfb
    used = 1  # the probe's connection
    password = options.password
    if password is not None:
        active["auth"] = await authenticate(
            target,
            password,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
        )
        used = 0 if active["auth"]["outcome"] == "ok" else used + 1
    if options.screenshot:
        if facts.auth_required and password is None:
            active["screenshot"] = {
                "status": "skipped",
                "reason": "authentication required; give --password",
            }
        else:
            shot = await screenshot(
                target,
                password,
                timeout=options.timeout,
                max_pixels=options.max_pixels,
                connector=connector,
            )
            # Any completed authentication (None included) clears TigerVNC's marks.
            used = 0 if shot.handshake.outcome == "ok" else used + 1
            path: str | None = None
            if shot.png is not None and options.screenshot_dir is not None:
                path = str(save_screenshot(shot.png, options.screenshot_dir, target))
            active["screenshot"] = shot.to_dict(path)
            if shot.png is not None:
                active["desktop_kind"] = desktop_kind(shot).to_dict()
    if options.active_checks:
        active["unoffered_none"] = await check_unoffered_none(
            target, facts=facts, timeout=options.timeout, connector=connector
        )
        probe_h = active["unoffered_none"]["handshake"]
        if probe_h is not None:
            used = 0 if probe_h["outcome"] == "ok" else used + 1
    if options.check_passwords:
        words = options.wordlist if options.wordlist is not None else builtin_passwords()
        active["password_audit"] = await check_passwords(
            target,
            words,
            max_attempts=options.max_attempts,
            connections_used=used,
            facts=facts,
            state=result.state,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
            source=options.wordlist_source,
        )
    return active
