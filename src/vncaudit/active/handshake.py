"""One RFB connection of an active check, driven up to ServerInit (or to why it stopped).

Owns: `Handshake` (what one connection achieved; `record()` is its payload), the
`NonePolicy` and `Outcome` vocabularies, `_Connection` (moves bytes between a stream and an
`rfb.RfbClient`), the choice of security type and sub-type per policy and password, TLS for
VeNCrypt/anonymous TLS, lockout recognition, and `_connect_and_handshake` (one connection, one
deadline, every failure an outcome).

Must not: parse RFB bytes itself (that is `rfb`), send input events or a non-shared ClientInit,
send a password the caller did not give, log a password, or grade (that is `assess`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vncaudit import rfb
from vncaudit.active.transport import (
    READ_CHUNK,
    ByteReader,
    ByteWriter,
    Connector,
    _close,
    tcp_connector,
)
from vncaudit.exceptions import LocalProtocolError, NotRfbError, RemoteProtocolError
from vncaudit.models import Target
from vncaudit.payloads import HandshakeRecord, ScreenSize
from vncaudit.probe import tls_context
from vncaudit.vncauth import vnc_auth_response

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

    def record(self) -> HandshakeRecord:
        si = self.server_init
        return HandshakeRecord(
            outcome=self.outcome,
            server_version=self.server_version,
            offered_types=self.offered_types,
            security_path=tuple(self.security_path),
            security_result=self.security_result,
            reason=self.reason,
            desktop_name=si.name if si else None,
            framebuffer=ScreenSize(si.width, si.height, si.pixel_format.depth) if si else None,
            elapsed=round(self.elapsed, 4),
        )


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
