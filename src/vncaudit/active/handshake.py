"""One RFB connection of an active check, driven up to ServerInit (or to why it stopped).

Owns: `Handshake` (what one connection achieved; `record()` is its payload), the
`NonePolicy` and `Outcome` vocabularies, the decisions of one handshake (what `pump.Selection`
allows for a policy and a password), lockout recognition, and `connect_and_handshake` (one
connection, one deadline, every failure an outcome).

Must not: parse RFB bytes itself (that is `rfb`), move bytes itself (that is `pump`), send input
events or a non-shared ClientInit, send a password the caller did not give, log a password, or
grade (that is `assess`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from vncaudit import rfb
from vncaudit.active.transport import ByteWriter, Connector, close_writer, tcp_connector
from vncaudit.exceptions import LocalProtocolError, NotRfbError, RemoteProtocolError
from vncaudit.models import Target
from vncaudit.payloads import HandshakeRecord, ScreenSize
from vncaudit.pump import RfbPump, Selection
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


def lockout_text(text: str | None) -> bool:
    low = (text or "").lower()
    return any(t in low for t in rfb.BLACKLIST_REASONS) or "too many" in low


def selection(password: str | None, none_policy: NonePolicy) -> Selection:
    """What a handshake may select for a policy, with or without a password."""
    return Selection(no_auth=none_policy != "never", vnc_auth=password is not None,
                     force_none=none_policy == "force")


async def _next_event(pump: RfbPump) -> rfb.Event:
    event = await pump.next_event()
    if event is None:
        raise LocalProtocolError(f"no event and our turn while {pump.client.state.value}")
    return event


async def _handshake(
    pump: RfbPump, h: Handshake, *, password: str | None, none_policy: NonePolicy
) -> Handshake:
    """Drive one handshake to ServerInit (or to the reason it cannot get there).

    Fills `h` as it goes, so the facts read before an exception (a close, a timeout) survive.
    """
    client, choose = pump.client, selection(password, none_policy)
    while True:
        event = await _next_event(pump)
        if isinstance(event, rfb.ServerVersion):
            h.server_version = event.version
            if event.client_version is None:
                h.outcome, h.reason = "unsupported", f"server version {event.version}"
                return h
        elif isinstance(event, rfb.SecurityTypes):
            if not event.inside_tls:
                h.offered_types = tuple(dict.fromkeys(event.types))
            if event.server_chosen:
                if not _server_chosen(client, h, event.types[0], password, none_policy):
                    return h
                continue
            choice = choose.security_type(event.types, event.inside_tls)
            if choice is None:
                h.outcome = "auth-required" if password is None else "unsupported"
                h.reason = "no security type this check can complete"
                return h
            h.security_path.append(rfb.security_type_name(choice))
            client.select_security_type(choice)
        elif isinstance(event, rfb.VeNCryptSubtypes):
            pick = choose.vencrypt_subtype(event.subtypes)
            if pick is None:
                h.outcome = "auth-required" if password is None else "unsupported"
                return h
            h.security_path.append(rfb.vencrypt_subtype_name(pick))
            client.select_vencrypt_subtype(pick)
        elif isinstance(event, rfb.TightCapabilities):
            if not event.auth:
                continue  # zero auth capabilities: the protocol goes on as None
            code = choose.tight_auth([c.code for c in event.auth])
            if code is None:
                h.outcome = "auth-required" if password is None else "unsupported"
                return h
            h.security_path.append("None" if code == 1 else "VNC Authentication")
            client.select_tight_auth(code)
        elif isinstance(event, rfb.StartTls):
            try:
                await pump.start_tls(event.anonymous)
            except (ssl.SSLError, OSError, NotImplementedError) as exc:
                h.outcome, h.reason = "unsupported", f"TLS handshake failed: {exc}"
                return h
        elif isinstance(event, rfb.VncAuthChallenge):
            if password is None:
                h.outcome = "auth-required"
                return h
            client.send_vnc_auth_response(vnc_auth_response(password, event.challenge))
        elif not _settled(client, h, event):
            return h


def _server_chosen(
    client: rfb.RfbClient, h: Handshake, chosen: int, password: str | None,
    none_policy: NonePolicy,
) -> bool:
    """RFB 3.3: the server picked the type; False (with the outcome set) when we cannot go on."""
    h.security_path.append(rfb.security_type_name(chosen))
    if chosen == 1 and none_policy != "never":
        client.send_client_init(shared=True)
        return True
    if chosen == 2 and password is not None:
        return True  # the challenge follows
    h.outcome = "auth-required" if chosen == 2 else "unsupported"
    return False


def _settled(client: rfb.RfbClient, h: Handshake, event: rfb.Event) -> bool:
    """The events that end a handshake (or a SecurityResult ok); False once it has ended."""
    if isinstance(event, rfb.SecurityResult):
        h.security_result = "ok" if event.ok else "failed"
        h.reason = event.reason
        if event.ok:
            client.send_client_init(shared=True)
            return True
        if event.status == 2 or lockout_text(event.reason):
            h.outcome = "locked-out"
        else:
            h.outcome = "auth-failed"
    elif isinstance(event, rfb.ServerInit):
        h.server_init = event
        h.outcome = "ok"
    elif isinstance(event, rfb.Failure):
        h.reason = event.reason
        h.outcome = "locked-out" if event.blacklisted else "refused"
    elif isinstance(event, rfb.Unsupported):
        h.outcome, h.reason = "unsupported", event.reason
    else:  # ConnectionClosed
        h.outcome, h.reason = "refused", "server closed the connection"
    return False


async def connect_and_handshake(
    target: Target,
    *,
    password: str | None,
    none_policy: NonePolicy,
    timeout: float,
    connector: Connector | None,
    limits: rfb.Limits | None = None,
    after: Callable[[RfbPump, Handshake], Awaitable[None]] | None = None,
) -> Handshake:
    """One connection, one deadline; `after` runs on an "ok" handshake (screenshot)."""
    started = time.monotonic()
    h = Handshake()
    writer: ByteWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await (connector or tcp_connector)(target)
            pump = RfbPump(reader, writer, rfb.RfbClient(limits or rfb.Limits()))
            await _handshake(pump, h, password=password, none_policy=none_policy)
            if h.outcome == "ok" and after is not None:
                await after(pump, h)
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
            await close_writer(writer)
    h.elapsed = time.monotonic() - started
    return h
