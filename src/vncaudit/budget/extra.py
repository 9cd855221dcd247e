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

from vncaudit.budget.ledger import Decision, Ledger
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
    run: Callable[[int | None, str | None], Awaitable[ServiceResult]],
    *,
    required: int,
) -> ServiceResult:
    """Grant up to `EXTRA_AT_MOST` more connections to `result`'s server, all from one source
    address, and run the checks with them: `run(used, bind)` gets the count of connections to
    consider already spent, so that `EXTRA_AT_MOST - used` are left for it (None when the
    server's product counts no connections: the ledger is then not the checks' limit), and
    the local address to connect from (None: the kernel's choice); it returns `result` with
    the checks' payloads. Fewer than `required` grantable: the checks are skipped, and
    `extra.active` says why."""
    target = Target(result.host, result.port, result.hostname)
    grant: Decision | None = None
    denied = ""
    for need in range(EXTRA_AT_MOST, max(1, required) - 1, -1):
        (decision,) = ledger.admit([target], kind="active checks", need=need)
        if decision.allowed:
            grant = decision
            break
        denied = denied or decision.reason
    if grant is None:
        skipped = denied or "the connection budget cannot take these checks"
        return result.with_extra(active=ActiveChecks(skipped=skipped))
    counted = grant.rule.counts != "none"
    try:
        done = await run(EXTRA_AT_MOST - grant.need if counted else None, grant.bind)
    except BaseException:
        ledger.close_grants([grant])
        raise
    made, authenticated = connections_made(done.extra.active or ActiveChecks())
    honeypot = done.extra.honeypot_checks
    if honeypot is not None and result.extra.honeypot_checks is None:
        made += honeypot.connections  # none of them authenticates
    facts = result.rfb
    outcomes = []
    beyond = replace(grant, intent=None)
    for i in range(made):
        # More than granted only after an authentication cleared the server's tally (the
        # checks that authenticate run first): those connections are recorded all the same.
        ok = i < authenticated and facts is not None
        outcomes.append((grant if i < grant.need else beyond,
                         replace(result, rfb=replace(facts, security_result="ok"))
                         if ok and facts is not None else result))
    ledger.record(outcomes)
    if made < grant.need:
        ledger.release([grant], count=grant.need - made)
    return done
