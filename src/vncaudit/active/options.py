"""What the engine calls: `ActiveOptions` (which checks, all off by default) and `run_active`.

Owns: the option plumbing from the CLI flags to the checks, the order the checks run in (the
honeypot checks first, then those that authenticate successfully, as they clear TigerVNC's
marks; the CVE check and the password audit last), the count of connections already made that
the audit's budget needs, and where the outcomes go: `extra.active` (`payloads.ActiveChecks`),
and for the honeypot checks `extra.honeypot_checks` and `extra.suspected_honeypot`.

Must not: run any check that was not asked for, or any check on a service that is not VNC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vncaudit import framebuffer as fb
from vncaudit.active.bypass import check_unoffered_none
from vncaudit.active.capture import desktop_verdict, save_screenshot, screenshot
from vncaudit.active.honeypot import check_honeypot
from vncaudit.active.passwords import (
    DEFAULT_MAX_ATTEMPTS,
    authenticate,
    builtin_passwords,
    check_passwords,
)
from vncaudit.active.transport import Connector
from vncaudit.models import ServiceResult, State, Target
from vncaudit.payloads import ActiveChecks, ScreenshotCheck, SuspectedHoneypot


@dataclass(frozen=True)
class ActiveOptions:
    """Which active checks to run. Every field defaults to off: nothing active by default."""

    screenshot: bool = False
    screenshot_dir: Path | None = None  # where PNGs go (next to the report); None: not saved
    max_pixels: int = fb.FramebufferLimits.max_pixels
    password: str | None = None  # --password
    check_passwords: bool = False
    wordlist: Sequence[str] | None = None  # None: the built-in list
    wordlist_source: str = "builtin"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    show_passwords: bool = False
    # --active-checks: CVE-2006-2369 un-offered None, and the honeypot checks (on RFB read
    # directly, not through a web gateway)
    active_checks: bool = False
    timeout: float = 15.0

    @property
    def enabled(self) -> bool:
        return self.screenshot or self.check_passwords or self.active_checks or bool(self.password)


async def run_active(
    result: ServiceResult, options: ActiveOptions, connector: Connector | None = None,
    *, connections_used: int | None = 1,
) -> ServiceResult:
    """Run the requested checks against one probed service: `result` with their payloads set
    (unchanged when nothing was asked, or the service is not VNC).

    Order keeps the lockout count low: the honeypot checks first and checks that
    authenticate successfully (which clear TigerVNC's marks) next, the CVE check and the
    password audit last. `connections_used`: unauthenticated connections this address already
    made to the server (the probe's, and what the connection ledger counted before it); the
    honeypot checks' own are added to it. None: the server's product counts no connections
    (LibVNCServer, QEMU), so the password audit gets every attempt asked for.
    """
    if not options.enabled or result.state is not State.VNC or result.rfb is None:
        return result
    target = Target(result.host, result.port, result.hostname)
    facts = result.rfb
    counted = connections_used is not None
    used = connections_used or 0
    if options.active_checks and result.error is None and result.extra.web is None:
        result, spent = await _honeypot(result, target, options.timeout, connector)
        used += spent
    password = options.password
    auth = shot = kind = bypass = audit = None
    if password is not None:
        auth = await authenticate(
            target,
            password,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
        )
        used = 0 if auth.handshake.outcome == "ok" else used + 1
    if options.screenshot:
        if facts.auth_required and password is None:
            shot = ScreenshotCheck("skipped", "authentication required; give --password")
        else:
            taken = await screenshot(
                target,
                password,
                timeout=options.timeout,
                max_pixels=options.max_pixels,
                connector=connector,
            )
            # Any completed authentication (None included) clears TigerVNC's marks.
            used = 0 if taken.handshake.outcome == "ok" else used + 1
            path: str | None = None
            if taken.png is not None and options.screenshot_dir is not None:
                path = str(save_screenshot(taken.png, options.screenshot_dir, target))
            shot = taken.check(path)
            if taken.png is not None:
                kind = desktop_verdict(taken)
    if options.active_checks:
        bypass = await check_unoffered_none(
            target, facts=facts, timeout=options.timeout, connector=connector
        )
        if bypass.handshake is not None:
            used = 0 if bypass.handshake.outcome == "ok" else used + 1
    if options.check_passwords:
        words = options.wordlist if options.wordlist is not None else builtin_passwords()
        audit = await check_passwords(
            target,
            words,
            max_attempts=options.max_attempts,
            connections_used=used if counted else None,
            facts=facts,
            state=result.state,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
            source=options.wordlist_source,
        )
    checks = ActiveChecks(auth, shot, kind, bypass, audit)
    return result.with_extra(active=checks) if checks else result


async def _honeypot(
    result: ServiceResult, target: Target, timeout: float, connector: Connector | None
) -> tuple[ServiceResult, int]:
    """`result` with the honeypot checks' outcomes and reasons, and the connections they made."""
    assert result.rfb is not None
    found = await check_honeypot(target, result.rfb, timeout=timeout, connector=connector)
    if found is None:
        return result, 0
    checks, reasons = found
    before = result.extra.suspected_honeypot
    if reasons:
        # After the probe's own reasons, which one connection showed.
        suspected = SuspectedHoneypot((*(before.reasons if before else ()), *reasons))
        result = result.with_extra(suspected_honeypot=suspected)
    return result.with_extra(honeypot_checks=checks), checks.connections
