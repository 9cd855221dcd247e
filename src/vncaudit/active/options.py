"""What the engine calls: `ActiveOptions` (which checks, all off by default) and `run_active`.

Owns: the option plumbing from the CLI flags to the checks, the order the checks run in (those
that authenticate successfully first, as they clear TigerVNC's marks; the CVE check and the
password audit last), the count of connections already made that the audit's budget needs, and
the `extra["active"]` dict.

Must not: run any check that was not asked for, or any check on a service that is not VNC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vncaudit import framebuffer as fb
from vncaudit.active.bypass import check_unoffered_none
from vncaudit.active.capture import desktop_kind, save_screenshot, screenshot
from vncaudit.active.passwords import (
    DEFAULT_MAX_ATTEMPTS,
    authenticate,
    builtin_passwords,
    check_passwords,
)
from vncaudit.active.transport import Connector
from vncaudit.models import ServiceResult, State, Target


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
    active_checks: bool = False  # --active-checks: CVE-2006-2369 un-offered None
    timeout: float = 15.0

    @property
    def enabled(self) -> bool:
        return self.screenshot or self.check_passwords or self.active_checks or bool(self.password)


async def run_active(
    result: ServiceResult, options: ActiveOptions, connector: Connector | None = None,
    *, connections_used: int = 1,
) -> dict[str, Any]:
    """Run the requested checks against one probed service; returns `extra["active"]`.

    Order keeps the lockout count low: checks that authenticate successfully (which clear
    TigerVNC's marks) go first, the CVE check and the password audit last.
    `connections_used`: unauthenticated connections this address already made to the server
    (the probe's, and what the connection ledger counted before it).
    """
    active: dict[str, Any] = {}
    if not options.enabled or result.state is not State.VNC or result.rfb is None:
        return active
    target = Target(result.host, result.port, result.hostname)
    facts = result.rfb
    used = connections_used
    password = options.password
    if password is not None:
        active["auth"] = await authenticate(
            target,
            password,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
        )
        used = 0 if active["auth"]["outcome"] == "ok" else used + 1
    if options.screenshot:
        if facts.auth_required and password is None:
            active["screenshot"] = {
                "status": "skipped",
                "reason": "authentication required; give --password",
            }
        else:
            shot = await screenshot(
                target,
                password,
                timeout=options.timeout,
                max_pixels=options.max_pixels,
                connector=connector,
            )
            # Any completed authentication (None included) clears TigerVNC's marks.
            used = 0 if shot.handshake.outcome == "ok" else used + 1
            path: str | None = None
            if shot.png is not None and options.screenshot_dir is not None:
                path = str(save_screenshot(shot.png, options.screenshot_dir, target))
            active["screenshot"] = shot.to_dict(path)
            if shot.png is not None:
                active["desktop_kind"] = desktop_kind(shot).to_dict()
    if options.active_checks:
        active["unoffered_none"] = await check_unoffered_none(
            target, facts=facts, timeout=options.timeout, connector=connector
        )
        probe_h = active["unoffered_none"]["handshake"]
        if probe_h is not None:
            used = 0 if probe_h["outcome"] == "ok" else used + 1
    if options.check_passwords:
        words = options.wordlist if options.wordlist is not None else builtin_passwords()
        active["password_audit"] = await check_passwords(
            target,
            words,
            max_attempts=options.max_attempts,
            connections_used=used,
            facts=facts,
            state=result.state,
            timeout=options.timeout,
            connector=connector,
            show_passwords=options.show_passwords,
            source=options.wordlist_source,
        )
    return active
