"""Probe one (host, port): what the server says on ONE connection, as a `ServiceResult`.

Owns: the probe's `Session` (what to select and when to stop, the facts it records, a bounded
transcript, the one-connection honeypot signals; `Session.advance` is its one decision loop),
`TcpProbe`, which runs it over TCP as an asyncio protocol (bytes from `data_received` straight
into the session's `RfbClient`, replies straight to the transport: no stream and no task per
probe, about a third less CPU per handshake than streams and a coroutine), and `converse`,
which runs it over a stream through `pump.RfbPump` (a WebSocket in `websocket`); the connect,
ONE hard deadline, and the translation of every outcome (refused, silent, not RFB, broken RFB,
RFB) into a `ServiceResult` with a `State`. Exceptions end here: callers always get a result,
never an exception (the zgrab2 rule).

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
import enum
import logging
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from vncaudit import rfb
from vncaudit.basics import CONNECT_CUT
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
from vncaudit.pump import ByteReader, ByteWriter, RfbPump, tls_session
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


# Memos of what depends only on the lists a server sent (a scan sees a few distinct lists, over
# and over); cleared when full, so a range of servers with random lists stays bounded.
_MEMO_CAP = 4096
_NAMED: dict[tuple[int, ...], tuple[tuple[NamedType, ...], str | None]] = {}
_SUSPECTED: dict[tuple[tuple[int, ...], tuple[int, ...] | None], SuspectedHoneypot | None] = {}
_NO_EXTRAS = Extras()


def _named_types(types: tuple[int, ...]) -> tuple[tuple[NamedType, ...], str | None]:
    """A security-type list without repeats, named; and the note when it had repeats."""
    known = _NAMED.get(types)
    if known is not None:
        return known
    unique = tuple(dict.fromkeys(types))
    note = None
    if len(unique) != len(types):
        # TigerVNC lists 19 twice when VeNCrypt is enabled explicitly: a quirk worth keeping
        # as a fingerprint fact, not as two entries.
        note = "server listed duplicate security types: " + ",".join(str(t) for t in types)
    known = tuple(NamedType(t, rfb.security_type_name(t)) for t in unique), note
    if len(_NAMED) >= _MEMO_CAP:
        _NAMED.clear()
    _NAMED[types] = known
    return known


def _suspected(types: tuple[int, ...],
               subtypes: tuple[int, ...] | None) -> SuspectedHoneypot | None:
    """`honeypot_signals` of these lists, as the result carries them."""
    key = (types, subtypes)
    try:
        return _SUSPECTED[key]
    except KeyError:
        pass
    reasons = honeypot_signals(types, subtypes)
    suspected = SuspectedHoneypot(tuple(reasons)) if reasons else None
    if len(_SUSPECTED) >= _MEMO_CAP:
        _SUSPECTED.clear()
    _SUSPECTED[key] = suspected
    return suspected


# A server that answers the version exchange by closing (docs/rfb.md §1.2): refused, no reason.
CLOSED_AFTER_VERSION = ("server closed the connection after the version exchange, before "
                        "offering any security type (a refusal without a reason)")

# A server that sends its banner, then nothing up to the deadline (docs/rfb.md §1.2): a
# LibVNCServer application deciding after its banner whether to take the client.
HELD_AFTER_VERSION = ("server sent its banner, then nothing until the deadline: held before "
                      "offering any security type, as gnome-remote-desktop's 'prompt' access "
                      "and x11vnc -accept do while they ask their user")


# ATEN iKVM's Tight variant (docs/rfb.md §4.3): its 24 bytes, then it waits for credentials.
ATEN_TIGHT = ("Tight selected: 24 bytes with no tunnel list, ATEN iKVM's variant, which then "
              "waits for a user name and password")


class Step(enum.Enum):
    """What the connection does after `Session.advance`."""

    READ = "read"  # feed the client what the server sends next
    END = "end"  # the client expects nothing more from the server: close
    STOP = "stop"  # the session decided to stop: close (after the update check, if due)


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
        named, duplicates = _named_types(event.types)
        if duplicates is not None:
            self.notes.append(duplicates)
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

    def _on_aten(self, event: rfb.AtenTight) -> bool:
        self.notes.append(f"{ATEN_TIGHT}: {event.blob.hex()}")
        return False  # what follows is a user name and a password: never sent

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
        elif "security_types" not in self.facts:
            self.notes.append(CLOSED_AFTER_VERSION)
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

    def advance(self, write: Callable[[bytes], None]) -> Step | rfb.StartTls:
        """Take every event the client can give from what it was fed, decide on each, and
        `write` the replies, each before the next event is parsed. Returns what the connection
        must do next: read (`Step.READ`), close (`Step.END`: the client expects nothing;
        `Step.STOP`: the session stopped, the update check first if due) or start TLS. Raises
        what `rfb` raises, and RemoteProtocolError for bytes the server sent out of turn."""
        client = self.client
        while True:
            event = client.next_event()
            if event is rfb.NEED_DATA:
                # Replies the protocol mandates (VeNCrypt version, NOTUNNEL) may be queued
                # even when the parser then needs more data.
                out = client.data_to_send()
                if out:
                    write(out)
                return Step.READ if client.their_turn else Step.END
            if client.out_of_turn:
                # Bytes read before we replied: the server did not wait for us (a flood, or a
                # fake replaying a canned handshake). Whatever they are, they do not answer us.
                raise RemoteProtocolError(
                    f"server sent {client.out_of_turn} bytes out of turn while "
                    f"{client.state.value}"
                )
            if isinstance(event, rfb.StartTls):
                return event
            stop = not self.on_event(event)
            out = client.data_to_send()
            if out:
                write(out)
            if stop:
                client.close()
                return Step.STOP

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
        aten = any(n.startswith(ATEN_TIGHT) for n in self.notes)  # credentials, always
        unread = (19 in types and ven is None) or (16 in types and tight is None and not aten) or (
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
            if client.state is rfb.State.SECURITY:
                self.notes.append(HELD_AFTER_VERSION)

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
        suspected = _suspected(self.raw_types, self.raw_subtypes)
        extra = _NO_EXTRAS
        if self.tls_info is not None or self.protocol_guess or suspected is not None:
            extra = Extras(
                tls=self.tls_info,
                protocol_guess=self.protocol_guess or None,
                suspected_honeypot=suspected,
            )
        return ServiceResult(
            host=self.target.host,
            port=self.target.port,
            state=state,
            rfb=facts,
            transcript_hex=self.transcript.hex(),
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
    rfb.AtenTight: Session._on_aten,
    rfb.SecurityResult: Session._on_result,
    rfb.ServerInit: Session._on_server_init,
    rfb.Failure: Session._on_failure,
    rfb.Unsupported: Session._on_unsupported,
    rfb.ConnectionClosed: Session._on_closed,
    # VncAuthChallenge: never answered without a password. StartTls: `converse` does it.
}


ProbeDone = Callable[["TcpProbe"], None]

# Phases of a `TcpProbe`.
_CONNECTING, _TALKING, _TLS, _UPDATE, _DONE = range(5)


class TcpProbe(asyncio.Protocol):
    """One probe over TCP, driven by the event loop's callbacks: what arrives goes straight
    into the session's `RfbClient`, its replies straight to the transport, under one timer for
    the deadline. No task runs for it except while it connects and during a TLS handshake.

    `start()` begins; `on_done(probe)` is called once, with `result` set (or `failure`, an
    exception that is a bug, not a server's doing); `cancel()` ends it with no call.
    """

    __slots__ = ("session", "result", "failure", "_on_done", "_loop", "_started", "_phase",
                 "_transport", "_timer", "_update_timer", "_task", "_tls", "_lost")

    def __init__(self, target: Target, options: ProbeOptions, on_done: ProbeDone) -> None:
        self.session = Session(target, options)
        self.result: ServiceResult | None = None
        self.failure: BaseException | None = None
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._started = 0.0
        self._phase = _CONNECTING
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._update_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # the connect, or the TLS handshake
        self._tls = False
        self._lost: BaseException | None = None  # the connection broke during TLS's start

    def start(self, sock: socket.socket | None = None, source: str | None = None) -> None:
        """Connect (or take over `sock`, already connected: the deadline starts now)."""
        loop = self._loop
        self._started = loop.time()
        self._timer = loop.call_at(self._started + self.session.options.timeout,
                                   self._deadline)
        self._task = loop.create_task(self._connect(sock, source))

    def cancel(self) -> None:
        """Stop at once: no result, no call; the connection is closed."""
        if self._phase == _DONE:
            return
        self._phase = _DONE
        self._stop_timers()
        self._close()

    async def _connect(self, sock: socket.socket | None, source: str | None) -> None:
        session = self.session
        try:
            if sock is not None:
                await self._loop.create_connection(self._self, sock=sock)
            else:
                target = session.target
                await self._loop.create_connection(
                    self._self, target.host, target.port,
                    local_addr=(source, 0) if source is not None else None)
        except ConnectionRefusedError:
            self._task = None
            session.state = State.CLOSED
            self._finish()
        except OSError as exc:
            self._task = None
            session.state = State.FILTERED
            session.error = exc.strerror or str(exc)
            self._finish()
        except asyncio.CancelledError:
            if sock is not None and self._transport is None:
                sock.close()  # handed over but never wrapped in a transport: still ours
            raise
        except Exception as exc:  # a bug, not the server's doing: the caller re-raises it
            self._task = None
            self.failure = exc
            self._finish()
        else:
            self._task = None

    def _self(self) -> TcpProbe:
        return self

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._phase == _CONNECTING:
            self._phase = _TALKING
        # The server speaks first: nothing to send until its banner arrives.

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _TALKING:
            self.session.record(data)
            self.session.client.receive_data(data)
            self._drive()
        elif phase == _UPDATE:
            self.session.record(data)
            self.session.update_seen(True)
            self._finish()
        elif phase == _TLS:
            # Decrypted bytes that came with the end of the handshake: kept for when the
            # handshake's task carries on.
            self.session.record(data)
            self.session.client.receive_data(data)

    def eof_received(self) -> bool | None:
        self._ended(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase != _DONE:
            self._ended(exc)

    def _ended(self, exc: BaseException | None) -> None:
        """The server closed (exc None) or the connection broke."""
        phase = self._phase
        if phase == _TALKING:
            if exc is None or (isinstance(exc, ConnectionResetError)
                               and self.session.client.state is rfb.State.SECURITY):
                # A server that closes with our version reply unread resets instead of
                # closing (its kernel's RST): after the version exchange the two are the same
                # refusal (LibVNCServer's, docs/rfb.md §1.2), whichever the timing gave.
                self.session.client.receive_data(b"")
                self._drive()
            else:
                self._broken(exc)
        elif phase == _UPDATE:
            if exc is None:
                self.session.update_seen(False, closed=True)
                self._finish()
            else:
                self._broken(exc)
        elif phase == _TLS:
            if exc is None:
                self.session.client.receive_data(b"")
            else:
                self._lost = exc

    # -- the session -------------------------------------------------------------------------

    def _drive(self) -> None:
        """Let the session take what the client can parse now, and act on its answer."""
        session = self.session
        transport = self._transport
        assert transport is not None
        try:
            step = session.advance(transport.write)
            if step is Step.READ:
                return
            if isinstance(step, rfb.StartTls):
                out = session.client.data_to_send()
                if out:
                    transport.write(out)
                self._phase = _TLS
                transport.pause_reading()  # what follows is TLS: the handshake reads it
                self._task = self._loop.create_task(self._start_tls(step.anonymous))
                return
            if step is Step.STOP and session.update_check_due:
                self._ask_for_update()
                return
        except (RemoteProtocolError, OSError) as exc:
            self._broken(exc)
            return
        except Exception as exc:
            self.failure = exc
        self._finish()

    def _broken(self, exc: BaseException) -> None:
        if isinstance(exc, RemoteProtocolError | OSError):
            self.session.broken(exc)
        else:
            self.failure = exc
        self._finish()

    async def _start_tls(self, anonymous: bool) -> None:
        session = self.session
        transport = self._transport
        assert transport is not None
        try:
            tls = await self._loop.start_tls(transport, self, tls_context(anonymous))
        except (ssl.SSLError, OSError) as exc:
            self._task = None
            session.notes.append(f"TLS handshake failed: {exc}")
            session.client.close()
            self._finish()
            return
        self._task = None
        if tls is None:  # the loop gives no transport when the connection closed meanwhile
            self._finish()
            return
        self._transport = tls
        self._tls = True
        session.tls_info = tls_session(tls.get_extra_info("ssl_object"), anonymous)
        session.client.tls_established()
        self._phase = _TALKING
        self._drive()
        if self._lost is not None and self._phase != _DONE:
            self._broken(self._lost)

    def _ask_for_update(self) -> None:
        """One FramebufferUpdateRequest for one pixel, then wait (at most `update_wait`) for
        any server message: the session is live, or held for a person's Accept."""
        session = self.session
        transport = self._transport
        assert transport is not None
        session.update_asked()
        transport.write(rfb.framebuffer_update_request(0, 0, 1, 1))
        data, closed = session.client.trailing_data
        if data or closed:
            session.update_seen(bool(data), closed and not data)
            self._finish()
            return
        self._phase = _UPDATE
        self._update_timer = self._loop.call_later(session.options.update_wait,
                                                   self._update_expired)

    def _update_expired(self) -> None:
        self._update_timer = None
        if self._phase == _UPDATE:
            self.session.update_seen(False)
            self._finish()

    def _deadline(self) -> None:
        self._timer = None
        if self._phase == _DONE:
            return
        session = self.session
        if self._transport is None:
            session.state = State.FILTERED
            session.error = CONNECT_CUT
        else:
            session.deadline_reached()
        self._finish()

    # -- the end -----------------------------------------------------------------------------

    def _stop_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._update_timer is not None:
            self._update_timer.cancel()
            self._update_timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _close(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()
            if self._tls or transport.get_write_buffer_size():
                # A peer that does not read keeps our bytes (or TLS's close) queued: never
                # wait more than 0.5 s for it.
                self._loop.call_later(0.5, transport.abort)

    def _finish(self) -> None:
        """Close, build the result once, and hand it over."""
        if self._phase == _DONE:
            return
        self._phase = _DONE
        self._stop_timers()
        self._close()
        loop = self._loop
        if self.failure is None:
            try:
                self.result = self.session.result(loop.time() - self._started)
            except Exception as exc:
                self.failure = exc
        self._on_done(self)


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
    done: asyncio.Future[ServiceResult] = asyncio.get_running_loop().create_future()

    def deliver(run: TcpProbe) -> None:
        if done.done():
            return
        if run.failure is not None:
            done.set_exception(run.failure)
        else:
            assert run.result is not None
            done.set_result(run.result)

    run = TcpProbe(target, options or ProbeOptions(), deliver)
    run.start(sock, source)
    try:
        return await done
    except asyncio.CancelledError:
        run.cancel()
        raise


async def converse(session: Session, reader: ByteReader, writer: ByteWriter) -> None:
    """Run the session over one stream until it stops; raises what the stream and `rfb` raise.

    A step inside this one connection (after ServerInit, say) goes here, before the close:
    `pump.send()` writes a client message, `pump.take_trailing()` and `pump.read()` give what
    the server sends next, under the caller's deadline.
    """
    client = session.client
    pump = RfbPump(reader, writer, client, session.record)
    while True:
        step = session.advance(writer.write)
        await writer.drain()
        if step is Step.READ:
            client.receive_data(await pump.read())
        elif isinstance(step, rfb.StartTls):
            if not await _start_tls(session, pump, step.anonymous):
                return
        else:
            if step is Step.STOP and session.update_check_due:
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
