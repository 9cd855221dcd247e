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
import re
import socket
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vncaudit import rfb
from vncaudit.exceptions import LocalProtocolError, NotRfbError, RemoteProtocolError
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
from vncaudit.payloads import Extras, HoneypotChecks, SuspectedHoneypot, TlsSession

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
    # Honeypot checks on extra connections to the same port (an unassigned type selected; if
    # accepted, two VNC challenges compared). Off by default: DESIGN.md "Probing etiquette".
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


# The most distinct types a real product lists (macOS: 6, RealVNC 5: 5, TurboVNC: 3; rfb.md §6.2).
_MAX_REAL_TYPES = 12
_MAX_REAL_SUBTYPES = 16  # the registry has 12 VeNCrypt sub-types, plus legacy 1/2 in the list
# Types that only one product line uses (rfb.md §2, §6.2); shared ones (1, 2, 5, 6, 129, 130)
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

    Real products send short, vendor-consistent lists (rfb.md §6.2) and repeat only 19 once
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


def tls_context(anonymous: bool) -> ssl.SSLContext:
    """TLS for fact-finding, not trust: no verification; anonymous DH where the type uses it."""
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
        self.tls_info: TlsSession | None = None
        self.raw_types: tuple[int, ...] = ()  # the main list as sent (duplicates kept)
        self.raw_subtypes: tuple[int, ...] | None = None
        self.honeypot: list[str] = []  # reasons found by active checks
        self.active: HoneypotChecks | None = None  # their outcomes
        self.protocol_guess: str | None = None  # open-not-vnc: what the first bytes look like

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
                self.raw_types = event.types if not event.server_chosen else ()
                self.facts["security_types"] = named
                self.facts["security_types_server_chosen"] = event.server_chosen
            return self._choose_type(event)
        if isinstance(event, rfb.VeNCryptSubtypes):
            self.raw_subtypes = event.subtypes
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
                self._client_init_if_due()
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
                pf.true_colour, pf.true_colour_flag,
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
        self._client_init_if_due()
        return True

    def _client_init_if_due(self) -> None:
        # RFB 3.7 sends no SecurityResult after a no-auth type (rfbproto §7.2.1): ClientInit
        # follows the selection at once, or the server waits and we never see ServerInit.
        if self.client.state is rfb.State.CLIENT_INIT:
            self.client.send_client_init(shared=True)

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
        reasons = (*honeypot_signals(self.raw_types, self.raw_subtypes), *self.honeypot)
        extra = Extras(
            tls=self.tls_info,
            honeypot_checks=self.active,
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
    session = _Session(target, options)
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
            await _converse(session, reader, writer)
    except TimeoutError:
        if writer is None:
            session.state = State.FILTERED
            session.error = "no answer to the connection attempt"
        elif not session.banner_done:
            if _UNTERMINATED_BANNER.fullmatch(session.transcript):
                # All of "RFB xxx.yyy" but the "\n", then nothing: broken, not slow.
                session.state = State.MALFORMED
                session.error = (
                    f"RFB banner {bytes(session.transcript)!r} not terminated by a newline "
                    f"within {options.timeout:g} s"
                )
            else:
                session.state = State.TARPIT
                session.error = (
                    f"connected, no complete banner within {options.timeout:g} s "
                    f"({session.received} bytes received)"
                )
        elif session.client.buffered:
            # The server announced a message (a reason length, a list count) and stalled in it.
            session.state = State.MALFORMED
            session.error = (
                f"incomplete message at the deadline of {options.timeout:g} s: "
                f"{session.client.buffered} bytes while {session.client.state.value}"
            )
        else:
            session.error = (
                f"deadline of {options.timeout:g} s reached while "
                f"{session.client.state.value}"
            )
    except NotRfbError as exc:
        session.state = State.OPEN_NOT_VNC
        first = exc.first_bytes
        session.protocol_guess = guess_protocol(first)
        session.error = f"not RFB: looks like {session.protocol_guess} ({first[:32]!r})"
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
            await close_writer(writer)
        elif sock is not None:
            sock.close()  # handed over but never wrapped in a stream: still ours to close
    if options.active_checks and session.state is None and session.error is None:
        # Only after a clean first conversation; each extra connection has a deadline of its
        # own, so an active probe takes at most three times `timeout`.
        with contextlib.suppress(Exception):
            await _active_checks(session)
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
            if client.out_of_turn:
                # Bytes read before we replied: the server did not wait for us (a flood, or a
                # fake replaying a canned handshake). Whatever they are, they do not answer us.
                raise RemoteProtocolError(
                    f"server sent {client.out_of_turn} bytes out of turn while "
                    f"{client.state.value}"
                )
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
        await writer.start_tls(tls_context(anonymous))
    except (ssl.SSLError, OSError) as exc:
        session.notes.append(f"TLS handshake failed: {exc}")
        session.client.close()
        return False
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None:
        cipher = ssl_object.cipher()
        session.tls_info = TlsSession(
            version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            anonymous=anonymous,
            certificate=bool(ssl_object.getpeercert(binary_form=True)),
        )
    session.client.tls_established()
    return True


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close politely, but never wait more than 0.5 s for a peer that does not read."""
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        # A peer that never reads keeps our send buffer full; do not wait for it.
        with contextlib.suppress(Exception):
            writer.transport.abort()


# -- active checks (extra connections; only with ProbeOptions.active_checks) --------------------

UNASSIGNED_TYPE = 77  # IANA 36-127 is unassigned; no product answers 77 with success


def _not_random(challenge: bytes) -> bool:
    """A VNC challenge no random source gives: 16 printable ASCII bytes (p < 2e-7, vnclowpot
    sends "AAAAAAAAAAAAAAAA") or at most 4 distinct byte values."""
    return all(32 <= b < 127 for b in challenge) or len(set(challenge)) <= 4


async def _active_checks(session: _Session) -> None:
    """Honeypot checks on fresh connections; lockout-aware (TigerVNC blocks at the 5th).

    1. Select an unassigned type (77): real servers close or fail it; a server that says "ok"
       accepts anything. 2. If VNC Authentication is offered, read one challenge (never
       answered): a canned one is not random. These two run side by side, so an honest server
       costs two connections (one when 2 is not offered). 3. Only if either looked fake, one
       more challenge: the same one twice is a replayed handshake.
    (Un-offered None, CVE-2006-2369/2450, is `active.check_unoffered_none`'s job, not repeated.)
    """
    offered = set(session.raw_types)
    if not offered:
        return  # 3.3 (the server chooses), or no list read: nothing to select against
    target, options = session.target, session.options
    tries = [_try_type(target, options, UNASSIGNED_TYPE)]
    if 2 in offered:
        tries.append(_try_type(target, options, 2))
    outcomes = await asyncio.gather(*tries)
    accepted = outcomes[0][0] == "accepted"
    if accepted:
        session.honeypot.append(f"accepted unassigned security type {UNASSIGNED_TYPE}")
    first = outcomes[1][1] if len(outcomes) > 1 else None
    random: bool | None = None
    repeated: bool | None = None
    if first is not None:
        random = not _not_random(first)
        if not random:
            session.honeypot.append(f"VNC authentication challenge is not random ({first!r})")
        if accepted or not random:
            _, second = await _try_type(target, options, 2)
            if second is not None:
                repeated = first == second
                if repeated:
                    session.honeypot.append(
                        f"the same VNC authentication challenge on two connections "
                        f"({first.hex()})"
                    )
    session.active = HoneypotChecks(
        UNASSIGNED_TYPE, outcomes[0][0], len(outcomes) + (repeated is not None), random, repeated
    )


async def _try_type(
    target: Target, options: ProbeOptions, number: int
) -> tuple[str, bytes | None]:
    """One connection selecting `number`: ('accepted'|'refused'|..., VNC challenge or None)."""
    client = rfb.RfbClient(options.limits, options.client_version)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(options.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            while True:
                event = client.next_event()
                if isinstance(event, rfb._NeedData):
                    if client.state is rfb.State.CLIENT_INIT:
                        client.send_client_init(shared=True)  # 3.3/3.7 None: no result
                    outgoing = client.data_to_send()
                    if outgoing:
                        writer.write(outgoing)
                        await writer.drain()
                    if not client.their_turn:
                        return "unsupported", None
                    client.receive_data(await reader.read(READ_CHUNK))
                elif isinstance(event, rfb.ServerVersion):
                    if event.client_version is None:
                        return "not answered", None
                elif isinstance(event, rfb.SecurityTypes):
                    if event.server_chosen:
                        return "server chose the type", None
                    client.select_security_type(number)
                elif isinstance(event, rfb.VncAuthChallenge):
                    return "challenge", event.challenge
                elif isinstance(event, rfb.SecurityResult):
                    return ("accepted" if event.ok else "refused"), None
                elif isinstance(event, rfb.ServerInit):
                    return "accepted", None
                elif isinstance(event, rfb.Failure):
                    return "refused", None
                elif isinstance(event, rfb.ConnectionClosed):
                    return "closed", None
                else:
                    return "unsupported", None
    except TimeoutError:
        return "no answer", None
    except RemoteProtocolError as exc:
        return ("closed" if "closed" in str(exc) else f"error: {exc}"), None
    except (OSError, LocalProtocolError) as exc:
        return f"error: {exc}", None
    finally:
        if writer is not None:
            await close_writer(writer)
