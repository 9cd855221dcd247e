"""The probe (`probe.probe`) over the byte pump, against scripted servers.

Each server is an asyncio server on 127.0.0.1 in this process that plays one byte sequence:
what it writes, what it reads (recorded, so a test sees exactly what the probe sent), pauses,
and whether it hangs up or holds the connection open. No real VNC server: the cases are the
protocol's forms, one at a time, and the ways a server can stop in the middle of them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from vncaudit.basics import CONNECT_CUT, connect_cut
from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import (
    ATEN_TIGHT,
    CLOSED_AFTER_VERSION,
    HELD_AFTER_VERSION,
    ProbeOptions,
    probe,
)

from rfb_helpers import banner, reason, server_init, type_list, u32

# The probe closes within 0.5 s of its deadline even when the peer does not read; plus the
# scheduling of a busy machine.
SLACK = 1.5


class _Hold:
    """Script step: say nothing more and keep the connection open until the probe closes it."""


HOLD = _Hold()


@dataclass(frozen=True)
class Pause:
    """Script step: wait this many seconds before the next step."""

    seconds: float


# A step: bytes to write, an int number of bytes to read (recorded), a Pause, or HOLD. When the
# steps run out the server closes the connection.
Step = bytes | int | Pause | _Hold


@dataclass(frozen=True)
class Run:
    """A probe's result, what the scripted server read from it, and how long it took."""

    result: ServiceResult
    read: bytes
    seconds: float


async def _play(steps: Sequence[Step], reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, read: bytearray) -> None:
    try:
        for step in steps:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif isinstance(step, int):
                read += await reader.readexactly(step)
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            else:
                while chunk := await reader.read(4096):
                    read += chunk
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_script(steps: Sequence[Step], timeout: float = 2.0, **options: Any) -> Run:
    """Probe a server playing `steps` with `ProbeOptions(timeout, **options)`."""

    async def main() -> Run:
        read = bytearray()
        server = await asyncio.start_server(
            lambda r, w: _play(steps, r, w, read), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            started = time.monotonic()
            result = await probe(Target("127.0.0.1", port),
                                 ProbeOptions(timeout=timeout, **options))
            seconds = time.monotonic() - started
        return Run(result, bytes(read), seconds)

    return asyncio.run(main())


def none_38(name: bytes = b"scripted") -> list[Step]:
    """An RFB 3.8 server that offers only None and sends its ServerInit."""
    return [banner(3, 8), 12, type_list(1), 1, u32(0), 1, server_init(800, 600, name), HOLD]


# -- the banner --------------------------------------------------------------------------------


@pytest.mark.parametrize(("major", "minor", "answer"), [
    (3, 3, b"RFB 003.003\n"), (3, 5, b"RFB 003.003\n"), (3, 7, b"RFB 003.007\n"),
    (3, 8, b"RFB 003.008\n"), (3, 16, b"RFB 003.003\n"), (3, 889, b"RFB 003.008\n"),
    (4, 1, b"RFB 003.008\n"), (5, 0, b"RFB 003.008\n"),
])
def test_the_banner_is_answered_with_the_version_the_client_speaks(
        major: int, minor: int, answer: bytes) -> None:
    run = run_script([banner(major, minor), 12])
    assert run.read == answer
    facts = run.result.rfb
    assert facts is not None
    assert facts.banner == banner(major, minor).decode()
    assert facts.server_version == f"{major}.{minor}"
    assert facts.client_version == f"{int(answer[4:7])}.{int(answer[8:11])}"
    # It hung up where the server sends its security types: a refusal without a reason, as
    # LibVNCServer refuses (banner first, then the application's newClientHook), not broken RFB.
    assert run.result.state is State.VNC and run.result.error is None
    assert facts.notes == (CLOSED_AFTER_VERSION,) and facts.auth_required is None


def test_a_version_no_client_answers_is_kept_and_nothing_is_sent() -> None:
    """0.0 is the UltraVNC repeater, which wants an ID, not a version."""
    run = run_script([banner(0, 0), HOLD])
    assert run.read == b""
    facts = run.result.rfb
    assert facts is not None and facts.server_version == "0.0"
    assert facts.client_version is None
    assert "server version 0.0 not answered" in facts.notes
    assert run.result.state is State.VNC
    assert run.seconds < 1.0  # it stopped at once, not at the deadline


def test_a_handshake_sent_one_byte_at_a_time_reads_the_same() -> None:
    whole = run_script(none_38(), update_wait=0)
    dribble: list[Step] = []
    for step in none_38():
        if isinstance(step, bytes):
            dribble += [bytes([b]) for b in step]
        else:
            dribble.append(step)
    pieces = run_script(dribble, update_wait=0)
    assert whole.result.state is pieces.result.state is State.VNC
    assert whole.result.rfb == pieces.result.rfb
    assert whole.read == pieces.read == b"RFB 003.008\n\x01\x01"
    assert pieces.result.transcript_hex == whole.result.transcript_hex


@pytest.mark.parametrize(("first", "guess"), [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "ssh"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "http"),
    (b"220 mail.example ESMTP\r\n", "smtp/ftp"),
])
def test_a_server_speaking_another_protocol_is_open_not_vnc(first: bytes, guess: str) -> None:
    run = run_script([first, HOLD])
    assert run.result.state is State.OPEN_NOT_VNC
    assert run.result.rfb is None
    assert run.result.extra.protocol_guess == guess
    assert f"not RFB: looks like {guess}" in (run.result.error or "")
    assert run.read == b""  # nothing was sent to it
    assert run.seconds < 1.0


def test_a_malformed_banner_is_malformed() -> None:
    run = run_script([b"RFB 003.0x8\n", HOLD])
    assert run.result.state is State.MALFORMED
    assert "malformed RFB banner" in (run.result.error or "")
    assert run.read == b""


# -- security-type lists -------------------------------------------------------------------------


def test_rfb38_list_with_none_reads_the_server_init() -> None:
    run = run_script(none_38(b"desk 38"), update_wait=0)
    # The version, the selection (None) and ClientInit with shared=1, nothing else.
    assert run.read == b"RFB 003.008\n\x01\x01"
    result = run.result
    assert result.state is State.VNC and result.error is None
    facts = result.rfb
    assert facts is not None and facts.framebuffer is not None
    assert [t.id for t in facts.security_types] == [1]
    assert facts.selected_type == 1 and facts.security_result == "ok"
    assert facts.auth_required is False
    assert facts.desktop_name == "desk 38"
    assert (facts.framebuffer.width, facts.framebuffer.height) == (800, 600)
    assert facts.security_types_server_chosen is False


def test_rfb38_list_without_none_selects_nothing() -> None:
    run = run_script([banner(3, 8), 12, type_list(2, 5), HOLD])
    assert run.read == b"RFB 003.008\n"  # no selection: a password is never tried
    facts = run.result.rfb
    assert facts is not None
    assert [t.id for t in facts.security_types] == [2, 5]
    assert facts.selected_type is None and facts.auth_required is True
    assert run.result.state is State.VNC
    assert run.seconds < 1.0


def test_a_list_with_a_type_twice_keeps_one_and_notes_it() -> None:
    run = run_script([banner(3, 8), 12, type_list(2, 5, 2), HOLD])
    facts = run.result.rfb
    assert facts is not None
    assert [t.id for t in facts.security_types] == [2, 5]
    assert "server listed duplicate security types: 2,5,2" in facts.notes
    honeypot = run.result.extra.suspected_honeypot
    assert honeypot is not None
    assert "security types listed more than once: [2]" in honeypot.reasons


def test_rfb37_list_with_none_sends_client_init_without_a_security_result() -> None:
    run = run_script([banner(3, 7), 12, type_list(2, 1), 1, 1, server_init(640, 480, b"37"),
                      HOLD], update_wait=0)
    assert run.read == b"RFB 003.007\n\x01\x01"
    facts = run.result.rfb
    assert facts is not None
    assert facts.security_result is None and facts.desktop_name == "37"
    assert facts.auth_required is False


def test_rfb33_server_chosen_none_sends_client_init_at_once() -> None:
    run = run_script([banner(3, 3), 12, u32(1), 1, server_init(1024, 768, b"33"), 10,
                      b"\x02", HOLD])
    # No selection in 3.3: ClientInit follows the type, then one FramebufferUpdateRequest
    # (not incremental, 1x1 at 0,0) since no SecurityResult vouched for the session.
    assert run.read == (b"RFB 003.003\n\x01"
                        + bytes([3, 0]) + (0).to_bytes(4, "big") + (1).to_bytes(2, "big") * 2)
    facts = run.result.rfb
    assert facts is not None
    assert facts.security_types_server_chosen is True
    assert [t.id for t in facts.security_types] == [1]
    assert facts.selected_type == 1 and facts.auth_required is False
    assert facts.desktop_name == "33"
    assert facts.update_answered is True  # the Bell answered the request


def test_rfb33_session_that_answers_no_update_request_is_recorded_as_such() -> None:
    run = run_script([banner(3, 3), 12, u32(1), 1, server_init(1024, 768, b"held"), HOLD],
                     update_wait=0.3)
    facts = run.result.rfb
    assert facts is not None and facts.desktop_name == "held"
    assert facts.update_answered is False
    assert facts.update_seconds is not None and 0.25 <= facts.update_seconds < 0.3 + SLACK
    assert run.result.state is State.VNC and run.result.error is None


def test_rfb33_server_chosen_vnc_auth_is_never_answered() -> None:
    run = run_script([banner(3, 3), 12, u32(2), bytes(range(16)), HOLD])
    assert run.read == b"RFB 003.003\n"  # no response to the challenge
    facts = run.result.rfb
    assert facts is not None
    assert facts.security_types_server_chosen is True
    assert [t.id for t in facts.security_types] == [2]
    assert facts.auth_required is True
    assert run.seconds < 1.0


def test_rfb38_failed_security_result_keeps_its_reason() -> None:
    run = run_script([banner(3, 8), 12, type_list(1), 1,
                      u32(1) + reason(b"access denied by policy"), HOLD])
    facts = run.result.rfb
    assert facts is not None
    assert facts.security_result == "failed"
    assert facts.failure_reason == "access denied by policy"
    assert facts.desktop_name is None
    assert run.read == b"RFB 003.008\n\x01"  # no ClientInit after a failure


# -- the failure reason instead of a list ----------------------------------------------------------


@pytest.mark.parametrize(("version", "head"), [((3, 3), u32(0)), ((3, 8), b"\x00")])
def test_a_failure_reason_instead_of_the_types_is_read(version: tuple[int, int],
                                                       head: bytes) -> None:
    """3.3 sends a U32 0 then the reason; 3.7 and 3.8 a count of 0 then the reason."""
    run = run_script([banner(*version), 12, head + reason(b"Server is busy, try later")])
    facts = run.result.rfb
    assert facts is not None
    assert facts.failure_reason == "Server is busy, try later"
    assert facts.security_types == ()
    assert run.result.state is State.VNC


@pytest.mark.parametrize("version", [(3, 3), (3, 8)])
def test_a_lockout_reason_is_blacklisted(version: tuple[int, int]) -> None:
    head = u32(0) if version == (3, 3) else b"\x00"
    run = run_script([banner(*version), 12,
                      head + reason(b"Too many security failures"), HOLD])
    assert run.result.state is State.BLACKLISTED
    assert run.result.rfb is not None
    assert run.result.rfb.failure_reason == "Too many security failures"


# -- truncated reads ------------------------------------------------------------------------------


def test_a_list_cut_short_by_a_close_is_malformed() -> None:
    run = run_script([banner(3, 8), 12, bytes([3, 2])])  # three types announced, one sent
    assert run.result.state is State.MALFORMED
    assert "while awaiting security types" in (run.result.error or "")
    assert run.seconds < 1.0


def test_a_banner_cut_short_by_a_close_is_malformed() -> None:
    run = run_script([b"RFB 003.0"])
    assert run.result.state is State.MALFORMED
    assert run.result.error == ("connection closed with 9 unparsed bytes while "
                                "awaiting ProtocolVersion")
    assert run.result.rfb is None
    assert run.read == b""


def test_bytes_that_are_no_banner_cut_short_by_a_close_are_not_vnc() -> None:
    run = run_script([b"\x00\x01garbage"])
    assert run.result.state is State.OPEN_NOT_VNC
    assert run.result.rfb is None


def test_a_server_init_cut_short_by_a_close_is_malformed() -> None:
    whole = server_init(800, 600, b"cut")
    run = run_script([banner(3, 8), 12, type_list(1), 1, u32(0), 1, whole[:10]])
    assert run.result.state is State.MALFORMED
    assert "unparsed bytes while awaiting ServerInit" in (run.result.error or "")
    facts = run.result.rfb
    assert facts is not None and facts.security_result == "ok" and facts.desktop_name is None


def test_a_reason_that_stalls_mid_string_is_malformed_at_the_deadline() -> None:
    run = run_script([banner(3, 8), 12, b"\x00" + u32(40) + b"short", HOLD], timeout=0.5)
    assert run.result.state is State.MALFORMED
    assert run.result.error is not None
    assert run.result.error.startswith("incomplete message at the deadline of 0.5 s")
    assert 0.45 <= run.seconds < 0.5 + SLACK


def test_the_transcript_is_what_the_server_sent_and_bounded() -> None:
    sent = banner(3, 8) + type_list(2, 5)
    run = run_script([banner(3, 8), 12, type_list(2, 5), HOLD])
    assert bytes.fromhex(run.result.transcript_hex) == sent
    short = run_script([banner(3, 8), 12, type_list(2, 5), HOLD], transcript_limit=8)
    assert bytes.fromhex(short.result.transcript_hex) == sent[:8]


# -- timeouts --------------------------------------------------------------------------------------


def test_a_silent_server_is_a_tarpit_at_the_deadline() -> None:
    run = run_script([HOLD], timeout=0.5)
    assert run.result.state is State.TARPIT
    assert run.result.error == "connected, no complete banner within 0.5 s (0 bytes received)"
    assert 0.45 <= run.seconds < 0.5 + SLACK


def test_a_dripping_banner_is_a_tarpit_with_the_bytes_counted() -> None:
    run = run_script([b"R", Pause(0.1), b"F", Pause(0.1), b"B", HOLD], timeout=0.5)
    assert run.result.state is State.TARPIT
    assert "(3 bytes received)" in (run.result.error or "")


def test_a_banner_without_its_newline_is_malformed_at_the_deadline() -> None:
    run = run_script([b"RFB 003.008", HOLD], timeout=0.5)
    assert run.result.state is State.MALFORMED
    assert "not terminated by a newline within 0.5 s" in (run.result.error or "")


def test_a_server_silent_after_its_banner_is_held_not_a_tarpit() -> None:
    # gnome-remote-desktop's 'prompt': the banner, then nothing read or sent until its user
    # answers (docs/rfb.md §1.2, §6.2).
    run = run_script([banner(3, 8), HOLD], timeout=0.5)
    assert run.result.state is State.VNC
    assert run.result.error == "deadline of 0.5 s reached while awaiting security types"
    facts = run.result.rfb
    assert facts is not None and facts.notes == (HELD_AFTER_VERSION,)
    assert facts.auth_required is None and facts.security_types == ()
    # Stalled inside a list is broken, not held: no such note.
    cut = run_script([banner(3, 8), 12, bytes([3, 2]), HOLD], timeout=0.5)
    assert cut.result.state is State.MALFORMED and cut.result.rfb is not None
    assert HELD_AFTER_VERSION not in cut.result.rfb.notes


def test_aten_ikvm_answers_the_tight_selection_with_its_24_bytes() -> None:
    # docs/rfb.md §4.3: 24 bytes after the selection of 16 (their first word far above any
    # tunnel count), then the server waits for a user name and a password, never sent.
    blob = bytes.fromhex("ffff0000") + bytes(range(1, 21))
    run = run_script([banner(3, 8), 12, type_list(16), 1, blob, HOLD], timeout=2.0)
    assert run.read == banner(3, 8) + b"\x10"  # nothing after the selection
    assert run.result.state is State.VNC and run.result.error is None
    facts = run.result.rfb
    assert facts is not None and facts.notes == (f"{ATEN_TIGHT}: {blob.hex()}",)
    assert facts.auth_required is True and facts.tight is None
    assert run.seconds < 1.5  # it stops at once: no deadline


def test_a_server_that_stops_after_the_selection_keeps_its_facts() -> None:
    run = run_script([banner(3, 8), 12, type_list(1), 1, HOLD], timeout=0.5)
    assert run.result.state is State.VNC
    assert run.result.error == "deadline of 0.5 s reached while awaiting SecurityResult"
    facts = run.result.rfb
    assert facts is not None and [t.id for t in facts.security_types] == [1]
    assert 0.45 <= run.seconds < 0.5 + SLACK


def test_a_refused_port_is_closed() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = asyncio.run(probe(Target("127.0.0.1", port), ProbeOptions(timeout=2.0)))
    assert result.state is State.CLOSED
    assert result.rfb is None and result.transcript_hex == ""


def test_a_deadline_during_the_connect_itself_is_a_cut_connect() -> None:
    """A listener whose accept queue is full drops each SYN (Linux counts ListenOverflows):
    the probe's own connect is still in progress at its deadline. That verdict is not the
    plain "no answer" of discovery: the handshake may have completed unseen, so the ledger
    charges it (vncaudit.basics.connect_cut)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    try:
        for _ in range(3):  # fill the queue: never accepted
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            queued.append(client)
        time.sleep(0.1)
        started = time.monotonic()
        result = asyncio.run(probe(Target("127.0.0.1", port), ProbeOptions(timeout=0.4)))
        seconds = time.monotonic() - started
    finally:
        for client in queued:
            client.close()
        listener.close()
    assert result.state is State.FILTERED
    assert result.error == CONNECT_CUT and connect_cut(result.state, result.error)
    assert 0.35 <= seconds < 0.4 + SLACK


def test_a_handed_over_connection_gets_its_whole_deadline_from_now() -> None:
    """The engine's discovery connects; the probe takes the socket over and its deadline
    starts then, not at the connect."""

    async def main() -> tuple[ServiceResult, float]:
        server = await asyncio.start_server(
            lambda r, w: _play(none_38(), r, w, bytearray()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            await asyncio.sleep(0.6)  # longer than the probe's timeout below
            started = time.monotonic()
            result = await probe(Target("127.0.0.1", port),
                                 ProbeOptions(timeout=0.5, update_wait=0), sock=sock)
            return result, time.monotonic() - started

    result, seconds = asyncio.run(main())
    assert result.state is State.VNC and result.error is None
    assert result.rfb is not None and result.rfb.desktop_name == "scripted"
    assert seconds < 0.5 + SLACK


# -- after an unvouched ServerInit: the one update request ---------------------------------------


def test_a_deadline_during_the_update_wait_records_it_unanswered_not_broken() -> None:
    run = run_script([banner(3, 3), 12, u32(1), 1, server_init(800, 600, b"held"), HOLD],
                     timeout=1.0, update_wait=5.0)
    facts = run.result.rfb
    assert facts is not None and facts.update_answered is False
    assert facts.update_seconds is not None and facts.update_seconds < 1.0 + SLACK
    assert run.result.state is State.VNC and run.result.error is None
    assert run.seconds < 1.0 + SLACK


def test_a_close_after_server_init_is_an_unanswered_update_with_a_note() -> None:
    run = run_script([banner(3, 7), 12, type_list(1), 2, server_init(800, 600, b"shut"), 10])
    facts = run.result.rfb
    assert facts is not None and facts.update_answered is False
    assert any(n.startswith("connection closed after ServerInit") for n in facts.notes)
    assert run.seconds < 1.0  # the close ends the wait at once


# -- cancelled ------------------------------------------------------------------------------------


def test_a_cancelled_probe_closes_its_connection_at_once() -> None:
    """The engine cancels the probes in flight when its consumer stops: each connection must
    close then, not linger until the probe's deadline."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        closed = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(banner(3, 8))
            try:
                await reader.read()  # until the probe's side goes away
            except ConnectionError:
                pass
            finally:
                closed.set()
                writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            task = asyncio.create_task(probe(Target("127.0.0.1", port),
                                             ProbeOptions(timeout=10)))
            await asyncio.sleep(0.3)
            assert not task.done()
            cancelled = loop.time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(closed.wait(), 5)
            return loop.time() - cancelled

    assert asyncio.run(main()) < 1.0


def test_a_reset_after_the_version_exchange_is_the_same_refusal_as_a_close() -> None:
    """A server that closes with the client's version reply still unread makes its kernel
    reset the connection instead of closing it: after the version exchange that is the same
    refusal without a reason as a close (LibVNCServer's, whichever the timing gave)."""
    import select
    import struct
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(banner(3, 8))
        select.select([conn], [], [], 5)  # the version reply is here, and left unread
        got.append(conn.recv(12, socket.MSG_PEEK))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # unread data: the kernel sends RST, never FIN

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = asyncio.run(probe(Target("127.0.0.1", port), ProbeOptions(timeout=3.0)))
    finally:
        thread.join(5)
        listener.close()
    assert got == [b"RFB 003.008\n"]
    assert result.state is State.VNC and result.error is None, result.error
    assert result.rfb is not None and result.rfb.notes == (CLOSED_AFTER_VERSION,)
