"""The hostile farm: fake servers on loopback that misbehave the ways the internet does.

Each behaviour is a named asyncio handler listening on its own free port of 127.0.0.1. The farm
runs in a CHILD PROCESS (`python tests/hostile.py` prints one JSON line `{name: port}` and serves
until its stdin closes), so what the tests measure in their own process - memory under
tracemalloc, open fds, RSS, asyncio tasks - is the scanner's alone, never the farm's.

Use the `hostile_farm` fixture (session scope) or `Farm()` as a context manager; both expose
`ports: {behaviour: port}`. Every handler ends by itself (the client leaves, or 30 s pass), so a
farm never holds more than the connections of the last half minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HOLD = 30.0  # the longest any handler keeps a connection
BANNER = b"RFB 003.008\n"
CHALLENGE = bytes(range(16))  # the canned challenge of the "quiet" honeypot


def u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def server_init(name: bytes, width: int = 1024, height: int = 768) -> bytes:
    pf = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", width, height) + pf + u32(len(name)) + name


def tls_server_hello() -> bytes:
    # TLS 1.2, zero random, no session id, ECDHE-RSA-AES128-GCM, no compression, reneg ext.
    body = b"\x03\x03" + bytes(32) + b"\x00\xc0\x2f\x00" + b"\x00\x05\xff\x01\x00\x01\x00"
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(handshake).to_bytes(2, "big") + handshake


async def drain_until_closed(reader: asyncio.StreamReader) -> None:
    """Read and discard until the client leaves (or HOLD passes)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(HOLD):
            while await reader.read(65536):
                pass


async def talk_until_closed(reader: asyncio.StreamReader, talk: Awaitable[None]) -> None:
    """Run `talk` (writes only) until it ends or the client closes."""
    watch = asyncio.ensure_future(drain_until_closed(reader))
    speak = asyncio.ensure_future(talk)
    await asyncio.wait({watch, speak}, return_when=asyncio.FIRST_COMPLETED)
    for task in (watch, speak):
        task.cancel()
    # Exceptions are consumed: a client that left mid-write is how these conversations end.
    await asyncio.gather(watch, speak, return_exceptions=True)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def selected(reader: asyncio.StreamReader, expected: int) -> bool:
    """Read the client's selection; like real servers, the caller closes on anything else."""
    return (await reader.readexactly(1))[0] == expected


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Valid banner, then the client's 12-byte version."""
    await send(writer, BANNER)
    return await reader.readexactly(12)


# -- behaviours ----------------------------------------------------------------------------------


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, never say a byte (a tarpit or a firewall proxy)."""
    await drain_until_closed(reader)


async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid banner, one byte every 2 s (an endlessh-style tarpit)."""

    async def talk() -> None:
        for byte in BANNER:
            await send(writer, bytes([byte]))
            await asyncio.sleep(2.0)

    await talk_until_closed(reader, talk())


async def banner_no_newline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`RFB 003.008` without its newline, then waits for the client."""
    await send(writer, BANNER[:-1])
    await drain_until_closed(reader)


async def banner_1mib(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A first line of 1 MiB that starts like RFB."""
    await talk_until_closed(reader, send(writer, b"RFB " + b"9" * (1 << 20) + b"\n"))


def speaks_first(text: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send(writer, text)
        await drain_until_closed(reader)

    return handler


async def banner_then_rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Valid banner, read the client's version, then reset the connection (SO_LINGER 0)."""
    await greet(reader, writer)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def count255_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Security-type count 255 followed by 255 bytes of garbage (0 = Invalid among them)."""
    await greet(reader, writer)
    await send(writer, b"\xff" + bytes((i * 37 + 11) % 256 for i in range(255)))
    await drain_until_closed(reader)


async def reason_huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Count 0 (failure) with a reason length of 0xFFFFFFFF."""
    await greet(reader, writer)
    await send(writer, b"\x00" + u32(0xFFFFFFFF) + b"Too many")
    await drain_until_closed(reader)


BINARY_REASON = bytes((i * 53 + 7) % 256 for i in range(400)) + b"\x1b[2J\x1b]0;owned\x07"


async def reason_binary(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An RFB 3.3 server refusing with a 400-byte binary reason (control bytes, an ANSI clear
    screen and a title change among them): a valid message, unreadable to a person."""
    await send(writer, b"RFB 003.003\n")
    await reader.readexactly(12)
    await send(writer, u32(0, len(BINARY_REASON)) + BINARY_REASON)
    await drain_until_closed(reader)


async def reason_never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Count 0 and a reason length of 100, then the reason never arrives."""
    await greet(reader, writer)
    await send(writer, b"\x00" + u32(100))
    await drain_until_closed(reader)


async def _vencrypt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    subtypes: bytes) -> None:
    await greet(reader, writer)
    await send(writer, b"\x01\x13")
    if not await selected(reader, 19):
        return
    await send(writer, b"\x00\x02")
    await reader.readexactly(2)  # 0.2
    await send(writer, b"\x00" + subtypes)
    await drain_until_closed(reader)


async def vencrypt_absurd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """VeNCrypt 0.2 whose sub-type list has 255 entries, all unassigned numbers."""
    await _vencrypt(reader, writer, b"\xff" + u32(*range(1000, 1255)))


async def vencrypt_truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """VeNCrypt sub-type count 255, then only 3 sub-types and silence."""
    await _vencrypt(reader, writer, b"\xff" + u32(258, 2, 257))


async def tight_huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Tight (16) whose tunnel capability count is 0x7FFFFFFF."""
    await greet(reader, writer)
    await send(writer, b"\x01\x10")
    if not await selected(reader, 16):
        return
    await send(writer, u32(0x7FFFFFFF) + bytes(64))
    await drain_until_closed(reader)


async def name_4g(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """None, SecurityResult ok, then a ServerInit announcing a 4 GB desktop name."""
    await greet(reader, writer)
    await send(writer, b"\x01\x01")
    if not await selected(reader, 1):
        return
    await send(writer, u32(0))
    await reader.readexactly(1)  # ClientInit
    await send(writer, server_init(b"")[:20] + u32(0xFFFFFFFF) + b"x" * 4096)
    await drain_until_closed(reader)


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid banner, then an endless stream of 0xFF without waiting for the client."""
    block = b"\xff" * 65536

    async def talk() -> None:
        await send(writer, BANNER)
        async with asyncio.timeout(HOLD):
            while True:
                await send(writer, block)

    await talk_until_closed(reader, talk())


async def half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid banner, then FIN (shutdown of the write side) while still reading."""
    await send(writer, BANNER)
    writer.write_eof()
    await drain_until_closed(reader)


async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Banner and [1] at once, then it never reads again: its receive window fills and stays
    full (tiny SO_RCVBUF, reading paused), and it never answers the selection."""
    writer.transport.pause_reading()
    await send(writer, BANNER + b"\x01\x01")
    await asyncio.sleep(HOLD)


_every_other = itertools.count()


async def every_other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Even connections meet a normal VncAuth server, odd ones silence."""
    if next(_every_other) % 2:
        await drain_until_closed(reader)
        return
    await vnc_auth(reader, writer)


async def vnc_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved server offering VNC Authentication (the control)."""
    await greet(reader, writer)
    await send(writer, b"\x01\x02")
    if not await selected(reader, 2):
        return
    await send(writer, os.urandom(16))
    await reader.readexactly(16)
    await send(writer, u32(1, 21) + b"Authentication failed")
    await drain_until_closed(reader)


async def vnc_none(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A well-behaved server without authentication (the control)."""
    await greet(reader, writer)
    await send(writer, b"\x01\x01")
    if not await selected(reader, 1):
        return
    await send(writer, u32(0))
    await reader.readexactly(1)
    await send(writer, server_init(b"farm-none", 640, 480))
    await drain_until_closed(reader)


def accepts_anything(types: bytes, name: bytes, challenge: bytes | None = None) -> Handler:
    """A low-interaction honeypot: whatever type is selected, it says ok and serves a desktop."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await send(writer, bytes([len(types)]) + types)
        if await reader.readexactly(1) == b"\x02":
            await send(writer, challenge or os.urandom(16))
            await reader.readexactly(16)
        await send(writer, u32(0))
        await reader.readexactly(1)
        await send(writer, server_init(name))
        await drain_until_closed(reader)

    return handler


async def static_challenge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Like vnclowpot: [2] only, always the challenge "AAAAAAAAAAAAAAAA", any answer fails."""
    await greet(reader, writer)
    await send(writer, b"\x01\x02")
    if not await selected(reader, 2):
        return
    await send(writer, b"A" * 16)
    await reader.readexactly(16)
    await send(writer, u32(1, 29) + b"Invalid username or password.")


async def realvnc_411(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """RealVNC 4.1.1 (CVE-2006-2369): offers only [2] but accepts type 1 when selected."""
    await greet(reader, writer)
    await send(writer, b"\x01\x02")
    selected = await reader.readexactly(1)
    if selected == b"\x01":
        await send(writer, u32(0))
        await reader.readexactly(1)
        await send(writer, server_init(b"RealVNC 4.1.1 bypass"))
    elif selected == b"\x02":
        await send(writer, os.urandom(16))
        await reader.readexactly(16)
        await send(writer, u32(1, 22) + b"Authentication failure")
    else:
        return  # RealVNC closes on a type it does not know
    await drain_until_closed(reader)


BEHAVIOURS: dict[str, Handler] = {
    "silent": silent,
    "drip": drip,
    "banner-no-newline": banner_no_newline,
    "banner-1mib": banner_1mib,
    "http": speaks_first(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"),
    "ssh": speaks_first(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
    "smtp": speaks_first(b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n"),
    "tls-server-hello": speaks_first(tls_server_hello()),
    "banner-then-rst": banner_then_rst,
    "count255-garbage": count255_garbage,
    "reason-huge": reason_huge,
    "reason-never": reason_never,
    "reason-binary": reason_binary,
    "vencrypt-absurd": vencrypt_absurd,
    "vencrypt-truncated": vencrypt_truncated,
    "tight-huge": tight_huge,
    "name-4g": name_4g,
    "flood": flood,
    "half-close": half_close,
    "never-read": never_read,
    "every-other": every_other,
    "honeypot-any": accepts_anything(bytes([1, 2, 5, 6, 16, 18, 19, 30, 113]), b"honeypot"),
    "honeypot-every-type": accepts_anything(bytes(range(1, 41)), b"honeypot"),
    "honeypot-quiet": accepts_anything(b"\x02", b"honeypot", CHALLENGE),
    "honeypot-static-challenge": static_challenge,
    "realvnc-4.1.1": realvnc_411,
    "vnc-auth": vnc_auth,
    "vnc-none": vnc_none,
}


def _guarded(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HOLD + 1):
                await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError, TimeoutError):
            pass  # the client left: that is how most conversations here end
        finally:
            writer.transport.abort()

    return run


async def serve(host: str = "127.0.0.1") -> tuple[dict[str, int], list[asyncio.Server]]:
    """Start every behaviour on its own free port; returns ({name: port}, servers)."""
    ports: dict[str, int] = {}
    servers: list[asyncio.Server] = []
    for name, handler in BEHAVIOURS.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if name == "never-read":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # inherited on accept
        sock.bind((host, 0))
        server = await asyncio.start_server(_guarded(handler), sock=sock, backlog=256)
        servers.append(server)
        ports[name] = sock.getsockname()[1]
    return ports, servers


async def _main() -> None:
    ports, servers = await serve()
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for server in servers:
        server.close()
    os._exit(0)  # handlers still holding connections need no goodbye; the kernel closes them


class Farm:
    """The farm in a child process; `ports` maps behaviour names to loopback ports."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}
        self.host = "127.0.0.1"

    def start(self) -> Farm:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the hostile farm did not start")
        self.ports = json.loads(line)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by its Popen handle
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Farm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def hostile_farm() -> Iterator[Farm]:
    """The whole farm, started once per session on free loopback ports."""
    with Farm() as farm:
        yield farm


if __name__ == "__main__":
    asyncio.run(_main())
