"""How an active check gets its connection: TCP by default, or anything shaped like a stream.

Owns: `Connector` (how a check gets its connection), the default `tcp_connector` and one from
a given local address (`bound_connector`). The stream shapes (`ByteReader` / `ByteWriter`, so
`websocket.WebSocketStream` can stand in for TCP) and `close_writer` are `pump`'s, re-exported
here.

Must not: speak RFB, decide anything about a handshake, or import anything of the package but
`models` and `pump`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from vncaudit.models import Target
from vncaudit.pump import READ_CHUNK as READ_CHUNK
from vncaudit.pump import ByteReader as ByteReader
from vncaudit.pump import ByteWriter as ByteWriter
from vncaudit.pump import close_writer as close_writer

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
