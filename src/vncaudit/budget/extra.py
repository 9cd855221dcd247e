"""Connections after the probe (the opt-in active checks) through the connection ledger.

Owns: `checked`, which grants the extra connections a check needs before it runs (all of them
or none: a check is skipped, with the ledger's reason, when the server's budget cannot take
them), tells the check how many are left, and records the ones it made. Must not: run a check
itself or know what one does beyond the connection counts it reports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Final

from vncaudit.budget.ledger import Ledger
from vncaudit.models import ServiceResult, Target

__all__ = ["EXTRA_AT_MOST", "checked", "connections_made"]

EXTRA_AT_MOST: Final = 4  # connections a round of active checks may ask for


def connections_made(active: Mapping[str, Any]) -> tuple[int, int]:
    """(connections, of which authenticated) an `extra["active"]` dict reports."""
    made = authenticated = 0
    auth = active.get("auth")
    if isinstance(auth, Mapping):
        made += 1
        authenticated += auth.get("outcome") == "ok"
    shot = active.get("screenshot")
    if isinstance(shot, Mapping) and shot.get("status") != "skipped":
        made += 1
        authenticated += shot.get("outcome") == "ok"
    bypass = active.get("unoffered_none")
    if isinstance(bypass, Mapping) and isinstance(bypass.get("handshake"), Mapping):
        made += 1
        authenticated += bypass["handshake"].get("outcome") == "ok"
    audit = active.get("password_audit")
    if isinstance(audit, Mapping) and isinstance(audit.get("attempts"), int):
        made += audit["attempts"]
    return made, authenticated


async def checked(
    ledger: Ledger,
    result: ServiceResult,
    run: Callable[[int], Awaitable[dict[str, Any]]],
    *,
    required: int,
) -> dict[str, Any]:
    """Grant up to `EXTRA_AT_MOST` more connections to `result`'s server and run the checks
    with them: `run(used)` gets the count of connections to consider already spent, so that
    `EXTRA_AT_MOST - used` are left for it. Fewer than `required` granted: the checks are
    skipped, and the returned dict says why."""
    target = Target(result.host, result.port, result.hostname)
    decisions = ledger.admit([target] * EXTRA_AT_MOST, kind="active checks")
    granted = [d for d in decisions if d.allowed]
    if len(granted) < max(1, required):
        ledger.release(granted)
        reason = next((d.reason for d in decisions if not d.allowed), "")
        return {"skipped": reason or "the connection budget cannot take these checks"}
    try:
        active = await run(EXTRA_AT_MOST - len(granted))
    except BaseException:
        ledger.close_grants(granted)
        raise
    made, authenticated = connections_made(active)
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
    return active
