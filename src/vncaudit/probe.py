"""Probe one (host, port): run the sans-IO `rfb` client over one asyncio connection.

Owns: the socket side of a probe — connect, read/write, TLS for the TLS type (18) and VeNCrypt's
no-auth sub-types, ONE hard deadline, a bounded transcript, and the translation of every outcome
(refused, silent, not RFB, broken RFB, RFB) into a `ServiceResult` with a `State`. Exceptions end
here: callers always get a result, never an exception (the zgrab2 rule).

Must not: parse RFB bytes itself (that is `rfb`), grade anything (that is `assess`), or open a
second connection to the same port. Etiquette (DESIGN.md "Probing etiquette"): never
authenticate by default; select None (or Tight NOAUTH, or VeNCrypt TLSNone/X509None) only when
the server offered it; ClientInit is always shared so no connected user is kicked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

from vncaudit import rfb
from vncaudit.exceptions import NotRfbError, RemoteProtocolError
from vncaudit.models import (
    Framebuffer,
    NamedType,
    RfbFacts,
    ServiceResult,
    State,
    Target,
    TightInfo,
    VeNCryptInfo,
)

log = logging.getLogger(__name__)

READ_CHUNK = 65536


@dataclass(frozen=True)
class ProbeOptions:
    """How to probe. `timeout` is the one deadline for the whole probe, connect included."""

    timeout: float = 5.0
    limits: rfb.Limits = field(default_factory=rfb.Limits)
    transcript_limit: int = 4096
    read_server_init: bool = True  # select an offered no-auth type, read SecurityResult+ServerInit
    tls: bool = True  # do the TLS step of type 18 and VeNCrypt TLSNone/X509None
    client_version: tuple[int, int] | None = None  # override the answer (tests, quirk checks)
    # Extra connections to the same port (un-offered None = CVE-2006-2369, an unassigned type,
    # two VNC challenges compared). Off by default: DESIGN.md "Probing etiquette".
    active_checks: bool = False


# First bytes of protocols that speak first and are commonly found on VNC ports or scanned by
# mistake; used only to label `open-not-vnc` evidence, never to decide it.
_PROTOCOL_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"SSH-", "ssh"),
    (b"HTTP/", "http"),
    (b"220", "smtp/ftp"),
    (b"+OK", "pop3"),
    (b"* OK", "imap"),
    (b"\x16\x03", "tls"),
    (b"\x15\x03", "tls-alert"),
    (b"AMQP", "amqp"),
    (b"-ERR", "redis"),
    (b"ISD ", "italc"),
    (b"NUUO", "nuuo"),
    (b"<", "xml/html"),
    (b"{", "json"),
)


def guess_protocol(first_bytes: bytes) -> str:
    """A label for what a non-RFB server said first ('unknown' when nothing matches)."""
    for prefix, name in _PROTOCOL_PREFIXES:
        if first_bytes.startswith(prefix):
            return name
    if first_bytes[:1] == b"\x0a" and b"\x00" in first_bytes[:40]:
        return "mysql"
    return "unknown"


def _tls_context(anonymous: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if anonymous:
        # Anonymous DH exists only up to TLS 1.2 and only at security level 0 (rfb.md §3.2).
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("aNULL:@SECLEVEL=0")
    else:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


class _Session:
    """Mutable state of one probe; turned into an immutable result at the end."""

    def __init__(self, target: Target, options: ProbeOptions) -> None:
        self.target = target
        self.options = options
        self.client = rfb.RfbClient(options.limits, options.client_version)
        self.transcript = bytearray()
        self.received = 0
        self.facts: dict[str, Any] = {}
        self.notes: list[str] = []
        self.banner_done = False
        self.state: State | None = None
        self.error: str | None = None
        self.tls_info: dict[str, Any] = {}

    def record(self, data: bytes) -> None:
        self.received += len(data)
        room = self.options.transcript_limit - len(self.transcript)
        if room > 0:
            self.transcript += data[:room]

    # -- decisions -----------------------------------------------------------------------

    def on_event(self, event: rfb.Event) -> bool:
        """Record an event and take the next step; False means: stop and close."""
        client = self.client
        if isinstance(event, rfb.ServerVersion):
            self.banner_done = True
            self.facts["banner"] = event.raw.decode("latin-1")
            self.facts["server_version"] = event.version
            if event.client_version is None:
                self.notes.append(f"server version {event.version} not answered")
                return False
            self.facts["client_version"] = rfb.format_version(*event.client_version)
            return True
        if isinstance(event, rfb.SecurityTypes):
            unique = tuple(dict.fromkeys(event.types))
            if len(unique) != len(event.types):
                # TigerVNC lists 19 twice when VeNCrypt is enabled explicitly: a quirk worth
                # keeping as a fingerprint fact, not as two entries.
                self.notes.append(
                    "server listed duplicate security types: "
                    + ",".join(str(t) for t in event.types)
                )
            named = tuple(NamedType(t, rfb.security_type_name(t)) for t in unique)
            if event.inside_tls:
                self.facts["tls_inner_types"] = named
            else:
                self.facts["security_types"] = named
                self.facts["security_types_server_chosen"] = event.server_chosen
            return self._choose_type(event)
        if isinstance(event, rfb.VeNCryptSubtypes):
            self.facts["vencrypt"] = VeNCryptInfo(
                f"{event.version[0]}.{event.version[1]}",
                tuple(NamedType(s, rfb.vencrypt_subtype_name(s)) for s in event.subtypes),
            )
            if self.options.tls and self.options.read_server_init:
                for subtype in (257, 260):
                    if subtype in event.subtypes:
                        client.select_vencrypt_subtype(subtype)
                        self.facts["selected_type"] = subtype
                        return True
            return False
        if isinstance(event, rfb.TightCapabilities):
            self.facts["tight"] = TightInfo(event.tunnels, event.auth)
            if not event.auth:
                return True  # zero auth caps: the protocol goes on as None
            if self.options.read_server_init and any(c.code == 1 for c in event.auth):
                client.select_tight_auth(1)
                return True
            return False
        if isinstance(event, rfb.SecurityResult):
            self.facts["security_result"] = "ok" if event.ok else "failed"
            if not event.ok and event.reason:
                self.facts["failure_reason"] = event.reason
            if event.ok and client.state is rfb.State.CLIENT_INIT:
                client.send_client_init(shared=True)
                return True
            return False
        if isinstance(event, rfb.ServerInit):
            self.facts["desktop_name"] = event.name
            pf = event.pixel_format
            self.facts["framebuffer"] = Framebuffer(
                event.width, event.height, pf.depth, pf.bits_per_pixel, pf.big_endian,
                pf.true_colour,
            )
            return False
        if isinstance(event, rfb.Failure):
            self.facts["failure_reason"] = event.reason
            if event.blacklisted:
                self.state = State.BLACKLISTED
            return False
        if isinstance(event, rfb.Unsupported):
            self.notes.append(event.reason)
            return False
        if isinstance(event, rfb.VncAuthChallenge):
            return False  # we never answer a challenge unless a password was given
        if isinstance(event, rfb.ConnectionClosed):
            if not self.banner_done:
                self.state = State.OPEN_NOT_VNC
                self.error = "connection closed before any banner"
            return False
        return False  # StartTls is handled by the I/O loop

    def _choose_type(self, event: rfb.SecurityTypes) -> bool:
        client = self.client
        if event.server_chosen:
            if event.types[0] == 1 and self.options.read_server_init:
                self.facts["selected_type"] = 1
                client.send_client_init(shared=True)
                return True
            return False
        types = event.types
        choice: int | None = None
        if 1 in types and self.options.read_server_init:
            choice = 1
        elif 19 in types and not event.inside_tls:
            choice = 19
        elif 16 in types:
            choice = 16
        elif 18 in types and self.options.tls and not event.inside_tls:
            choice = 18
        if choice is None:
            return False
        client.select_security_type(choice)
        self.facts["selected_type"] = choice
        return True

    # -- outcome -------------------------------------------------------------------------

    def auth_required(self) -> bool | None:
        f = self.facts
        types = [t.id for t in f.get("security_types", ())]
        if not types:
            return None
        if f.get("security_types_server_chosen"):
            return bool(types[0] != 1)
        if 1 in types:
            return False
        ven: VeNCryptInfo | None = f.get("vencrypt")
        tight: TightInfo | None = f.get("tight")
        inner: tuple[NamedType, ...] | None = f.get("tls_inner_types")
        if ven and rfb.VENCRYPT_NO_AUTH_SUBTYPES & {s.id for s in ven.subtypes}:
            return False
        if tight and (not tight.auth or any(c.code == 1 for c in tight.auth)):
            return False
        if inner is not None and any(t.id == 1 for t in inner):
            return False
        unread = (19 in types and ven is None) or (16 in types and tight is None) or (
            18 in types and inner is None
        )
        if unread:
            return None  # a sub-negotiation we could not read might still offer no auth
        return True

    def result(self, elapsed: float) -> ServiceResult:
        facts: RfbFacts | None = None
        if self.banner_done:
            self.facts["notes"] = tuple(self.notes)
            facts = RfbFacts(**self.facts)
            facts = replace(facts, auth_required=self.auth_required())
        state = self.state or (State.VNC if self.banner_done else State.TARPIT)
        extra: dict[str, Any] = {}
        if self.tls_info:
            extra["tls"] = self.tls_info
        return ServiceResult(
            host=self.target.host,
            port=self.target.port,
            state=state,
            rfb=facts,
            transcript_hex=bytes(self.transcript).hex(),
            error=self.error,
            hostname=self.target.hostname,
            elapsed=elapsed,
            extra=extra,
        )


async def probe(target: Target, options: ProbeOptions | None = None) -> ServiceResult:
    """Probe one (host, port) with one connection and one deadline; never raises."""
    options = options or ProbeOptions()
    session = _Session(target, options)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout_at(started + options.timeout):
            try:
                reader, writer = await asyncio.open_connection(target.host, target.port)
            except ConnectionRefusedError:
                session.state = State.CLOSED
                return session.result(loop.time() - started)
            except OSError as exc:
                session.state = State.FILTERED
                session.error = exc.strerror or str(exc)
                return session.result(loop.time() - started)
            await _converse(session, reader, writer)
    except TimeoutError:
        if writer is None:
            session.state = State.FILTERED
            session.error = "no answer to the connection attempt"
        elif not session.banner_done:
            session.state = State.TARPIT
            session.error = (
                f"connected, no complete banner within {options.timeout:g} s "
                f"({session.received} bytes received)"
            )
        else:
            session.error = (
                f"deadline of {options.timeout:g} s reached while "
                f"{session.client.state.value}"
            )
    except NotRfbError as exc:
        session.state = State.OPEN_NOT_VNC
        first = exc.first_bytes
        session.error = f"not RFB: looks like {guess_protocol(first)} ({first[:32]!r})"
    except RemoteProtocolError as exc:
        session.state = State.MALFORMED
        session.error = str(exc)
    except (ConnectionError, OSError) as exc:
        if session.banner_done:
            session.state = State.MALFORMED
            session.error = f"connection broken while {session.client.state.value}: {exc}"
        else:
            session.state = State.OPEN_NOT_VNC
            session.error = f"connection broken before any banner: {exc}"
    finally:
        if writer is not None:
            await _close(writer)
    return session.result(loop.time() - started)


async def _converse(
    session: _Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    client = session.client
    while True:
        # Drain every event the buffered bytes already allow.
        while True:
            event = client.next_event()
            if event is rfb.NEED_DATA:
                break
            assert not isinstance(event, rfb._NeedData)
            if isinstance(event, rfb.StartTls):
                outgoing = client.data_to_send()
                if outgoing:
                    writer.write(outgoing)
                    await writer.drain()
                if not await _start_tls(session, writer, event.anonymous):
                    return
                continue
            go_on = session.on_event(event)
            outgoing = client.data_to_send()
            if outgoing:
                writer.write(outgoing)
                await writer.drain()
            if not go_on:
                client.close()
                return
        # Replies the protocol mandates (VeNCrypt version, NOTUNNEL) may be queued even
        # when the parser then needs more data.
        outgoing = client.data_to_send()
        if outgoing:
            writer.write(outgoing)
            await writer.drain()
        if not client.their_turn:
            return
        data = await reader.read(READ_CHUNK)
        if data:
            session.record(data)
        client.receive_data(data)


async def _start_tls(session: _Session, writer: asyncio.StreamWriter, anonymous: bool) -> bool:
    try:
        await writer.start_tls(_tls_context(anonymous))
    except (ssl.SSLError, OSError) as exc:
        session.notes.append(f"TLS handshake failed: {exc}")
        session.client.close()
        return False
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None:
        cipher = ssl_object.cipher()
        session.tls_info = {
            "version": ssl_object.version(),
            "cipher": cipher[0] if cipher else None,
            "anonymous": anonymous,
            "certificate": bool(ssl_object.getpeercert(binary_form=True)),
        }
    session.client.tls_established()
    return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        # A peer that never reads keeps our send buffer full; do not wait for it.
        with contextlib.suppress(Exception):
            writer.transport.abort()
