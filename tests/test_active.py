"""Active checks against tiny asyncio fake servers (no real VNC server needed).

The fakes speak just enough RFB 3.8 to exercise each decision: a RealVNC 4.1.1-like server that
accepts the un-offered None (CVE-2006-2369), a VncAuth server that verifies the DES response,
one that locks out after N connections, and one that hangs up after the challenge.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from vncaudit import active
from vncaudit.models import NamedType, RfbFacts, State, Target
from vncaudit.payloads import HoneypotChecks, ScreenSize
from vncaudit.probe import probe
from vncaudit.vncauth import vnc_auth_response


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test with asyncio.run (the suite has no async pytest plugin)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


SERVER_INIT = struct.pack(">HH", 64, 48) + struct.pack(
    ">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0
)


def server_init(name: bytes) -> bytes:
    return SERVER_INIT + struct.pack(">I", len(name)) + name


def failure(reason: bytes) -> bytes:
    return struct.pack(">I", 1) + struct.pack(">I", len(reason)) + reason


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[tuple[Target, list[int]]]:
    """Serve `handler(reader, writer, connection_number)`; yields (target, [connections])."""
    count = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        try:
            await handler(reader, writer, count[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target("127.0.0.1", port), count
    finally:
        server.close()
        await server.wait_closed()


async def realvnc_411(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """RealVNC 4.1.1 behaviour: offers [2] but honours a selection of 1 (CVE-2006-2369)."""
    writer.write(b"RFB 003.008\n")
    await reader.readexactly(12)
    writer.write(b"\x01\x02")
    (choice,) = await reader.readexactly(1)
    if choice == 1:
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # ClientInit
        writer.write(server_init(b"realvnc-4.1.1-fake"))
        await writer.drain()
        await reader.read(100)
    elif choice == 2:
        writer.write(os.urandom(16))
        await reader.readexactly(16)
        writer.write(failure(b"Authentication failure"))
        await writer.drain()


def vncauth_server(password: str, lock_after: int | None = None) -> Handler:
    """VncAuth only; checks the DES response; "Too many" from connection `lock_after` on."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if lock_after is not None and n >= lock_after:
            reason = b"Too many security failures"
            writer.write(b"RFB 003.003\n" + struct.pack(">II", 0, len(reason)) + reason)
            await writer.drain()
            return
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x02")
        (choice,) = await reader.readexactly(1)
        if choice != 2:
            return  # like TigerVNC: close without a word
        challenge = os.urandom(16)
        writer.write(challenge)
        response = await reader.readexactly(16)
        if response == vnc_auth_response(password, challenge):
            writer.write(struct.pack(">I", 0))
            await reader.readexactly(1)
            writer.write(server_init(b"fake-protected"))
        else:
            writer.write(failure(b"Authentication failure"))
        await writer.drain()

    return handler


async def hangs_up_after_challenge(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
) -> None:
    writer.write(b"RFB 003.008\n")
    await reader.readexactly(12)
    writer.write(b"\x01\x02")
    await reader.readexactly(1)
    writer.write(os.urandom(16))
    await reader.readexactly(16)
    # no SecurityResult: the connection just ends


VNCAUTH_FACTS = RfbFacts(
    banner="RFB 003.008\n",
    security_types=(NamedType(2, "VNC Authentication"),),
    auth_required=True,
)


@sync
async def test_cve_2006_2369_detected_on_a_realvnc_411_like_server() -> None:
    async with fake_server(realvnc_411) as (target, conns):
        out = await active.check_unoffered_none(target, facts=VNCAUTH_FACTS)
    assert out.status == "vulnerable"
    assert out.offered_types == (2,)
    assert "CVE-2006-2369" in out.cves
    assert out.handshake is not None and out.handshake.desktop_name == "realvnc-4.1.1-fake"
    assert out.evidence is not None and "ServerInit received" in out.evidence
    assert conns[0] == 1


@sync
async def test_cve_check_on_a_sound_server_and_when_not_applicable() -> None:
    async with fake_server(vncauth_server("x")) as (target, conns):
        out = await active.check_unoffered_none(target, facts=VNCAUTH_FACTS)
        assert out.status == "not-vulnerable"
        none_facts = RfbFacts("RFB 003.008\n", security_types=(NamedType(1, "None"),))
        skipped = await active.check_unoffered_none(target, facts=none_facts)
        assert skipped.status == "not-applicable"
        assert conns[0] == 1  # nothing sent when None is offered openly


@sync
async def test_password_found_and_masked() -> None:
    async with fake_server(vncauth_server("letmein1")) as (target, conns):
        out = await active.check_passwords(target, ["nope", "letmein1"], facts=VNCAUTH_FACTS)
        shown = await active.check_passwords(
            target, ["letmein1"], facts=VNCAUTH_FACTS, show_passwords=True
        )
    assert out.status == "found" and out.found is True
    assert out.password == active.MASK and out.attempts == 2
    assert out.server_init is not None and out.server_init.desktop_name == "fake-protected"
    assert "letmein1" not in repr(out) and "letmein1" not in repr(out.to_dict())
    assert shown.password == "letmein1" and shown.password_shown is True
    assert conns[0] == 3


@sync
async def test_budget_counts_the_probe_and_never_reaches_the_fifth_connection() -> None:
    # lock_after=5: the 5th connection would be refused; the probe was connection 1.
    async with fake_server(vncauth_server("secret", lock_after=5)) as (target, conns):
        conns[0] = 1  # the probe's connection
        out = await active.check_passwords(
            target, [f"w{i}" for i in range(10)], facts=VNCAUTH_FACTS
        )
        assert conns[0] == 4
    assert out.status == "not-found" and out.attempts == 3 and out.budget == 3
    assert out.stop_reason is not None and "budget of 3" in out.stop_reason
    assert [r.outcome for r in out.results] == ["auth-failed"] * 3
    assert active.attempt_budget(3, 2) == 2 and active.attempt_budget(10, 1) == 3
    assert active.attempt_budget(3, 4) == 0
    # A product that counts no connections (LibVNCServer, QEMU): only the ask limits.
    assert active.attempt_budget(10, None) == 10 and active.attempt_budget(3, None) == 3


@sync
async def test_stops_at_the_first_lockout_message() -> None:
    async with fake_server(vncauth_server("secret", lock_after=2)) as (target, conns):
        out = await active.check_passwords(
            target, ["a", "b", "c"], facts=VNCAUTH_FACTS, connections_used=0
        )
        assert conns[0] == 2
    assert out.status == "stopped" and out.attempts == 2
    assert out.stop_reason is not None and "Too many security failures" in out.stop_reason


@sync
async def test_stops_when_the_remaining_budget_is_unknown() -> None:
    async with fake_server(hangs_up_after_challenge) as (target, conns):
        out = await active.check_passwords(target, ["a", "b", "c"], facts=VNCAUTH_FACTS)
        assert conns[0] == 1
    assert out.status == "stopped"
    assert out.stop_reason is not None and "remaining budget is unknown" in out.stop_reason


@sync
async def test_no_attempt_when_not_needed_or_already_refused() -> None:
    none = RfbFacts("RFB 003.008\n", security_types=(NamedType(1, "None"),), auth_required=False)
    ra2 = RfbFacts("RFB 005.000\n", security_types=(NamedType(13, "RA2r"),), auth_required=True)
    target = Target("127.0.0.1", 9)  # never contacted
    assert (await active.check_passwords(target, ["x"], facts=none)).status == "not-applicable"
    assert (await active.check_passwords(target, ["x"], facts=ra2)).status == "not-applicable"
    out = await active.check_passwords(target, ["x"], facts=VNCAUTH_FACTS, state=State.BLACKLISTED)
    assert out.status == "skipped" and out.attempts == 0
    out = await active.check_passwords(target, ["x"], facts=VNCAUTH_FACTS, connections_used=4)
    assert out.status == "skipped"


def test_wordlists() -> None:
    words = active.builtin_passwords()
    assert 20 <= len(words) <= 200 and words[0] == "password"
    # Only 8 bytes count: "password123" is "password" to the server, so it is not tried twice.
    assert active.read_wordlist(["# c", "", "password", "password123", "pass word"]) == [
        "password",
        "pass word",
    ]


def test_screenshot_file_names_are_safe() -> None:
    assert active.screenshot_filename(Target("::1", 5900)) == "__1_5900.png"
    assert active.screenshot_filename(Target("127.0.0.1", 5901)) == "127.0.0.1_5901.png"


@sync
async def test_run_active_does_nothing_by_default(tmp_path: Path) -> None:
    from vncaudit.models import ServiceResult

    result = ServiceResult("127.0.0.1", 9, State.VNC, rfb=VNCAUTH_FACTS)
    assert await active.run_active(result, active.ActiveOptions()) is result


@sync
async def test_honeypot_checks_run_in_active_and_count_against_the_lockout_budget() -> None:
    # lock_after=5: the 5th connection would be refused; the probe was connection 1. The
    # honeypot checks (77, one challenge) and the bypass check make it 4: no attempt is left.
    async with fake_server(vncauth_server("secret", lock_after=5)) as (target, conns):
        result = await probe(target)
        assert result.extra.honeypot_checks is None and conns[0] == 1  # one connection
        options = active.ActiveOptions(active_checks=True, check_passwords=True, timeout=5)
        checked = await active.run_active(result, options)
        assert conns[0] == 4
    assert checked.extra.honeypot_checks == HoneypotChecks(77, "closed", 2, True)
    assert checked.extra.suspected_honeypot is None
    checks = checked.extra.active
    assert checks is not None and checks.password_audit is not None
    assert checks.password_audit.status == "skipped"
    assert checks.password_audit.connections_before == 4


@sync
async def test_honeypot_checks_skip_what_they_cannot_test() -> None:
    target = Target("127.0.0.1", 9)  # never contacted
    chosen = RfbFacts("RFB 003.003\n", security_types=(NamedType(2, "VNC Authentication"),),
                      security_types_server_chosen=True)
    assert await active.check_honeypot(target, chosen) is None
    assert await active.check_honeypot(target, RfbFacts("RFB 003.008\n")) is None


@sync
async def test_authenticate_with_a_known_password() -> None:
    async with fake_server(vncauth_server("known")) as (target, _):
        ok = await active.authenticate(target, "known")
        bad = await active.authenticate(target, "wrong")
    assert ok.handshake.outcome == "ok" and ok.handshake.desktop_name == "fake-protected"
    assert ok.handshake.framebuffer == ScreenSize(64, 48, 24)
    assert bad.handshake.outcome == "auth-failed"
    assert bad.handshake.reason == "Authentication failure"
    assert ok.password == active.MASK
    assert ok.to_dict()["framebuffer"] == {"width": 64, "height": 48, "depth": 24}
