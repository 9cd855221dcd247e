"""Probe one (host, port): what the server says on ONE connection, as a `ServiceResult`.

Owns: the probe's `Session` (what to select and when to stop, the facts it records, a bounded
transcript, the one-connection honeypot signals) and `converse`, which runs it over a stream
through `pump.RfbPump` (TCP here, a WebSocket in `websocket`); the connect, ONE hard deadline,
and the translation of every outcome (refused, silent, not RFB, broken RFB, RFB) into a
`ServiceResult` with a `State`. Exceptions end here: callers always get a result, never an
exception (the zgrab2 rule).

Must not: parse RFB bytes itself (that is `rfb`), grade anything (that is `assess`), or open a
second connection to the same port (checks that need more are `active`'s, on request).
Etiquette (docs/design.md): never authenticate by default; select None (or Tight NOAUTH, or
VeNCrypt TLSNone/X509None) only when the server offered it; ClientInit is always shared so no
connected user is kicked; after a ServerInit that no SecurityResult vouched for, one
FramebufferUpdateRequest for one pixel (whether the session is live or held for a person's
Accept), never an input event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
from vncaudit.payloads import Extras, SuspectedHoneypot, TlsSession
from vncaudit.probe_options import ProbeOptions as ProbeOptions
from vncaudit.pump import ByteReader, ByteWriter, RfbPump, close_writer
from vncaudit.pump import tls_context as tls_context

log = logging.getLogger(__name__)


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


# The most distinct types a real product lists (macOS: 6, RealVNC 5: 5, TurboVNC: 3;
# docs/rfb.md §6.2).
_MAX_REAL_TYPES = 12
_MAX_REAL_SUBTYPES = 16  # the registry has 12 VeNCrypt sub-types, plus legacy 1/2 in the list
# Types that only one product line uses (docs/rfb.md §2, §6.2); shared ones (1, 2, 5, 6, 129, 130)
# are left out. Real servers mix at most two lines (TurboVNC: VeNCrypt + Tight).
_FAMILY: dict[int, str] = {
    **{t: "Apple" for t in range(30, 37)},
    **{t: "UltraVNC" for t in (17, *range(104, 119), 0xFFFFFFFA)},
    **{t: "RealVNC" for t in (*range(3, 16), *range(128, 256)) if t not in (5, 6, 129, 130)},
    16: "Tight", 18: "TLS (Vino)", 19: "VeNCrypt", 20: "SASL (QEMU)",
}
_UNTERMINATED_BANNER = re.compile(rb"RFB \d{3}\.\d{3}")


def _unregistered(numbers: set[int], name: Any) -> list[int]:
    return sorted(n for n in numbers if str(name(n)).startswith("Unknown"))


def honeypot_signals(
    security_types: Sequence[int], vencrypt_subtypes: Sequence[int] | None = None
) -> list[str]:
    """Reasons to suspect a honeypot from ONE connection's lists (raw, as sent); [] if none.

    Real products send short, vendor-consistent lists (docs/rfb.md §6.2) and repeat only 19 once
    (TigerVNC). Emulators that offer "everything" give themselves away by what no product sends.
    """
    reasons: list[str] = []
    counts = Counter(security_types)
    distinct = set(counts)
    repeated = sorted(t for t, n in counts.items() if n > 1 and not (t == 19 and n == 2))
    if repeated:
        reasons.append(f"security types listed more than once: {repeated}")
    if len(distinct) > _MAX_REAL_TYPES:
        reasons.append(f"{len(distinct)} security types offered (real servers offer at most 8)")
    run = 0
    while run + 1 in distinct:
        run += 1
    if run >= 5:
        reasons.append(f"every security type from 1 to {run} offered")
    families = sorted({_FAMILY[t] for t in distinct if t in _FAMILY})
    if len(families) >= 3:
        reasons.append(f"types of products never seen together: {', '.join(families)}")
    unknown = _unregistered(distinct, rfb.security_type_name)
    if len(unknown) >= 3:
        reasons.append(f"{len(unknown)} unassigned security type numbers offered")
    if vencrypt_subtypes:
        sub_counts = Counter(vencrypt_subtypes)
        sub_repeated = sorted(t for t, n in sub_counts.items() if n > 1)
        if sub_repeated:
            reasons.append(f"VeNCrypt sub-types listed more than once: {sub_repeated}")
        if len(sub_counts) > _MAX_REAL_SUBTYPES:
            reasons.append(f"{len(sub_counts)} VeNCrypt sub-types offered (the registry has 12)")
        sub_unknown = _unregistered(set(sub_counts), rfb.vencrypt_subtype_name)
        if len(sub_unknown) >= 3:
            reasons.append(f"{len(sub_unknown)} unassigned VeNCrypt sub-type numbers offered")
    return reasons


class Session:
    """Mutable state of one probe: its decisions, and the facts for the immutable result."""

    def __init__(self, target: Target, options: ProbeOptions) -> None:
        self.target = target
        self.options = options
        self.selection = options.selection
        self.client = rfb.RfbClient(options.limits, options.client_version)
        self.transcript = bytearray()
        self.received = 0
        self.facts: dict[str, Any] = {}
        self.notes: list[str] = []
        self.banner_done = False
        self.state: State | None = None
        self.error: str | None = None
        self.tls_info: TlsSession | None = None
        self.raw_types: tuple[int, ...] = ()  # the main list as sent (duplicates kept)
        self.raw_subtypes: tuple[int, ...] | None = None
        self.protocol_guess: str | None = None  # open-not-vnc: what the first bytes look like
        self._update_asked: float | None = None  # monotonic time of the update request

    def record(self, data: bytes) -> None:
        self.received += len(data)
        room = self.options.transcript_limit - len(self.transcript)
        if room > 0:
            self.transcript += data[:room]

    # -- decisions: one method per event; each returns False to stop and close -----------

    def on_event(self, event: rfb.Event) -> bool:
        """Record an event and take the next step; False means: stop and close."""
        handler = _ON_EVENT.get(type(event))
        return handler(self, event) if handler is not None else False

    def _on_version(self, event: rfb.ServerVersion) -> bool:
        self.banner_done = True
        self.facts["banner"] = event.raw.decode("latin-1")
        self.facts["server_version"] = event.version
        if event.client_version is None:
            self.notes.append(f"server version {event.version} not answered")
            return False
        self.facts["client_version"] = rfb.format_version(*event.client_version)
        return True

    def _on_types(self, event: rfb.SecurityTypes) -> bool:
        unique = tuple(dict.fromkeys(event.types))
        if len(unique) != len(event.types):
            # TigerVNC lists 19 twice when VeNCrypt is enabled explicitly: a quirk worth
            # keeping as a fingerprint fact, not as two entries.
            self.notes.append(
                "server listed duplicate security types: " + ",".join(str(t) for t in event.types)
            )
        named = tuple(NamedType(t, rfb.security_type_name(t)) for t in unique)
        if event.inside_tls:
            self.facts["tls_inner_types"] = named
        else:
            self.raw_types = event.types if not event.server_chosen else ()
            self.facts["security_types"] = named
            self.facts["security_types_server_chosen"] = event.server_chosen
        return self._choose_type(event)

    def _on_vencrypt(self, event: rfb.VeNCryptSubtypes) -> bool:
        self.raw_subtypes = event.subtypes
        self.facts["vencrypt"] = VeNCryptInfo(
            f"{event.version[0]}.{event.version[1]}",
            tuple(NamedType(s, rfb.vencrypt_subtype_name(s)) for s in event.subtypes),
        )
        subtype = self.selection.vencrypt_subtype(event.subtypes)
        if subtype is None:
            return False
        self.client.select_vencrypt_subtype(subtype)
        self.facts["selected_type"] = subtype
        return True

    def _on_tight(self, event: rfb.TightCapabilities) -> bool:
        self.facts["tight"] = TightInfo(event.tunnels, event.auth)
        if not event.auth:
            return True  # zero auth caps: the protocol goes on as None
        code = self.selection.tight_auth([c.code for c in event.auth])
        if code is None:
            return False
        self.client.select_tight_auth(code)
        self._client_init_if_due()
        return True

    def _on_result(self, event: rfb.SecurityResult) -> bool:
        self.facts["security_result"] = "ok" if event.ok else "failed"
        if not event.ok and event.reason:
            self.facts["failure_reason"] = event.reason
        if event.ok and self.client.state is rfb.State.CLIENT_INIT:
            self.client.send_client_init(shared=True)
            return True
        return False

    def _on_server_init(self, event: rfb.ServerInit) -> bool:
        self.facts["desktop_name"] = event.name
        pf = event.pixel_format
        self.facts["framebuffer"] = Framebuffer(
            event.width, event.height, pf.depth, pf.bits_per_pixel, pf.big_endian,
            pf.true_colour, pf.true_colour_flag,
        )
        return False

    def _on_failure(self, event: rfb.Failure) -> bool:
        self.facts["failure_reason"] = event.reason
        if event.blacklisted:
            self.state = State.BLACKLISTED
        return False

    def _on_unsupported(self, event: rfb.Unsupported) -> bool:
        self.notes.append(event.reason)
        return False

    def _on_closed(self, event: rfb.ConnectionClosed) -> bool:
        if not self.banner_done:
            self.state = State.OPEN_NOT_VNC
            self.error = "connection closed before any banner"
        return False

    def _choose_type(self, event: rfb.SecurityTypes) -> bool:
        client = self.client
        if event.server_chosen:
            if event.types[0] == 1 and self.options.read_server_init:
                self.facts["selected_type"] = 1
                client.send_client_init(shared=True)
                return True
            return False
        choice = self.selection.security_type(event.types, event.inside_tls)
        if choice is None:
            return False
        client.select_security_type(choice)
        self.facts["selected_type"] = choice
        self._client_init_if_due()
        return True

    def _client_init_if_due(self) -> None:
        # RFB 3.7 sends no SecurityResult after a no-auth type (rfbproto §7.2.1): ClientInit
        # follows the selection at once, or the server waits and we never see ServerInit.
        if self.client.state is rfb.State.CLIENT_INIT:
            self.client.send_client_init(shared=True)

    # -- after ServerInit: is the session live? ------------------------------------------

    @property
    def update_check_due(self) -> bool:
        """ServerInit came with nothing to vouch for the session (RFB 3.3/3.7 send no
        SecurityResult for None): a server that holds the session for a person's Accept (vino's
        prompt) still sends ServerInit, but answers no update request (docs/rfb.md §1.3)."""
        fb: Framebuffer | None = self.facts.get("framebuffer")
        return (self.options.update_wait > 0 and fb is not None and fb.width > 0
                and fb.height > 0 and "security_result" not in self.facts)

    def update_asked(self) -> None:
        self._update_asked = time.monotonic()

    def update_seen(self, answered: bool, closed: bool = False) -> None:
        """Record the answer to the update request (or its absence)."""
        if self._update_asked is None or "update_answered" in self.facts:
            return
        self.facts["update_answered"] = answered
        self.facts["update_seconds"] = round(time.monotonic() - self._update_asked, 3)
        if closed and not answered:
            self.notes.append("connection closed after ServerInit; the update request was "
                              "not answered")

    def update_pending(self) -> bool:
        """The deadline struck while waiting for the update: that wait was the last step, so
        it is recorded as unanswered rather than as a broken probe."""
        if self._update_asked is None or "update_answered" in self.facts:
            return False
        self.update_seen(False)
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

    def deadline_reached(self) -> None:
        """The state and error when the deadline struck after the connection was made."""
        timeout, client = self.options.timeout, self.client
        if self.update_pending():
            return
        if not self.banner_done:
            if _UNTERMINATED_BANNER.fullmatch(self.transcript):
                # All of "RFB xxx.yyy" but the "\n", then nothing: broken, not slow.
                self.state = State.MALFORMED
                self.error = (f"RFB banner {bytes(self.transcript)!r} not terminated by a "
                              f"newline within {timeout:g} s")
            else:
                self.state = State.TARPIT
                self.error = (f"connected, no complete banner within {timeout:g} s "
                              f"({self.received} bytes received)")
        elif client.buffered:
            # The server announced a message (a reason length, a list count) and stalled in it.
            self.state = State.MALFORMED
            self.error = (f"incomplete message at the deadline of {timeout:g} s: "
                          f"{client.buffered} bytes while {client.state.value}")
        else:
            self.error = f"deadline of {timeout:g} s reached while {client.state.value}"

    def broken(self, exc: RemoteProtocolError | OSError) -> None:
        """The state and error when the server broke RFB or the connection."""
        if isinstance(exc, NotRfbError):
            self.state = State.OPEN_NOT_VNC
            first = exc.first_bytes
            self.protocol_guess = guess_protocol(first)
            self.error = f"not RFB: looks like {self.protocol_guess} ({first[:32]!r})"
        elif isinstance(exc, RemoteProtocolError):
            self.state = State.MALFORMED
            self.error = str(exc)
        elif self.banner_done:
            self.state = State.MALFORMED
            self.error = f"connection broken while {self.client.state.value}: {exc}"
        else:
            self.state = State.OPEN_NOT_VNC
            self.error = f"connection broken before any banner: {exc}"

    def result(self, elapsed: float) -> ServiceResult:
        facts: RfbFacts | None = None
        if self.banner_done:
            self.facts["notes"] = tuple(self.notes)
            facts = RfbFacts(**self.facts, auth_required=self.auth_required())
        state = self.state or (State.VNC if self.banner_done else State.TARPIT)
        reasons = tuple(honeypot_signals(self.raw_types, self.raw_subtypes))
        extra = Extras(
            tls=self.tls_info,
            protocol_guess=self.protocol_guess or None,
            suspected_honeypot=SuspectedHoneypot(reasons) if reasons else None,
        )
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


_ON_EVENT: dict[type, Callable[[Session, Any], bool]] = {
    rfb.ServerVersion: Session._on_version,
    rfb.SecurityTypes: Session._on_types,
    rfb.VeNCryptSubtypes: Session._on_vencrypt,
    rfb.TightCapabilities: Session._on_tight,
    rfb.SecurityResult: Session._on_result,
    rfb.ServerInit: Session._on_server_init,
    rfb.Failure: Session._on_failure,
    rfb.Unsupported: Session._on_unsupported,
    rfb.ConnectionClosed: Session._on_closed,
    # VncAuthChallenge: never answered without a password. StartTls: `converse` does it.
}


async def probe(
    target: Target,
    options: ProbeOptions | None = None,
    *,
    sock: socket.socket | None = None,
    source: str | None = None,
) -> ServiceResult:
    """Probe one (host, port) with one connection and one deadline; never raises.

    `sock`: a connection to the target that is already established (the engine's discovery
    made it); the probe takes it over, and its deadline starts now, not at the connect.
    `source`: connect from this local address (another loopback address, when the connection
    ledger says 127.0.0.1's budget on this server is spent).
    """
    options = options or ProbeOptions()
    session = Session(target, options)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout_at(started + options.timeout):
            try:
                if sock is not None:
                    reader, writer = await asyncio.open_connection(sock=sock)
                else:
                    reader, writer = await asyncio.open_connection(
                        target.host, target.port,
                        local_addr=(source, 0) if source is not None else None)
            except ConnectionRefusedError:
                session.state = State.CLOSED
                return session.result(loop.time() - started)
            except OSError as exc:
                session.state = State.FILTERED
                session.error = exc.strerror or str(exc)
                return session.result(loop.time() - started)
            await converse(session, reader, writer)
    except TimeoutError:
        if writer is None:
            session.state = State.FILTERED
            session.error = "no answer to the connection attempt"
        else:
            session.deadline_reached()
    except (RemoteProtocolError, ConnectionError, OSError) as exc:
        session.broken(exc)
    finally:
        if writer is not None:
            await close_writer(writer)
        elif sock is not None:
            sock.close()  # handed over but never wrapped in a stream: still ours to close
    return session.result(loop.time() - started)


async def converse(session: Session, reader: ByteReader, writer: ByteWriter) -> None:
    """Run the session over one stream until it stops; raises what the stream and `rfb` raise.

    A step inside this one connection (after ServerInit, say) goes here, before the close:
    `pump.send()` writes a client message, `pump.take_trailing()` and `pump.read()` give what
    the server sends next, under the caller's deadline.
    """
    client = session.client
    pump = RfbPump(reader, writer, client, session.record)
    while (event := await pump.next_event()) is not None:
        if client.out_of_turn:
            # Bytes read before we replied: the server did not wait for us (a flood, or a
            # fake replaying a canned handshake). Whatever they are, they do not answer us.
            raise RemoteProtocolError(
                f"server sent {client.out_of_turn} bytes out of turn while {client.state.value}"
            )
        if isinstance(event, rfb.StartTls):
            if not await _start_tls(session, pump, event.anonymous):
                return
            continue
        if not session.on_event(event):
            await pump.flush()
            client.close()
            if session.update_check_due:
                await _ask_for_update(session, pump)
            return


async def _ask_for_update(session: Session, pump: RfbPump) -> None:
    """One FramebufferUpdateRequest for one pixel, then wait (at most `update_wait`) for any
    server message: the session is live, or held for a person's Accept."""
    session.update_asked()
    await pump.send(rfb.framebuffer_update_request(0, 0, 1, 1))
    data = pump.take_trailing()
    closed = session.client.trailing_data[1] and not data
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(session.options.update_wait):
            while not data and not closed:
                data = await pump.read()
                closed = not data
    session.update_seen(bool(data), closed)


async def _start_tls(session: Session, pump: RfbPump, anonymous: bool) -> bool:
    try:
        session.tls_info = await pump.start_tls(anonymous)
    except (ssl.SSLError, OSError) as exc:
        session.notes.append(f"TLS handshake failed: {exc}")
        session.client.close()
        return False
    return True
