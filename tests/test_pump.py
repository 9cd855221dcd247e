"""The one byte pump (`pump.RfbPump`) and the one chooser (`pump.Selection`).

The pump runs over real loopback connections to small scripted servers: it writes what the
client queued before it reads, hands the caller every event, stops reading when the client
expects nothing, and gives the bytes that came with ServerInit to the next phase. The chooser
is checked against the preferences the probe and the active checks rely on.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from vncaudit import rfb
from vncaudit.pump import RfbPump, Selection

from rfb_helpers import banner, server_init, type_list, u32

Read = Callable[[int], Awaitable[bytes]]
Script = Callable[[Read, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter, list[bytes]]]:
    """A loopback server running `script`; yields a client connection to it and the list of
    what the server read, chunk by chunk."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read_exactly(n: int) -> bytes:
            data = await reader.readexactly(n)
            seen.append(data)
            return data

        try:
            await script(read_exactly, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer, seen
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def none_38(read: Read, writer: asyncio.StreamWriter) -> None:
    writer.write(banner())
    await read(12)  # the client's version
    writer.write(type_list(1))
    await read(1)  # the selection
    writer.write(u32(0))
    await read(1)  # ClientInit
    # ServerInit and a Bell in one write: the Bell belongs to the next phase.
    writer.write(server_init(640, 480, b"pumped") + b"\x02")
    await writer.drain()
    await read(4)  # what the caller sends after the handshake
    writer.write(b"\x02\x02")
    await writer.drain()


def test_the_pump_writes_before_it_reads_and_hands_over_the_next_phase() -> None:
    async def run() -> None:
        async with scripted(none_38) as (reader, writer, seen):
            chunks: list[bytes] = []
            client = rfb.RfbClient()
            pump = RfbPump(reader, writer, client, chunks.append)
            events: list[object] = []
            while (event := await pump.next_event()) is not None:
                events.append(event)
                if isinstance(event, rfb.SecurityTypes):
                    client.select_security_type(1)
                elif isinstance(event, rfb.SecurityResult):
                    client.send_client_init(shared=True)
                elif isinstance(event, rfb.ServerInit):
                    break
            assert [type(e).__name__ for e in events] == [
                "ServerVersion", "SecurityTypes", "SecurityResult", "ServerInit"]
            assert client.trailing_data == (b"\x02", False)
            assert pump.take_trailing() == b"\x02" and pump.take_trailing() == b""
            await pump.send(b"ping")
            rest = b""
            while len(rest) < 2:
                rest += await pump.read()
            assert rest == b"\x02\x02"
            # The server read our version, our selection and ClientInit, in that order.
            assert seen[:3] == [b"RFB 003.008\n", b"\x01", b"\x01"] and seen[3] == b"ping"
            assert b"".join(chunks).endswith(b"pumped\x02" + b"\x02\x02")  # all reads seen

    asyncio.run(run())


def test_the_pump_stops_reading_when_the_client_expects_nothing() -> None:
    async def vncauth(read: Read, writer: asyncio.StreamWriter) -> None:
        writer.write(banner() + type_list(2))
        await writer.drain()
        await asyncio.sleep(5)  # says nothing more: a read would hang until the deadline

    async def run() -> None:
        async with scripted(vncauth) as (reader, writer, _):
            pump = RfbPump(reader, writer, rfb.RfbClient())
            assert isinstance(await pump.next_event(), rfb.ServerVersion)
            assert isinstance(await pump.next_event(), rfb.SecurityTypes)
            async with asyncio.timeout(1):  # our turn, no choice made: None, not a read
                assert await pump.next_event() is None

    asyncio.run(run())


def test_need_data_is_one_value_of_its_own_type() -> None:
    client = rfb.RfbClient()
    event = client.next_event()
    assert event is rfb.NEED_DATA and isinstance(event, rfb.NeedData)
    assert repr(event) == "NEED_DATA" and list(rfb.NeedData) == [rfb.NEED_DATA]
    client.receive_data(banner()[:5])
    assert client.next_event() is rfb.NEED_DATA and client.trailing_data == (b"RFB 0", False)
    client.receive_data(b"")
    assert client.trailing_data == (b"RFB 0", True)


PROBE = Selection(no_auth=True)  # what the probe may do: offered no-auth paths only
NO_INIT = Selection(no_auth=False)  # --no-init
WITH_PASSWORD = Selection(no_auth=True, vnc_auth=True)  # --password, --screenshot
AUDIT = Selection(no_auth=False, vnc_auth=True)  # --check-passwords
BYPASS = Selection(force_none=True)  # --active-checks: None though not offered


@pytest.mark.parametrize(("selection", "offered", "inside_tls", "chosen"), [
    (PROBE, [1, 2], False, 1),
    (NO_INIT, [1, 2], False, None),
    (PROBE, [19, 2], False, 19),  # TigerVNC: the sub-type list tells more than the DES type
    (PROBE, [2, 16], False, 16),
    (PROBE, [19, 2, 16], False, 19),  # TurboVNC
    (PROBE, [18, 2], False, 18),  # vino
    (Selection(no_auth=True, tls=False), [18, 2], False, None),
    (PROBE, [1, 16], True, 1),
    (PROBE, [19, 18, 2], True, None),  # inside TLS no second TLS layer
    (WITH_PASSWORD, [19, 2], False, 2),
    (WITH_PASSWORD, [1, 2], False, 1),  # no secret sent where none is needed
    (AUDIT, [1, 2], False, 2),
    (AUDIT, [13, 5], False, None),
    (BYPASS, [2], False, 1),
])
def test_one_chooser_for_every_connection(
    selection: Selection, offered: list[int], inside_tls: bool, chosen: int | None
) -> None:
    assert selection.security_type(offered, inside_tls) == chosen


def test_vencrypt_and_tight_choices() -> None:
    assert PROBE.vencrypt_subtype([258, 2, 257]) == 257
    assert PROBE.vencrypt_subtype([261, 260]) == 260
    assert PROBE.vencrypt_subtype([258, 2]) is None
    assert Selection(no_auth=True, tls=False).vencrypt_subtype([257]) is None
    assert WITH_PASSWORD.vencrypt_subtype([258, 257]) == 257  # None first, then TLSVnc
    assert AUDIT.vencrypt_subtype([258, 257]) == 258
    assert PROBE.tight_auth([2, 1]) == 1 and PROBE.tight_auth([2]) is None
    assert AUDIT.tight_auth([1, 2]) == 2 and NO_INIT.tight_auth([1]) is None


def test_a_server_that_does_not_wait_is_caught_by_the_probe() -> None:
    """The probe's own rule on top of the pump: bytes out of turn end the conversation."""
    from vncaudit.exceptions import RemoteProtocolError
    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions, Session, converse

    async def flood(read: Read, writer: asyncio.StreamWriter) -> None:
        writer.write(banner() + type_list(2) + struct.pack(">I", 0) * 64)
        await writer.drain()
        await asyncio.sleep(2)

    async def run() -> None:
        async with scripted(flood) as (reader, writer, _):
            session = Session(Target("127.0.0.1", 1), ProbeOptions())
            with pytest.raises(RemoteProtocolError, match="out of turn"):
                async with asyncio.timeout(1):
                    await converse(session, reader, writer)

    asyncio.run(run())
