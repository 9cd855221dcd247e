"""How an active check gets its connection: TCP by default, or anything shaped like a stream.

Owns: `Connector` (how a check gets its connection), the default `tcp_connector`, one from a
given local address (`bound_connector`), and `close_writer`, which never waits on a peer that
does not answer the close. The stream shapes themselves (`ByteReader` / `ByteWriter`, so
`websocket.WebSocketStream` can stand in for TCP) are `pump`'s, re-exported here.

Must not: speak RFB, decide anything about a handshake, or import anything of the package but
`models` and `pump`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from vncaudit.models import Target
from vncaudit.pump import READ_CHUNK as READ_CHUNK
from vncaudit.pump import ByteReader as ByteReader
from vncaudit.pump import ByteWriter as ByteWriter

Connector = Callable[[Target], Awaitable[tuple[ByteReader, ByteWriter]]]


async def tcp_connector(target: Target) -> tuple[ByteReader, ByteWriter]:
    """The default transport: a plain TCP connection to (host, port)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    return reader, writer


def bound_connector(local: str) -> Connector:
    """TCP connections made from the local address `local` (another loopback address, when
    the connection ledger counts the default one as spent)."""

    async def connect(target: Target) -> tuple[ByteReader, ByteWriter]:
        reader, writer = await asyncio.open_connection(target.host, target.port,
                                                       local_addr=(local, 0))
        return reader, writer

    return connect


async def close_writer(writer: ByteWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        transport = getattr(writer, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()
