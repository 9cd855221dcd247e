"""The one loop that feeds the sans-IO `rfb.RfbClient` from a byte stream, and the one chooser.

Owns: `RfbPump` (write what the client queued, read until it has an event, TLS when it asks for
it, the bytes after ServerInit), the stream shapes it drives (`ByteReader`/`ByteWriter`: asyncio
streams and `websocket.WebSocketStream`), `tls_context` and `tls_session` (shared with the
probe's own TCP protocol), and `Selection`, the one place where a security type, a VeNCrypt
sub-type and a Tight auth capability are chosen. The active checks and the probe through a
WebSocket talk RFB through it; the probe over TCP feeds the client from its own protocol.

Must not: decide what an event means or when to stop (the probe's `Session` and the active
checks do), parse RFB (that is `rfb`), open connections, or keep a clock: callers wrap it in
their own deadline. Closing one is `close_writer`, shared by every caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from vncaudit import rfb
from vncaudit.payloads import TlsSession

READ_CHUNK: Final = 65536


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def start_tls(self, sslcontext: ssl.SSLContext) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def tls_context(anonymous: bool) -> ssl.SSLContext:
    """TLS for fact-finding, not trust: no verification; anonymous DH where the type uses it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if anonymous:
        # Anonymous DH exists only up to TLS 1.2 and only at security level 0 (docs/rfb.md §3.2).
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("aNULL:@SECLEVEL=0")
    else:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def tls_session(ssl_object: Any, anonymous: bool) -> TlsSession | None:
    """What a finished TLS handshake negotiated (None without an `ssl.SSLObject`)."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return TlsSession(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        anonymous=anonymous,
        certificate=bool(ssl_object.getpeercert(binary_form=True)),
    )


class RfbPump:
    """Moves bytes between one stream and one `RfbClient`; every decision is the caller's.

    `next_event()` first writes whatever the client queued (the caller's last decision, the
    replies the protocol mandates), then returns the next event, reading as needed. After
    ServerInit, `take_trailing()` and `read()` give the bytes of the next phase (framebuffer
    updates) and `send()` writes client messages. `on_data` sees every chunk read (the probe's
    bounded transcript).
    """

    def __init__(
        self,
        reader: ByteReader,
        writer: ByteWriter,
        client: rfb.RfbClient,
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client
        self._on_data = on_data
        self._trailing_taken = False

    async def flush(self) -> None:
        out = self.client.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def read(self) -> bytes:
        """One read from the stream (b"" at its end), seen by `on_data`."""
        data = await self.reader.read(READ_CHUNK)
        if data and self._on_data is not None:
            self._on_data(data)
        return data

    async def next_event(self) -> rfb.Event | None:
        """The next event; None when the client expects nothing from the server (the handshake
        is over, or waits on a choice the caller did not make). Raises what `RfbClient`
        raises, and the stream's OSError."""
        await self.flush()
        while True:
            event = self.client.next_event()
            if event is not rfb.NEED_DATA:
                return event
            # Replies the protocol mandates (VeNCrypt version, NOTUNNEL) may be queued even
            # when the parser then needs more data.
            await self.flush()
            if not self.client.their_turn:
                return None
            self.client.receive_data(await self.read())

    async def start_tls(self, anonymous: bool) -> TlsSession | None:
        """After a `StartTls` event: the TLS handshake, then the client reads the decrypted
        stream. Raises ssl.SSLError/OSError (NotImplementedError where the stream cannot)."""
        await self.flush()
        await self.writer.start_tls(tls_context(anonymous))
        session = tls_session(self.writer.get_extra_info("ssl_object"), anonymous)
        self.client.tls_established()
        return session

    def take_trailing(self) -> bytes:
        """The bytes that arrived with ServerInit and belong to the next phase (once)."""
        if self._trailing_taken:
            return b""
        self._trailing_taken = True
        data, _closed = self.client.trailing_data
        return data

    async def send(self, data: bytes) -> None:
        """Write a client message after the handshake (what the client queued goes first)."""
        await self.flush()
        self.writer.write(data)
        await self.writer.drain()


@dataclass(frozen=True)
class Selection:
    """What one connection may select, and the one order it prefers.

    Preference: None (when allowed), VNC Authentication (when a password is at hand), then
    the sub-negotiations that tell the most — VeNCrypt's sub-type list, Tight's capabilities,
    the TLS type's inner list. Inside TLS only None, VNC Authentication and Tight remain.
    """

    no_auth: bool = True  # None, VeNCrypt TLSNone/X509None, Tight NOAUTH, when offered
    vnc_auth: bool = False  # VNC Authentication (directly, in VeNCrypt TLSVnc/X509Vnc, Tight)
    tls: bool = True  # TLS type 18 and VeNCrypt's TLS sub-types
    force_none: bool = False  # None although it was not offered (the auth-bypass check)

    def security_type(self, offered: Sequence[int], inside_tls: bool = False) -> int | None:
        if self.force_none:
            return 1
        if 1 in offered and self.no_auth:
            return 1
        if 2 in offered and self.vnc_auth:
            return 2
        if 19 in offered and not inside_tls:
            return 19
        if 16 in offered:
            return 16
        if 18 in offered and self.tls and not inside_tls:
            return 18
        return None

    def vencrypt_subtype(self, subtypes: Sequence[int]) -> int | None:
        wanted = ((257, 260) if self.no_auth else ()) + ((258, 261) if self.vnc_auth else ())
        return next((s for s in wanted if s in subtypes), None) if self.tls else None

    def tight_auth(self, codes: Sequence[int]) -> int | None:
        if 1 in codes and self.no_auth:
            return 1
        if 2 in codes and self.vnc_auth:
            return 2
        return None


async def close_writer(writer: ByteWriter) -> None:
    """Close politely, but never wait more than 0.5 s for a peer that does not read (it keeps
    our send buffer full): the transport, where the stream has one, is then aborted."""
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        transport = getattr(writer, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()
