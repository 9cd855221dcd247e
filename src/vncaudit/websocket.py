"""VNC over the web: noVNC/websockify endpoints, RFB through a WebSocket, Java-viewer pages.

Owns: a minimal HTTP/1.1 GET (status, headers, a capped body, the HTML title); identification
of what answers (websockify, noVNC, the classic Java-viewer HTTP server on 5800+N, a Proxmox
gateway); the client side of the WebSocket opening handshake (RFC 6455 §4.1, with the
Sec-WebSocket-Accept check of §4.2.2) and of its framing (§5: client frames masked, server
frames not; ping answered, close ends the stream); `WebSocketStream`, a byte-stream adapter
shaped like asyncio's StreamReader/StreamWriter, so the SAME `rfb` client and probe logic runs
through it (docs/rfb.md §8.4: RFB messages may be split across or merged within frames), including
RFB's own TLS (types 18/19) layered inside the WebSocket on memory BIOs; and
`probe_web()`, which turns a web endpoint into a `ServiceResult` with `extra.web`, and
`check_web()`, the same with the count of TCP connections it made (the connection ledger
records each), from a given local address when asked (another loopback address).

Must not: parse RFB itself (that is `rfb`, driven by `probe`), send anything but GET and the
upgrade, or open more connections than needed. Each WebSocket that is accepted makes the
gateway open one connection to the VNC server behind it, which counts towards TigerVNC's
blacklist, so the RFB probe runs inside the first accepted WebSocket — never a separate
"is it RFB?" connection first. Refused upgrades (404/405) never reach the backend.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import html
import logging
import os
import re
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from vncaudit.exceptions import NotRfbError, RemoteProtocolError
from vncaudit.models import ServiceResult, State, Target
from vncaudit.payloads import Extras, UpgradeAttempt, WebFrontEnd, WebSocketEndpoint
from vncaudit.payloads import WebFacts as WebFacts
from vncaudit.pump import close_writer

log = logging.getLogger(__name__)

WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Paths tried for the WebSocket, in order: noVNC's default, then the root (websockify without
# --web, QEMU, LibVNCServer accept any path).
WEBSOCKET_PATHS: Final = ("/websockify", "/")
# Ports where web front ends for VNC are commonly found (docs/rfb.md §8.1).
WEB_PORTS: Final = (6080, 6901, 5800, 5801, 5802, 5803, 80, 443, 8080, 8443)

# What GET / identifies as a gateway to a VNC server elsewhere: the server behind it sees the
# gateway's address, whichever of our addresses the check comes from.
GATEWAY_KINDS: Final = frozenset({"websockify", "novnc", "proxmox"})
# Connect errors raised before any packet reached the server: no connection was made.
_NOT_SENT: Final = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH,
                              errno.EADDRNOTAVAIL, errno.EADDRINUSE})

MAX_HEADER_BYTES: Final = 16384
MAX_BODY_BYTES: Final = 65536
MAX_FRAME_BYTES: Final = 16 << 20  # one server frame; a screenshot frame fits easily
READ_CHUNK: Final = 65536

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


class WebSocketError(RemoteProtocolError):
    """The server broke the WebSocket protocol (bad upgrade answer, bad frame)."""


class UpgradeRefused(WebSocketError):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, message: str, response: HttpResponse) -> None:
        super().__init__(message)
        self.response = response


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # lower-cased names, in order
    body: bytes = b""  # at most MAX_BODY_BYTES

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k == low), None)

    @property
    def title(self) -> str | None:
        match = re.search(rb"<title[^>]*>(.*?)</title>", self.body, re.I | re.S)
        if match is None:
            return None
        text = match.group(1).decode("utf-8", errors="replace")
        return " ".join(html.unescape(text).split())[:200] or None


def _parse_head(raw: bytes) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    lines = raw.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: (.*))?", lines[0])
    if match is None:
        raise WebSocketError(f"not an HTTP response: {lines[0][:60]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    return int(match.group(1)), match.group(2) or "", tuple(headers)


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The response head (up to the blank line) and any bytes read after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER_BYTES:
            raise WebSocketError(f"HTTP response head longer than {MAX_HEADER_BYTES} bytes")
        chunk = await reader.read(4096)
        if not chunk:
            if not buf:
                raise WebSocketError("connection closed without an HTTP response")
            raise WebSocketError("connection closed inside the HTTP response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _host_header(target: Target) -> str:
    host = target.hostname or target.host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{target.port}"


class _Tally:
    """The TCP connections one web check made (a refused connect is none; one that a deadline
    or an error ended after it was sent may have been accepted, so it counts)."""

    def __init__(self) -> None:
        self.made = 0


async def _open(target: Target, tls: bool, source: str | None = None,
                tally: _Tally | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx: ssl.SSLContext | None = None
    if tls:
        # Facts, not trust: the certificate is not verified (self-signed gateways are common).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        opened = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=ctx,
            server_hostname=(target.hostname or None) if tls else None,
            local_addr=(source, 0) if source is not None else None,
        )
    except OSError as exc:
        if tally is not None and exc.errno not in _NOT_SENT:
            tally.made += 1
        raise
    except BaseException:
        if tally is not None:
            tally.made += 1
        raise
    if tally is not None:
        tally.made += 1
    return opened


async def http_get(
    target: Target, path: str = "/", *, timeout: float = 5.0, tls: bool = False,
    source: str | None = None, tally: _Tally | None = None,
) -> HttpResponse:
    """GET `path` with `Connection: close`, from the local address `source` when given; the
    body is capped at MAX_BODY_BYTES."""
    async with asyncio.timeout(timeout):
        reader, writer = await _open(target, tls, source, tally)
        try:
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {_host_header(target)}\r\n"
                    "User-Agent: vncaudit\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
            )
            await writer.drain()
            head, body = await _read_head(reader)
            status, reason, headers = _parse_head(head)
            length = next((v for k, v in headers if k == "content-length"), None)
            want = MAX_BODY_BYTES
            if length is not None and length.isdigit():
                want = min(want, int(length))
            while len(body) < want:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    break
                body += chunk
            return HttpResponse(status, reason, headers, body[:MAX_BODY_BYTES])
        finally:
            await close_writer(writer)


_APPLET_PORT = re.compile(rb"<param\s+name\s*=\s*\"?port\"?\s+value\s*=\s*\"?(\d{1,5})", re.I)


def identify_http(response: HttpResponse) -> WebFacts:
    """Classify a GET answer (docs/rfb.md §8.1, §8.4 step 6; nmap `vnc-http` signatures)."""
    server = response.header("server")
    title = response.title
    body = response.body
    evidence: list[str] = [f"HTTP {response.status}"]
    if server:
        evidence.append(f"Server: {server}")
    if title:
        evidence.append(f"title {title!r}")
    low_server = (server or "").lower()
    applet = re.search(rb"<applet[^>]*vncviewer", body, re.I)
    if applet is not None or b"VncViewer.class" in body or b"VncViewer.jar" in body:
        match = _APPLET_PORT.search(body)
        port = int(match.group(1)) if match else None
        evidence.append("Java VNC viewer applet" + (f" for RFB port {port}" if port else ""))
        return WebFacts("java-viewer", server, title, response.status, port, tuple(evidence))
    if "pve-api-daemon" in low_server:
        return WebFacts("proxmox", server, title, response.status, None, tuple(evidence))
    if b"novnc" in body.lower() or (title or "").lower().startswith("novnc"):
        return WebFacts("novnc", server, title, response.status, None, tuple(evidence))
    if "websockify" in low_server:
        return WebFacts("websockify", server, title, response.status, None, tuple(evidence))
    if any(v in low_server for v in ("realvnc", "tigervnc", "vnc server")):
        return WebFacts("java-viewer", server, title, response.status, None, tuple(evidence))
    return WebFacts("http", server, title, response.status, None, tuple(evidence))


# --------------------------------------------------------------------------------------------
# WebSocket


def accept_for(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode()


def encode_frame(payload: bytes, opcode: int = OP_BINARY, mask: bytes | None = None) -> bytes:
    """One FIN frame; client frames MUST be masked (RFC 6455 §5.3), so a mask is always used."""
    key = mask if mask is not None else os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + key + _mask(payload, key)


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    # XOR with the 4-byte key repeated, done as one big integer operation rather than per byte.
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class FrameParser:
    """Sans-IO parser for server frames (tolerates a masked server frame; RFC says unmasked)."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketError("WebSocket frame with reserved bits set (no extension agreed)")
        masked, n, offset = bool(b1 & 0x80), b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from(">H", buf, 2)
            offset = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from(">Q", buf, 2)
            offset = 10
        if n > self.max_frame:
            raise WebSocketError(f"WebSocket frame of {n} bytes exceeds the cap {self.max_frame}")
        key = b""
        if masked:
            if len(buf) < offset + 4:
                return None
            key = bytes(buf[offset : offset + 4])
            offset += 4
        if len(buf) < offset + n:
            return None
        payload = bytes(buf[offset : offset + n])
        del buf[: offset + n]
        if masked:
            payload = _mask(payload, key)
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)


class WebSocketStream:
    """A byte stream over WebSocket binary messages, shaped like asyncio's reader and writer.

    `read()` returns payload bytes regardless of frame boundaries; `write()` sends one masked
    binary frame. Ping is answered with pong; a close frame (or EOF) ends the stream (b"").
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        subprotocol: str | None,
        response: HttpResponse,
        url: str,
        initial: bytes = b"",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.subprotocol = subprotocol
        self.response = response
        self.url = url
        self._frames = FrameParser()
        self._frames.receive_data(initial)
        self._data = bytearray()
        self._eof = False
        self._closing = False
        self._plain = bytearray()  # stream bytes ready for read() (after TLS, if any)
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self.frames_received = 0
        self.close_code: int | None = None

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._writer.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls if self._tls is not None else default
        return self._writer.get_extra_info(name, default)

    # -- reader side -----------------------------------------------------------------------

    async def _read_payload(self) -> bytes:
        """The next payload bytes of the WebSocket itself (b"" at the end of the stream)."""
        while not self._data and not self._eof:
            frame = self._frames.next_frame()
            if frame is None:
                chunk = await self._reader.read(READ_CHUNK)
                if not chunk:
                    self._eof = True
                    break
                self._frames.receive_data(chunk)
                continue
            await self._on_frame(frame)
        out = bytes(self._data)
        self._data.clear()
        return out

    async def read(self, n: int = -1) -> bytes:
        if not self._plain:
            if self._tls is None:
                self._plain += await self._read_payload()
            else:
                await self._read_tls()
        if n < 0 or n >= len(self._plain):
            out = bytes(self._plain)
            self._plain.clear()
        else:
            out = bytes(self._plain[:n])
            del self._plain[:n]
        return out

    async def _read_tls(self) -> None:
        assert self._tls is not None
        while not self._plain:
            try:
                self._plain += self._tls.read(READ_CHUNK)
                if not self._plain:
                    return  # TLS close_notify
            except ssl.SSLWantReadError:
                self._flush_tls()
                payload = await self._read_payload()
                if not payload:
                    return
                self._tls_in.write(payload)
            except ssl.SSLZeroReturnError:
                return

    async def _on_frame(self, frame: Frame) -> None:
        self.frames_received += 1
        if frame.opcode in (OP_BINARY, OP_CONTINUATION):
            self._data += frame.payload
        elif frame.opcode == OP_TEXT:
            if self.subprotocol == "base64":  # old websockify/LibVNCServer clients
                try:
                    self._data += base64.b64decode(frame.payload, validate=False)
                except ValueError as exc:
                    raise WebSocketError(f"bad base64 text frame: {exc}") from exc
            else:
                raise WebSocketError("text frame on a binary RFB WebSocket")
        elif frame.opcode == OP_PING:
            self._writer.write(encode_frame(frame.payload[:125], OP_PONG))
        elif frame.opcode == OP_CLOSE:
            if len(frame.payload) >= 2:
                (self.close_code,) = struct.unpack(">H", frame.payload[:2])
            self._eof = True
        elif frame.opcode != OP_PONG:
            raise WebSocketError(f"unknown WebSocket opcode {frame.opcode}")

    # -- writer side -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self._closing:
            return
        if self._tls is not None:
            self._tls.write(bytes(data))
            self._flush_tls()
        else:
            self._send_payload(bytes(data))

    def _send_payload(self, data: bytes) -> None:
        if self.subprotocol == "base64":
            self._writer.write(encode_frame(base64.b64encode(data), OP_TEXT))
        else:
            self._writer.write(encode_frame(data))

    def _flush_tls(self) -> None:
        out = self._tls_out.read()
        if out:
            self._send_payload(out)

    async def drain(self) -> None:
        await self._writer.drain()

    async def start_tls(self, sslcontext: ssl.SSLContext, **_: Any) -> None:
        """TLS inside the WebSocket (RFB types 18/19 through a gateway), on memory BIOs."""
        if self._tls is not None:
            raise OSError("TLS already started on this WebSocket")
        tls = sslcontext.wrap_bio(self._tls_in, self._tls_out, server_side=False)
        if self._plain:  # bytes already read belong to the TLS stream
            self._tls_in.write(bytes(self._plain))
            self._plain.clear()
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_payload(self._tls_out.read())
                await self._writer.drain()
                payload = await self._read_payload()
                if not payload:
                    raise ConnectionResetError(
                        "WebSocket closed during the TLS handshake"
                    ) from None
                self._tls_in.write(payload)
        self._flush_tls()
        await self._writer.drain()
        self._tls = tls

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            with contextlib.suppress(Exception):
                self._writer.write(encode_frame(struct.pack(">H", 1000), OP_CLOSE))
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()


async def open_websocket(
    target: Target,
    path: str = "/websockify",
    *,
    tls: bool = False,
    subprotocols: Sequence[str] = ("binary",),
    origin: bool = True,
    source: str | None = None,
    tally: _Tally | None = None,
) -> WebSocketStream:
    """Open a WebSocket to `path` (from the local address `source` when given) and check the
    server's answer (RFC 6455 §4.1-§4.2).

    No deadline of its own: call it inside the caller's `asyncio.timeout`. Raises
    `UpgradeRefused` (with the HTTP response) when the server answers anything but 101.
    """
    reader, writer = await _open(target, tls, source, tally)
    try:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        host = _host_header(target)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: vncaudit",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        if origin:  # some deployments check it; websockify only logs it
            lines.append(f"Origin: {'https' if tls else 'http'}://{host}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head, rest = await _read_head(reader)
        status, reason, headers = _parse_head(head)
        response = HttpResponse(status, reason, headers, b"")
        if status != 101:
            body = rest
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    while len(body) < 4096:
                        chunk = await reader.read(4096)
                        if not chunk:
                            break
                        body += chunk
            response = HttpResponse(status, reason, headers, body[:MAX_BODY_BYTES])
            raise UpgradeRefused(f"upgrade refused: HTTP {status} {reason}".strip(), response)
        if (response.header("upgrade") or "").lower() != "websocket":
            raise WebSocketError("101 answer without 'Upgrade: websocket'")
        accept = response.header("sec-websocket-accept")
        if accept != accept_for(key):
            raise WebSocketError(f"Sec-WebSocket-Accept {accept!r} does not match our key")
        chosen = response.header("sec-websocket-protocol")
        if chosen is not None and chosen not in subprotocols:
            raise WebSocketError(f"server chose a subprotocol we did not offer: {chosen!r}")
        scheme = "wss" if tls else "ws"
        url = f"{scheme}://{host}{path}"
        return WebSocketStream(
            reader, writer, subprotocol=chosen, response=response, url=url, initial=rest
        )
    except BaseException:
        await close_writer(writer)
        raise


def connector(
    path: str = "/websockify", *, tls: bool = False
) -> Callable[[Target], Awaitable[tuple[WebSocketStream, WebSocketStream]]]:
    """A connection factory for `active` checks (screenshot etc.) through a WebSocket."""

    async def connect(target: Target) -> tuple[WebSocketStream, WebSocketStream]:
        stream = await open_websocket(target, path, tls=tls)
        return stream, stream

    return connect


# --------------------------------------------------------------------------------------------
# Probe through the WebSocket


async def _rfb_through(
    target: Target, stream: WebSocketStream, options: Any, deadline: float
) -> ServiceResult:
    """Run the probe's own session over the stream (the same decisions, the same facts)."""
    from vncaudit.probe import Session, converse

    session = Session(target, options)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout_at(deadline):
            await converse(session, stream, stream)
    except TimeoutError:
        if not session.banner_done:
            session.state = State.TARPIT
            session.error = "WebSocket open, no complete RFB banner before the deadline"
        elif not session.update_pending():
            session.error = f"deadline reached while {session.client.state.value}"
    except NotRfbError as exc:
        session.state = State.OPEN_NOT_VNC
        session.error = f"WebSocket carries no RFB ({exc.first_bytes[:32]!r})"
    except RemoteProtocolError as exc:
        session.state = State.MALFORMED
        session.error = str(exc)
    except (ConnectionError, OSError) as exc:
        session.state = State.MALFORMED if session.banner_done else State.OPEN_NOT_VNC
        session.error = f"WebSocket broken: {exc}"
    finally:
        await _close_stream(stream)
    if not session.banner_done and session.state is None:
        session.state = State.OPEN_NOT_VNC
        session.error = session.error or "WebSocket closed before any RFB banner"
    return session.result(loop.time() - started)


async def _close_stream(stream: WebSocketStream) -> None:
    stream.close()
    try:
        async with asyncio.timeout(0.5):
            await stream.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        with contextlib.suppress(Exception):
            stream.transport.abort()


@dataclass(frozen=True)
class WebCheck:
    """What `check_web` read, and how many TCP connections it made to the target to read it
    (each one reached the server, or may have: a connect a deadline ended counts)."""

    result: ServiceResult
    connections: int


def connections_at_most(paths: Sequence[str] = WEBSOCKET_PATHS, fetch_page: bool = True) -> int:
    """The most TCP connections `check_web` makes: GET / and one upgrade per path."""
    return int(fetch_page) + len(paths)


async def probe_web(
    target: Target,
    options: Any = None,
    *,
    paths: Sequence[str] = WEBSOCKET_PATHS,
    tls: bool = False,
    fetch_page: bool = True,
    require_http: bool = False,
) -> ServiceResult:
    """Probe a web front end: GET / (identify), then RFB through the first accepted WebSocket.

    `options` is a `probe.ProbeOptions` (its `timeout` is the one deadline for everything).
    Returns the RFB facts exactly as a direct probe would report them, plus `extra.web`
    (`payloads.WebFrontEnd`). With `require_http` (a port not known for web front ends)
    nothing more is tried when GET / gets no HTTP answer: one request, no more. Never raises.
    """
    checked = await check_web(target, options, paths=paths, tls=tls, fetch_page=fetch_page,
                              require_http=require_http)
    return checked.result


async def check_web(
    target: Target,
    options: Any = None,
    *,
    paths: Sequence[str] = WEBSOCKET_PATHS,
    tls: bool = False,
    fetch_page: bool = True,
    require_http: bool = False,
    source: str | None = None,
    through_gateway: bool = True,
) -> WebCheck:
    """`probe_web`, with every connection made from the local address `source` when given,
    and the count of connections made (at most `connections_at_most(paths, fetch_page)`).

    Without `through_gateway`, a front page that identifies a gateway to a VNC server
    elsewhere (`GATEWAY_KINDS`) ends the check before any upgrade: that server would count
    the gateway's address, which `source` does not change."""
    from vncaudit.probe import ProbeOptions

    options = options or ProbeOptions()
    tally = _Tally()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + options.timeout
    http: WebFacts | None = None
    if fetch_page:
        try:
            http = await _front_page(target, options.timeout, deadline, tls, source, tally)
        except ConnectionRefusedError:
            closed = ServiceResult(target.host, target.port, State.CLOSED,
                                   hostname=target.hostname)
            return WebCheck(closed, tally.made)
    early = _no_websocket_to_try(target, http, require_http, loop.time() - started)
    if early is None and not through_gateway and http is not None \
            and http.kind in GATEWAY_KINDS:
        early = _gateway_not_opened(target, http, source, loop.time() - started)
    if early is not None:
        return WebCheck(early, tally.made)
    upgrades = await _open_first_websocket(target, paths, tls, deadline, source, tally)
    if upgrades.accepted is None:
        return WebCheck(_no_websocket_accepted(target, paths, http, upgrades.attempts,
                                               loop.time() - started), tally.made)
    stream = upgrades.accepted.stream
    result = await _rfb_through(target, stream, options, deadline)
    endpoint = WebSocketEndpoint(stream.url, upgrades.accepted.path, stream.subprotocol,
                                 stream.response.header("server"), stream.frames_received)
    web = WebFrontEnd("websocket", http, endpoint, upgrades.attempts)
    return WebCheck(replace(result.with_extra(web=web), elapsed=loop.time() - started),
                    tally.made)


def _gateway_not_opened(target: Target, http: WebFacts, source: str | None,
                        elapsed: float) -> ServiceResult:
    ours = f"our address {source}" if source else "our address"
    return ServiceResult(
        target.host, target.port, State.OPEN_NOT_VNC,
        error=f"a VNC web gateway ({http.kind}); no WebSocket opened from {ours}: the VNC "
              "server behind it counts the gateway's address, which is not ours to spend",
        hostname=target.hostname, elapsed=elapsed,
        extra=Extras(web=WebFrontEnd(None, http)))


async def _front_page(target: Target, timeout: float, deadline: float, tls: bool,
                      source: str | None = None, tally: _Tally | None = None) -> WebFacts:
    """GET / and what the page identifies; a failure is a `WebFacts` with its error, except
    a refused connection, which propagates (the port is closed: nothing more to try)."""
    try:
        async with asyncio.timeout_at(deadline):
            page = await http_get(target, "/", timeout=timeout, tls=tls, source=source,
                                  tally=tally)
        return identify_http(page)
    except TimeoutError:
        return WebFacts("none", error="no HTTP answer before the deadline")
    except ConnectionRefusedError:
        raise
    except (OSError, WebSocketError) as exc:
        return WebFacts("none", error=str(exc))


def _no_websocket_to_try(target: Target, http: WebFacts | None, require_http: bool,
                         elapsed: float) -> ServiceResult | None:
    """The result when GET / rules out a WebSocket (no HTTP where HTTP was required, or a
    Java viewer page); None when the upgrades are worth trying."""
    if require_http and (http is None or http.error is not None):
        return ServiceResult(target.host, target.port, State.OPEN_NOT_VNC,
                             error="no HTTP answer to GET /", hostname=target.hostname,
                             elapsed=elapsed, extra=Extras(web=WebFrontEnd(None, http)))
    if http is not None and http.kind == "java-viewer":
        # The classic viewer page only points at the RFB port; there is no WebSocket to open.
        return ServiceResult(
            target.host,
            target.port,
            State.OPEN_NOT_VNC,
            error="HTTP server handing out a Java VNC viewer"
            + (f" for RFB port {http.applet_port}" if http.applet_port else ""),
            hostname=target.hostname,
            elapsed=elapsed,
            extra=Extras(web=WebFrontEnd("http-java-viewer", http)),
        )
    return None


@dataclass(frozen=True)
class _Accepted:
    """The WebSocket an upgrade opened, and the path it was opened on."""

    stream: WebSocketStream
    path: str


@dataclass(frozen=True)
class _Upgrades:
    """The first WebSocket a path accepted (None: none did), and every upgrade tried."""

    accepted: _Accepted | None
    attempts: tuple[UpgradeAttempt, ...]


async def _open_first_websocket(target: Target, paths: Sequence[str], tls: bool,
                                deadline: float, source: str | None = None,
                                tally: _Tally | None = None) -> _Upgrades:
    """Try the upgrade on each path in turn until one is accepted or the deadline passes."""
    attempts: list[UpgradeAttempt] = []
    for path in paths:
        try:
            async with asyncio.timeout_at(deadline):
                stream = await open_websocket(target, path, tls=tls, source=source,
                                              tally=tally)
        except UpgradeRefused as exc:
            status = exc.response.status
            # 401/403: token or ticket gateways (docs/rfb.md §8.4 step 5)
            attempts.append(UpgradeAttempt(path, status, str(exc), exc.response.header("server")
                                           or None, True if status in (401, 403) else None))
            continue
        except TimeoutError:
            attempts.append(UpgradeAttempt(path, error="no answer to the upgrade before the "
                                           "deadline"))
            break
        except (OSError, WebSocketError) as exc:
            attempts.append(UpgradeAttempt(path, error=str(exc)))
            continue
        attempts.append(UpgradeAttempt(path, 101))
        return _Upgrades(_Accepted(stream, path), tuple(attempts))
    return _Upgrades(None, tuple(attempts))


def _no_websocket_accepted(target: Target, paths: Sequence[str], http: WebFacts | None,
                           attempts: tuple[UpgradeAttempt, ...], elapsed: float) -> ServiceResult:
    error = "no WebSocket accepted on " + ", ".join(paths)
    if http is not None and http.error is not None:
        error = f"{error}; HTTP: {http.error}"
    return ServiceResult(
        target.host,
        target.port,
        State.OPEN_NOT_VNC,
        error=error,
        hostname=target.hostname,
        elapsed=elapsed,
        extra=Extras(web=WebFrontEnd(None, http, None, attempts)),
    )
