"""RFB 3.7 servers that offer None: the probe must send ClientInit right after selecting it.

3.7 has no SecurityResult after None (rfbproto §7.2.1), so nothing else would prompt the
ClientInit; a server of that version (Debian's TightVNC 1.3 with -nolisten and an empty
password list, old RealVNC 4.0) would otherwise wait and the desktop name would stay unread.
"""

from __future__ import annotations

import asyncio
import struct

from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import ProbeOptions, probe


def _server_init(name: bytes) -> bytes:
    pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", 800, 600) + pixel_format + struct.pack(">I", len(name)) + name


async def _serve_37(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    seen: list[bytes]) -> None:
    try:
        writer.write(b"RFB 003.007\n")
        await writer.drain()
        seen.append(await reader.readexactly(12))
        writer.write(b"\x01\x01")  # one type: None
        await writer.drain()
        seen.append(await reader.readexactly(1))  # the selection
        seen.append(await reader.readexactly(1))  # ClientInit, with no SecurityResult between
        writer.write(_server_init(b"rfb37-desktop"))
        await writer.drain()
        await reader.read(1)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def test_rfb37_none_reads_server_init() -> None:
    async def run() -> tuple[list[bytes], ServiceResult]:
        seen: list[bytes] = []
        server = await asyncio.start_server(
            lambda r, w: _serve_37(r, w, seen), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await probe(Target("127.0.0.1", port), ProbeOptions(timeout=3.0))
        return seen, result

    seen, result = asyncio.run(run())
    assert seen[:3] == [b"RFB 003.007\n", b"\x01", b"\x01"]  # ClientInit shared=1
    assert result.state is State.VNC
    facts = result.rfb
    assert facts is not None and facts.framebuffer is not None
    assert facts.client_version == "3.7"
    assert facts.auth_required is False
    assert facts.desktop_name == "rfb37-desktop"
    assert (facts.framebuffer.width, facts.framebuffer.height) == (800, 600)
