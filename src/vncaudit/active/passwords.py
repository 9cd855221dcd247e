"""Passwords: authentication with a known one, and the lockout-aware weak-password audit.

Owns: `authenticate` (`--password`), `check_passwords` (`--check-passwords`), the attempt
budget below the lockout threshold (`attempt_budget`, `LOCKOUT_CONNECTIONS`), the built-in list
(`data/passwords.txt`, read through `importlib.resources`), reading wordlists with duplicates
as the server sees them removed, and masking (`MASK`, `mask_password`).

Lockout etiquette (docs/design.md "Probing etiquette", docs/rfb.md §6.2 and §10): TigerVNC and
RealVNC count EVERY connection from an address that ends before a successful authentication
and block the address at the 5th; a successful authentication clears the count. Each password
attempt is one connection, so the audit never makes more than `LOCKOUT_CONNECTIONS - 1`
connections per server including the ones already made (the probe's), never more than
`max_attempts` (3) attempts, and stops at the first sign of throttling.

Must not: log a password, return one unmasked unless `show_passwords` is set, or make an
attempt beyond the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Final

from vncaudit.active.handshake import connect_and_handshake, lockout_text
from vncaudit.active.transport import Connector
from vncaudit.models import RfbFacts, State, Target
from vncaudit.payloads import AuthCheck, PasswordAttempt, PasswordAudit
from vncaudit.vncauth import password_bytes

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS: Final = 3
# The strictest known lockout (TigerVNC/RealVNC 4 Blacklist.cxx, BlacklistThreshold=5): the 5th
# connection from one address starts a block. We stay one below it.
LOCKOUT_CONNECTIONS: Final = 5
MASK: Final = "********"  # fixed width: a masked password does not reveal its length


def mask_password(password: str, show: bool) -> str:
    return password if show else MASK


def builtin_passwords() -> list[str]:
    """The built-in list of common VNC passwords (data/passwords.txt), most likely first."""
    text = resources.files("vncaudit").joinpath("data/passwords.txt").read_text("utf-8")
    return read_wordlist(text.splitlines())


def read_wordlist(lines: Iterable[str]) -> list[str]:
    """Candidates in order; '#' comments and blank lines dropped; duplicates AS THE SERVER SEES
    THEM (only the first 8 bytes count) removed, so no attempt is wasted on an equivalent."""
    out: list[str] = []
    seen: set[bytes] = set()
    for line in lines:
        word = line.rstrip("\r\n")
        if not word or word.startswith("#"):
            continue
        key = password_bytes(word)
        if key in seen:
            continue
        seen.add(key)
        out.append(word)
    return out


def load_wordlist(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return read_wordlist(fh)


async def authenticate(
    target: Target,
    password: str,
    *,
    timeout: float = 10.0,
    connector: Connector | None = None,
    show_passwords: bool = False,
) -> AuthCheck:
    """Authenticate with a known password (`--password`) and read ServerInit.

    None is used instead when the server offers it (no secret is sent where none is needed).
    The password in the result is masked unless `show_passwords`.
    """
    h = await connect_and_handshake(
        target, password=password, none_policy="if-offered", timeout=timeout, connector=connector
    )
    return AuthCheck(h.record(), mask_password(password, show_passwords), show_passwords)


def attempt_budget(max_attempts: int, connections_used: int | None) -> int:
    """Password attempts allowed: never reach the 5th connection, never more than asked
    (`connections_used` None: the server counts no connections, only the ask limits)."""
    if connections_used is None:
        return max(0, max_attempts)
    return max(0, min(max_attempts, LOCKOUT_CONNECTIONS - 1 - connections_used))


def _vncauth_reachable(facts: RfbFacts | None) -> tuple[bool, str | None]:
    """Whether the facts show a way to VNC Authentication; (True, None) when unknown."""
    if facts is None or not facts.security_types:
        return True, None
    types = {t.id for t in facts.security_types}
    if facts.auth_required is False:
        return False, "no authentication required (None is offered)"
    if 2 in types:
        return True, None
    if facts.vencrypt is not None and {s.id for s in facts.vencrypt.subtypes} & {2, 258, 261}:
        return True, None
    if facts.tight is not None and any(c.code == 2 for c in facts.tight.auth):
        return True, None
    if (16 in types and facts.tight is None) or (19 in types and facts.vencrypt is None):
        return True, None  # a sub-list the probe did not read might hold it
    return False, "VNC Authentication is not offered"


async def check_passwords(
    target: Target,
    passwords: Sequence[str],
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connections_used: int | None = 1,
    facts: RfbFacts | None = None,
    state: State | None = None,
    timeout: float = 10.0,
    connector: Connector | None = None,
    show_passwords: bool = False,
    source: str = "builtin",
) -> PasswordAudit:
    """Weak-password audit over VNC Authentication, lockout-aware (`--check-passwords`).

    `connections_used` is how many connections this scan already made to the server (the probe:
    1; None when the server's product counts none); `facts`/`state` are the probe's, used to
    skip servers that need no password, cannot do VNC Authentication or are already refusing
    us. One connection per attempt; stops at the
    first success, at the first lockout sign, and at any answer other than a plain failure
    (the server's remaining budget is then unknown).
    """
    candidates = read_wordlist(passwords)
    budget = attempt_budget(max_attempts, connections_used)
    out = PasswordAudit(status="not-found", source=source, candidates=len(candidates),
                        max_attempts=max_attempts, budget=budget,
                        connections_before=connections_used or 0, password_shown=show_passwords)
    reachable, why = _vncauth_reachable(facts)
    if state is State.BLACKLISTED or (facts and lockout_text(facts.failure_reason)):
        return replace(out, status="skipped",
                       stop_reason="the server is already refusing this address")
    if not reachable:
        return replace(out, status="not-applicable", stop_reason=why)
    if budget == 0:
        return replace(out, status="skipped", stop_reason=(
            f"no attempt left below the lockout threshold ({connections_used} connections "
            f"already made; a block starts at the {LOCKOUT_CONNECTIONS}th)"
        ))
    results: list[PasswordAttempt] = []
    for index, candidate in enumerate(candidates[:budget]):
        h = await connect_and_handshake(
            target, password=candidate, none_policy="never", timeout=timeout, connector=connector
        )
        results.append(PasswordAttempt(index + 1, h.outcome, h.reason, round(h.elapsed, 4)))
        out = replace(out, attempts=index + 1, results=tuple(results),
                      security_path=tuple(h.security_path) or out.security_path)
        if h.outcome == "ok":
            log.info(
                "password audit: %s:%d accepted attempt %d", target.host, target.port, index + 1
            )
            return replace(out, status="found", found=True,
                           password=mask_password(candidate, show_passwords),
                           server_init=h.record(), stop_reason="password accepted")
        if h.outcome == "locked-out":
            return replace(out, status="stopped", stop_reason=f"lockout reported: {h.reason}")
        if h.outcome != "auth-failed":
            # Anything but a plain failure: the server's remaining budget is unknown; stop.
            status = {"auth-required": "not-applicable", "unsupported": "not-applicable"}
            return replace(
                out,
                status=status.get(h.outcome, "error" if h.outcome == "not-vnc" else "stopped"),
                stop_reason=(
                    f"attempt {index + 1} ended with {h.outcome}"
                    + (f" ({h.reason})" if h.reason else "")
                    + ": the server's remaining budget is unknown"
                ),
            )
    if len(candidates) > budget:
        stop = f"attempt budget of {budget} reached ({len(candidates) - budget} candidates untried)"
    else:
        stop = "every candidate tried"
    return replace(out, stop_reason=stop, tried_all=len(candidates) <= budget)
