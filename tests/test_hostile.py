"""The probe against the hostile farm: every behaviour ends in time, in the right class, in
bounded memory. The farm runs in a child process (see hostile.py), so tracemalloc here sees only
the probe. All default probes run concurrently once (`farm_results`); each test reads its own.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest

from vncaudit import active
from vncaudit.models import ServiceResult, State, Target
from vncaudit.payloads import HoneypotChecks, SuspectedHoneypot
from vncaudit.probe import ProbeOptions, honeypot_signals, probe
from vncaudit.pump import close_writer

from hostile import BEHAVIOURS, Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

TIMEOUT = 2.0
SLACK = 0.75  # closing waits at most 0.5 s for a peer that does not read; plus scheduling
FAST = 1.0  # a probe that sees a protocol violation must not wait for the deadline
MEMORY_CAP = 1 << 20  # tracemalloc peak of one probe, even against 1 MiB / 4 GB / a flood

SLOW, QUICK = True, False
# behaviour: (state, text expected in the error (or None for no error), waits for the deadline)
EXPECTED: dict[str, tuple[State, str | None, bool]] = {
    "silent": (State.TARPIT, "no complete banner within 2 s (0 bytes received)", SLOW),
    "drip": (State.TARPIT, "no complete banner", SLOW),
    "banner-no-newline": (State.MALFORMED, "not terminated by a newline", SLOW),
    "banner-1mib": (State.MALFORMED, "malformed RFB banner b'RFB 99999999'", QUICK),
    "http": (State.OPEN_NOT_VNC, "looks like http", QUICK),
    "ssh": (State.OPEN_NOT_VNC, "looks like ssh", QUICK),
    "smtp": (State.OPEN_NOT_VNC, "looks like smtp", QUICK),
    "tls-server-hello": (State.OPEN_NOT_VNC, "looks like tls", QUICK),
    # the same refusal reset instead of closed (the version reply left unread)
    "banner-then-rst": (State.VNC, None, QUICK),
    "count255-garbage": (State.MALFORMED, "security type 0 (Invalid) in a list of 255", QUICK),
    "reason-huge": (State.MALFORMED, "failure reason length 4294967295 exceeds cap", QUICK),
    "reason-never": (State.MALFORMED, "incomplete message at the deadline", SLOW),
    "reason-binary": (State.VNC, None, QUICK),
    "vencrypt-absurd": (State.VNC, None, QUICK),
    "vencrypt-truncated": (State.MALFORMED, "incomplete message at the deadline", SLOW),
    "tight-huge": (State.MALFORMED, "Tight tunnel count 2147483647 exceeds cap", QUICK),
    "name-4g": (State.MALFORMED, "desktop name length 4294967295 exceeds cap", QUICK),
    "flood": (State.MALFORMED, "out of turn", QUICK),
    # banner then FIN: how LibVNCServer refuses (docs/rfb.md §1.2), recorded as a refusal
    "half-close": (State.VNC, None, QUICK),
    "never-read": (State.VNC, "deadline of 2 s reached while awaiting SecurityResult", SLOW),
    "honeypot-any": (State.VNC, None, QUICK),
    "honeypot-every-type": (State.VNC, None, QUICK),
    "honeypot-quiet": (State.VNC, None, QUICK),
    "honeypot-static-challenge": (State.VNC, None, QUICK),
    "realvnc-4.1.1": (State.VNC, None, QUICK),
    "vnc-auth": (State.VNC, None, QUICK),
    "vnc-none": (State.VNC, None, QUICK),
}
BIG = ["banner-1mib", "flood", "name-4g", "reason-huge", "tight-huge", "vencrypt-absurd",
       "count255-garbage"]


def options(**kw: Any) -> ProbeOptions:
    return ProbeOptions(timeout=TIMEOUT, **kw)


async def _probe_all(farm: Farm) -> dict[str, list[ServiceResult]]:
    names = [*EXPECTED, "every-other", "every-other"]
    results = await asyncio.gather(
        *(probe(Target(farm.host, farm.ports[n]), options()) for n in names)
    )
    out: dict[str, list[ServiceResult]] = {}
    for name, result in zip(names, results, strict=True):
        out.setdefault(name, []).append(result)
    return out


@pytest.fixture(scope="module")
def farm_results(hostile_farm: Farm) -> dict[str, list[ServiceResult]]:  # noqa: F811
    started = time.monotonic()
    results = asyncio.run(_probe_all(hostile_farm))
    # Everything ran side by side: the whole farm costs one deadline, not the sum of them.
    assert time.monotonic() - started < TIMEOUT + SLACK + 1.0
    return results


def test_farm_covers_every_behaviour() -> None:
    assert set(BEHAVIOURS) == {*EXPECTED, "every-other"}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_behaviour(name: str, farm_results: dict[str, list[ServiceResult]]) -> None:
    state, text, slow = EXPECTED[name]
    (result,) = farm_results[name]
    assert result.state is state, (result.state, result.error)
    if text is None:
        assert result.error is None
    else:
        assert result.error is not None and text in result.error, result.error
    assert result.elapsed <= TIMEOUT + SLACK, result.elapsed
    if slow:
        assert result.elapsed >= TIMEOUT - 0.05
    else:
        assert result.elapsed < FAST, result.elapsed
    json.dumps(result.to_dict())  # every outcome is a schema-v1 document
    assert len(result.transcript_hex) <= 2 * 4096


def test_open_not_vnc_keeps_first_bytes(farm_results: dict[str, list[ServiceResult]]) -> None:
    (ssh,) = farm_results["ssh"]
    assert bytes.fromhex(ssh.transcript_hex).startswith(b"SSH-2.0-OpenSSH")
    assert ssh.rfb is None


@pytest.mark.parametrize(("name", "guess"), [("http", "http"), ("ssh", "ssh"),
                                             ("smtp", "smtp/ftp"), ("tls-server-hello", "tls")])
def test_protocol_guess(
    name: str, guess: str, farm_results: dict[str, list[ServiceResult]]
) -> None:
    (result,) = farm_results[name]
    assert result.extra.protocol_guess == guess


def test_every_other_connection(farm_results: dict[str, list[ServiceResult]]) -> None:
    states = sorted(r.state.value for r in farm_results["every-other"])
    assert states == ["tarpit", "vnc"]  # one connection each; the scanner reports what it saw


def test_never_read_keeps_what_it_read(farm_results: dict[str, list[ServiceResult]]) -> None:
    (result,) = farm_results["never-read"]
    assert result.rfb is not None
    assert [t.id for t in result.rfb.security_types] == [1]
    assert result.rfb.selected_type == 1 and result.rfb.security_result is None


def test_vencrypt_absurd_is_kept_and_suspected(
    farm_results: dict[str, list[ServiceResult]],
) -> None:
    (result,) = farm_results["vencrypt-absurd"]
    assert result.rfb is not None and result.rfb.vencrypt is not None
    assert len(result.rfb.vencrypt.subtypes) == 255
    assert result.extra.suspected_honeypot is not None
    reasons = result.extra.suspected_honeypot.reasons
    assert any("255 VeNCrypt sub-types" in r for r in reasons)


def test_honeypot_any_from_one_connection(farm_results: dict[str, list[ServiceResult]]) -> None:
    (result,) = farm_results["honeypot-any"]
    assert result.rfb is not None and result.rfb.auth_required is False
    assert result.rfb.desktop_name == "honeypot"
    assert result.extra.suspected_honeypot == SuspectedHoneypot((
        "types of products never seen together: Apple, TLS (Vino), Tight, UltraVNC, VeNCrypt",))
    assert result.extra.honeypot_checks is None  # no extra connection by default


def test_honeypot_every_type(farm_results: dict[str, list[ServiceResult]]) -> None:
    (result,) = farm_results["honeypot-every-type"]
    assert result.extra.suspected_honeypot is not None
    reasons = result.extra.suspected_honeypot.reasons
    assert "every security type from 1 to 40 offered" in reasons
    assert any(r.startswith("40 security types offered") for r in reasons)


@pytest.mark.parametrize("name", ["honeypot-quiet", "honeypot-static-challenge", "realvnc-4.1.1",
                                  "vnc-auth", "vnc-none"])
def test_plausible_servers_are_not_suspected_by_default(
    name: str, farm_results: dict[str, list[ServiceResult]]
) -> None:
    (result,) = farm_results[name]
    assert result.extra.suspected_honeypot is None


def test_realvnc_411_offers_only_vnc_auth(farm_results: dict[str, list[ServiceResult]]) -> None:
    (result,) = farm_results["realvnc-4.1.1"]
    assert result.rfb is not None
    assert [t.id for t in result.rfb.security_types] == [2]
    assert result.rfb.auth_required is True and result.rfb.selected_type is None


def test_closing_on_a_peer_that_never_reads_is_bounded(hostile_farm: Farm) -> None:  # noqa: F811
    """Our few handshake bytes always fit its window; if they did not, close still returns."""

    async def run() -> tuple[float, bool]:
        port = hostile_farm.ports["never-read"]
        _, writer = await asyncio.open_connection(hostile_farm.host, port)
        writer.write(b"x" * (8 << 20))  # far beyond its 1 KiB window and our send buffer
        loop = asyncio.get_running_loop()
        started = loop.time()
        await close_writer(writer)
        return loop.time() - started, writer.transport.is_closing()

    elapsed, closing = asyncio.run(run())
    assert elapsed < 0.5 + 0.25 and closing


# -- active checks (extra connections, only when asked) -----------------------------------------


async def _probe_and_check(target: Target) -> ServiceResult:
    """The probe, then the honeypot checks of --active-checks; elapsed covers both."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await probe(target, options())
    checked = await active.run_active(result, active.ActiveOptions(active_checks=True,
                                                                   timeout=TIMEOUT))
    return replace(checked, elapsed=loop.time() - started)


async def _probe_active(farm: Farm, names: list[str]) -> dict[str, ServiceResult]:
    results = await asyncio.gather(
        *(_probe_and_check(Target(farm.host, farm.ports[n])) for n in names)
    )
    return dict(zip(names, results, strict=True))


@pytest.fixture(scope="module")
def active_results(hostile_farm: Farm) -> dict[str, ServiceResult]:  # noqa: F811
    names = ["honeypot-quiet", "honeypot-any", "honeypot-static-challenge", "realvnc-4.1.1",
             "vnc-auth", "vnc-none"]
    return asyncio.run(_probe_active(hostile_farm, names))


def test_active_checks_expose_the_quiet_honeypot(active_results: dict[str, ServiceResult]) -> None:
    result = active_results["honeypot-quiet"]
    assert result.state is State.VNC
    assert result.extra.honeypot_checks == HoneypotChecks(77, "accepted", 3, True, True)
    assert result.extra.suspected_honeypot is not None
    assert list(result.extra.suspected_honeypot.reasons) == [
        "accepted unassigned security type 77",
        "the same VNC authentication challenge on two connections "
        "(000102030405060708090a0b0c0d0e0f)",
    ]
    # Three honeypot connections and the un-offered-None check, each with its own deadline.
    assert result.elapsed <= 5 * TIMEOUT + SLACK


def test_active_checks_expose_a_static_challenge(active_results: dict[str, ServiceResult]) -> None:
    result = active_results["honeypot-static-challenge"]
    assert result.extra.honeypot_checks == HoneypotChecks(77, "closed", 3, False, True)
    assert result.extra.suspected_honeypot is not None
    assert list(result.extra.suspected_honeypot.reasons) == [
        "VNC authentication challenge is not random (b'AAAAAAAAAAAAAAAA')",
        "the same VNC authentication challenge on two connections "
        "(41414141414141414141414141414141)",
    ]


@pytest.mark.parametrize(("name", "checks"), [
    ("realvnc-4.1.1", {"unassigned_type_77": "closed", "challenge_random": True,
                       "connections": 2}),
    ("vnc-auth", {"unassigned_type_77": "closed", "challenge_random": True, "connections": 2}),
    ("vnc-none", {"unassigned_type_77": "closed", "connections": 1}),
])
def test_active_checks_cost_honest_servers_one_or_two_connections(
    name: str, checks: dict[str, Any], active_results: dict[str, ServiceResult]
) -> None:
    result = active_results[name]
    assert result.extra.honeypot_checks is not None
    assert result.extra.honeypot_checks.to_dict() == checks  # the report's shape
    assert result.extra.suspected_honeypot is None
    assert result.rfb is not None and result.rfb.selected_type in (None, 1)  # facts unchanged


def test_active_checks_add_to_the_one_connection_reasons(
    active_results: dict[str, ServiceResult],
) -> None:
    result = active_results["honeypot-any"]
    assert result.extra.suspected_honeypot is not None
    reasons = result.extra.suspected_honeypot.reasons
    assert reasons[0].startswith("types of products never seen together")
    assert reasons[1] == "accepted unassigned security type 77"
    assert result.extra.honeypot_checks is not None
    assert result.extra.honeypot_checks.challenge_repeated is False  # random challenges


@pytest.mark.parametrize(("name", "status"), [("realvnc-4.1.1", "vulnerable"),
                                              ("honeypot-quiet", "vulnerable"),
                                              ("vnc-auth", "not-vulnerable")])
def test_unoffered_none_check_on_the_farm(name: str, status: str, hostile_farm: Farm) -> None:  # noqa: F811
    """The farm's RealVNC 4.1.1 double for `active.check_unoffered_none` (CVE-2006-2369).

    A honeypot that accepts anything looks "vulnerable" too: assess tells them apart by
    `extra.honeypot_checks` (an unassigned type accepted as well)."""
    active = pytest.importorskip("vncaudit.active")
    target = Target(hostile_farm.host, hostile_farm.ports[name])
    out = asyncio.run(active.check_unoffered_none(target, timeout=TIMEOUT))
    assert out.status == status, out


# -- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BIG)
def test_memory_stays_bounded(name: str, hostile_farm: Farm) -> None:  # noqa: F811
    target = Target(hostile_farm.host, hostile_farm.ports[name])
    tracemalloc.start()
    try:
        result = asyncio.run(probe(target, options()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.state is EXPECTED[name][0]
    assert peak < MEMORY_CAP, f"{name}: tracemalloc peak {peak} bytes"


# -- honeypot signals never fire on what real products send (docs/rfb.md §6.2) ---------------

REAL_LISTS: list[tuple[list[int], list[int] | None]] = [
    ([19, 2], [258, 2]),  # TigerVNC default
    ([19, 19, 2], [258, 2, 257]),  # TigerVNC with VeNCrypt named explicitly
    ([19, 1, 2, 5, 6, 129, 130], [258, 259, 262, 261, 257, 256, 260]),  # TigerVNC, many enabled
    ([19, 2, 16], [258, 259, 261, 262, 256]),  # TurboVNC
    ([2, 16], None), ([1, 16], None), ([1], None), ([2], None),  # TightVNC, LibVNCServer
    ([13, 5, 6, 130, 192], None), ([13, 133, 5, 129, 192], None),  # RealVNC 5+
    ([30, 33, 36, 31, 32, 35], None), ([30, 35], None), ([30, 33, 36, 2], None),  # macOS
    ([17, 117, 2], None), ([17, 116, 113], None),  # UltraVNC
    ([18], None), ([20], None), ([1, 2], None), ([0xFFFFFFFA], None),
]


@pytest.mark.parametrize(("types", "subtypes"), REAL_LISTS)
def test_real_product_lists_are_not_suspected(types: list[int], subtypes: list[int] | None) -> None:
    assert honeypot_signals(types, subtypes) == []


@pytest.mark.parametrize(
    ("types", "subtypes", "reason"),
    [
        ([2, 2, 2], None, "security types listed more than once: [2]"),
        ([19, 19, 19], None, "security types listed more than once: [19]"),
        ([1, 2, 3, 4, 5], None, "every security type from 1 to 5 offered"),
        ([1, 2, 16, 18, 19], None, "types of products never seen together: TLS (Vino), Tight, "
                                   "VeNCrypt"),
        ([2, 30, 113, 192], None, "types of products never seen together: Apple, RealVNC, "
                                  "UltraVNC"),
        ([40, 50, 60], None, "3 unassigned security type numbers offered"),
        ([19], [258, 258], "VeNCrypt sub-types listed more than once: [258]"),
        ([19], [900, 901, 902], "3 unassigned VeNCrypt sub-type numbers offered"),
    ],
)
def test_impossible_lists_are_suspected(
    types: list[int], subtypes: list[int] | None, reason: str
) -> None:
    assert reason in honeypot_signals(types, subtypes)
