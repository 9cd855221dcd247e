"""The authentication-bypass check: None selected although it was not offered.

Owns: `check_unoffered_none` (`--active-checks`), which tests RealVNC 4.1.0-4.1.1
(CVE-2006-2369) and old LibVNCServer (CVE-2006-2450) on one connection of its own, and the
evidence line that says what the server did.

Must not: run where the probe's facts show nothing to test (RFB 3.3, None offered openly, no
security types read), send a password, or grade (the finding is `assess`'s).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from vncaudit.active.handshake import connect_and_handshake
from vncaudit.active.transport import Connector
from vncaudit.models import RfbFacts, Target
from vncaudit.payloads import BypassCheck

CVE_UNOFFERED_NONE: Final = ("CVE-2006-2369", "CVE-2006-2450")


async def check_unoffered_none(
    target: Target,
    *,
    facts: RfbFacts | None = None,
    timeout: float = 10.0,
    connector: Connector | None = None,
) -> BypassCheck:
    """Select security type None although the server did not offer it (`--active-checks`).

    RealVNC 4.1.0-4.1.1 (CVE-2006-2369) and old LibVNCServer (CVE-2006-2450) accept it and hand
    out a full session. A sound server closes or fails the SecurityResult. Only meaningful
    for RFB 3.7+ (3.3 servers choose the type themselves) and when 1 is not in the list.
    """
    not_applicable = BypassCheck(
        "not-applicable", CVE_UNOFFERED_NONE,
        tuple(t.id for t in facts.security_types) if facts else None,
    )
    if facts is not None:
        if facts.security_types_server_chosen:
            return replace(not_applicable,
                           evidence="RFB 3.3: the server chooses the type; nothing to select")
        if any(t.id == 1 for t in facts.security_types):
            return replace(not_applicable, evidence="None is offered openly; no bypass to test")
        if not facts.security_types:
            return replace(not_applicable, evidence="the probe read no security types")
    h = await connect_and_handshake(
        target, password=None, none_policy="force", timeout=timeout, connector=connector
    )
    tried = replace(not_applicable, offered_types=h.offered_types, handshake=h.record())
    offered = list(h.offered_types)
    if 1 in h.offered_types:
        return replace(tried, evidence="None is offered openly; no bypass to test")
    if h.outcome == "ok":
        si = h.server_init
        return replace(tried, status="vulnerable", evidence=(
            f"offered {offered}, selected 1 (None): SecurityResult "
            f"{h.security_result or 'not sent (3.7)'}, ServerInit received"
            + (f" (desktop {si.name!r}, {si.width}x{si.height})" if si else "")
        ))
    if h.outcome in ("refused", "auth-failed", "unsupported"):
        return replace(tried, status="not-vulnerable", evidence=(
            f"offered {offered}, selected 1 (None): " + (
                f"SecurityResult failed ({h.reason})"
                if h.security_result == "failed"
                else (h.reason or h.outcome)
            )
        ))
    return replace(tried, status="error" if h.outcome != "locked-out" else "skipped",
                   evidence=f"{h.outcome}: {h.reason}")
