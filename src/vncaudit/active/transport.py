"""The byte transport of the active checks: asyncio streams, or anything shaped like them.

Owns: the `ByteReader` / `ByteWriter` protocols a check talks to (so `websocket.WebSocketStream`
can stand in for TCP), `Connector` (how a check gets its connection), the default
`tcp_connector`, and `_close`, which never waits on a peer that does not answer the close.

Must not: speak RFB, decide anything about a handshake, or import anything of the package but
`models`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from vncaudit.models import Target

READ_CHUNK: Final = 65536


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def start_tls(self, sslcontext: ssl.SSLContext) -> None: ...


Connector = Callable[[Target], Awaitable[tuple[ByteReader, ByteWriter]]]


async def tcp_connector(target: Target) -> tuple[ByteReader, ByteWriter]:
    """The default transport: a plain TCP connection to (host, port)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    return reader, writer


async def _close(writer: ByteWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        transport = getattr(writer, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()
