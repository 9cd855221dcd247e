"""Connections after the probe (the opt-in active checks) through the connection ledger.

Owns: `checked`, which grants the extra connections a check needs before it runs (all of them
or none: a check is skipped, with the ledger's reason, when the server's budget cannot take
them), tells the check how many are left, and records the ones it made. Must not: run a check
itself or know what one does beyond the connection counts it reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Final

from vncaudit.budget.ledger import Ledger
from vncaudit.models import ServiceResult, Target
from vncaudit.payloads import ActiveChecks

__all__ = ["EXTRA_AT_MOST", "checked", "connections_made"]

EXTRA_AT_MOST: Final = 4  # connections a round of active checks may ask for


def connections_made(active: ActiveChecks) -> tuple[int, int]:
    """(connections, of which authenticated) the active checks report."""
    made = authenticated = 0
    if active.auth is not None:
        made += 1
        authenticated += active.auth.handshake.outcome == "ok"
    shot = active.screenshot
    if shot is not None and shot.status != "skipped":
        made += 1
        authenticated += shot.outcome == "ok"
    bypass = active.unoffered_none.handshake if active.unoffered_none is not None else None
    if bypass is not None:
        made += 1
        authenticated += bypass.outcome == "ok"
    if active.password_audit is not None:
        made += active.password_audit.attempts
    return made, authenticated


async def checked(
    ledger: Ledger,
    result: ServiceResult,
    run: Callable[[int], Awaitable[ServiceResult]],
    *,
    required: int,
) -> ServiceResult:
    """Grant up to `EXTRA_AT_MOST` more connections to `result`'s server and run the checks
    with them: `run(used)` gets the count of connections to consider already spent, so that
    `EXTRA_AT_MOST - used` are left for it, and returns `result` with the checks' payloads.
    Fewer than `required` granted: the checks are skipped, and `extra.active` says why."""
    target = Target(result.host, result.port, result.hostname)
    decisions = ledger.admit([target] * EXTRA_AT_MOST, kind="active checks")
    granted = [d for d in decisions if d.allowed]
    if len(granted) < max(1, required):
        ledger.release(granted)
        reason = next((d.reason for d in decisions if not d.allowed), "")
        skipped = reason or "the connection budget cannot take these checks"
        return result.with_extra(active=ActiveChecks(skipped=skipped))
    try:
        done = await run(EXTRA_AT_MOST - len(granted))
    except BaseException:
        ledger.close_grants(granted)
        raise
    made, authenticated = connections_made(done.extra.active or ActiveChecks())
    facts = result.rfb
    outcomes = []
    for i in range(made):
        # More than granted only after an authentication cleared the server's tally (the
        # checks that authenticate run first): those connections are recorded all the same.
        decision = granted[i] if i < len(granted) else ledger.unreserved(target)
        ok = i < authenticated and facts is not None
        outcomes.append((decision, replace(result, rfb=replace(facts, security_result="ok"))
                         if ok and facts is not None else result))
    ledger.record(outcomes)
    ledger.release(granted[made:])
    return done
