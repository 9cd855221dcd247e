"""Alert rules over two cycles of one monitor: what changed that a person must hear about.

Owns: the `Alert` record (what every channel sends), its idempotency key, and `evaluate`: the
rules applied to the store's diff between a monitor's previous and current cycle, plus the
reminder rule over the services still open. Pure: no I/O, no clock (the caller passes `now`).
Must not: read or write the store, send anything, or grade (findings come from `assess`).

The rules (each on or off per monitor, `config.AlertRules`):

- ``reachable``  a service answers RFB (vnc or blacklisted) that did not in the previous cycle;
- ``no-auth``    a reachable service needs no password where it did (or was not there);
- ``severity``   its worst finding is worse than before and at least ``low``;
- ``cve``        a ``known-cve:*`` finding (an established, not a possible, CVE) is new;
- ``gone``       a reachable service of the previous cycle is closed, filtered or not VNC now
                 (opt-in; a pair the new cycle did not probe is never "gone");
- ``reminder``   a service is still reachable and nothing was said about it for N days
                 (opt-in, `remind_every`).

One alert per service and change: the rules a service matches in one cycle are one alert
(``rules`` lists them, most important first), and a service that stays as it was raises
nothing the next cycle. The first cycle of a monitor compares with nothing: every reachable
service it finds is "newly reachable".
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vncaudit.models import ServiceResult, Severity, State
from vncaudit.watch.config import AlertRules

REACHABLE = frozenset({State.VNC, State.BLACKLISTED})
KEY_PREFIX = "va1-"
_MIN_RAISED = Severity.LOW


def alert_key(monitor: str, scan_id: str, host: str, port: int) -> str:
    """The idempotency key of the alert about (host, port) in this cycle: the same whenever the
    cycle is evaluated again (after a crash), different for every other cycle or service."""
    digest = hashlib.sha256(f"{monitor}\n{scan_id}\n{host}\n{port}".encode()).hexdigest()
    return KEY_PREFIX + digest[:32]


@dataclass(frozen=True)
class Alert:
    """One alert: a service of one monitor changed (or is still open, for a reminder)."""

    key: str
    monitor: str
    scan_id: str
    previous_scan_id: str | None
    host: str
    port: int
    rules: tuple[str, ...]
    severity: str | None  # the service's worst finding now (before, for "gone")
    title: str
    details: tuple[str, ...]
    created: str
    product: str | None = None
    state: str | None = None  # now; None when the pair is not a service any more
    auth_required: bool | None = None
    findings: tuple[str, ...] = ()  # ids of the findings now

    @property
    def rule(self) -> str:
        return self.rules[0]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"alert for {self.address}"

    @property
    def tagged(self) -> str:
        """The title with the severity in brackets, unless the title ends by naming it."""
        sev = self.severity
        if not sev or self.title.endswith(f"severity {sev}"):
            return self.title
        return f"{self.title} [{sev}]"

    @property
    def text(self) -> str:
        """One line that chat webhooks (Slack, Mattermost, Teams) display as the message."""
        return f"vncaudit monitor {self.monitor}: {self.address} {self.tagged} " \
               f"(scan {self.scan_id})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "monitor": self.monitor,
            "scan_id": self.scan_id,
            "previous_scan_id": self.previous_scan_id,
            "host": self.host,
            "port": self.port,
            "rule": self.rule,
            "rules": list(self.rules),
            "severity": self.severity,
            "title": self.title,
            "details": list(self.details),
            "created": self.created,
            "product": self.product,
            "state": self.state,
            "auth_required": self.auth_required,
            "findings": list(self.findings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        return cls(key=str(d["key"]), monitor=str(d["monitor"]), scan_id=str(d["scan_id"]),
                   previous_scan_id=d.get("previous_scan_id"), host=str(d["host"]),
                   port=int(d["port"]), rules=tuple(d["rules"]), severity=d.get("severity"),
                   title=str(d["title"]), details=tuple(d.get("details") or ()),
                   created=str(d["created"]), product=d.get("product"), state=d.get("state"),
                   auth_required=d.get("auth_required"),
                   findings=tuple(d.get("findings") or ()))


@dataclass(frozen=True)
class Change:
    """One (host, port) whose stored facts differ between the two cycles."""

    host: str
    port: int
    before: ServiceResult | None  # None: not a service in the previous cycle
    after: ServiceResult | None  # None: not a service now (closed / filtered)
    lines: tuple[str, ...] = ()  # the diff's human lines, kept as the alert's details


@dataclass(frozen=True)
class Tracked:
    """A service the monitor has seen reachable: since when, and when it last alerted."""

    open_since: str
    last_alert: str | None = None


@dataclass(frozen=True)
class Evaluation:
    alerts: tuple[Alert, ...]
    tracked: dict[tuple[str, int], Tracked] = field(default_factory=dict)


def _reachable(r: ServiceResult | None) -> bool:
    return r is not None and r.state in REACHABLE


def _no_auth(r: ServiceResult | None) -> bool:
    return r is not None and r.rfb is not None and r.rfb.auth_required is False


def _rank(r: ServiceResult | None) -> int:
    worst = r.worst_severity if r is not None else None
    return worst.rank if worst is not None else -1


def _cves(r: ServiceResult | None) -> set[str]:
    if r is None:
        return set()
    return {f.id.split(":", 1)[1] for f in r.findings if f.id.startswith("known-cve:")}


def _product(r: ServiceResult | None) -> str | None:
    if r is None or r.product is None or r.product.name == "unknown":
        return None
    p = r.product
    return f"{p.name} {p.version}" if p.version else p.name


def _match(change: Change, rules: AlertRules) -> tuple[list[str], list[str]]:
    """(rules matched, title parts) for one change."""
    a, b = change.before, change.after
    matched: list[str] = []
    title: list[str] = []
    if rules.reachable and _reachable(b) and not _reachable(a):
        matched.append("reachable")
        title.append("VNC newly reachable" if b is None or b.state is State.VNC
                     else "VNC newly reachable (refusing us: blacklisted)")
    if rules.no_auth and _reachable(b) and _no_auth(b) and not _no_auth(a):
        matched.append("no-auth")
        title.append("no password needed" if matched[0] == "reachable"
                     else "authentication newly not required")
    if rules.severity and _rank(b) > _rank(a) and _rank(b) >= _MIN_RAISED.rank:
        assert b is not None and b.worst_severity is not None
        matched.append("severity")
        if a is None or a.worst_severity is None:
            title.append(f"worst severity {b.worst_severity.value}")
        else:
            title.append(f"worst severity raised to {b.worst_severity.value} "
                         f"(was {a.worst_severity.value})")
    new_cves = sorted(_cves(b) - _cves(a))
    if rules.cve and new_cves:
        matched.append("cve")
        title.append("known CVE " + ", ".join(new_cves))
    if rules.gone and _reachable(a) and not _reachable(b):
        now = b.state.value if b is not None else "closed or filtered"
        matched.append("gone")
        title.append(f"VNC service gone (now {now})")
    return matched, title


def evaluate(
    monitor: str,
    rules: AlertRules,
    scan_id: str,
    previous_scan_id: str | None,
    changes: Iterable[Change],
    open_now: Mapping[tuple[str, int], ServiceResult],
    not_probed: Iterable[tuple[str, int]],
    tracked: Mapping[tuple[str, int], Tracked],
    now: datetime,
) -> Evaluation:
    """The alerts of one cycle and the new tracking state.

    `changes`: the services that differ from the previous cycle (all services of the first
    cycle, as appeared). `open_now`: every reachable service of this cycle. `not_probed`:
    services of the previous cycle this one did not probe (kept tracked, never "gone").
    `tracked`: the state `evaluate` returned last time.
    """
    stamp = now.isoformat(timespec="seconds")
    alerts: list[Alert] = []
    alerted: set[tuple[str, int]] = set()
    for change in changes:
        before = change.before
        if (before is not None and before.state is State.NOT_PROBED and _reachable(change.after)
                and (change.host, change.port) in tracked):
            continue  # reachable before the cycle that could not probe it, and still is
        matched, title = _match(change, rules)
        if not matched:
            continue
        key = (change.host, change.port)
        alerted.add(key)
        b, a = change.after, change.before
        shown = b if b is not None else a
        worst = (shown.worst_severity if shown is not None else None)
        alerts.append(Alert(
            key=alert_key(monitor, scan_id, change.host, change.port), monitor=monitor,
            scan_id=scan_id, previous_scan_id=previous_scan_id, host=change.host,
            port=change.port, rules=tuple(matched), severity=worst.value if worst else None,
            title=", ".join(title), details=change.lines, created=stamp,
            product=_product(shown), state=b.state.value if b is not None else None,
            auth_required=(b.rfb.auth_required if b is not None and b.rfb is not None
                           else None),
            findings=tuple(f.id for f in b.findings) if b is not None else ()))
    skipped = set(not_probed)
    new_tracked: dict[tuple[str, int], Tracked] = {
        k: v for k, v in tracked.items() if k in skipped and k not in open_now}
    for key in open_now:  # the keys only: a result is read when a reminder needs it
        seen = tracked.get(key)
        since = seen.open_since if seen is not None else stamp
        last = seen.last_alert if seen is not None else None
        if key in alerted:
            last = stamp
        elif rules.remind_every and _due(since, last, rules.remind_every, now):
            alerts.append(_reminder(monitor, scan_id, previous_scan_id, open_now[key], since,
                                    stamp))
            last = stamp
        new_tracked[key] = Tracked(since, last)
    alerts.sort(key=lambda x: (-_sev_rank(x.severity), _host_order(x.host), x.port))
    return Evaluation(tuple(alerts), new_tracked)


def _host_order(host: str) -> tuple[int, int, str]:
    """Addresses in numeric order (127.0.0.2 before 127.0.0.10), IPv4 first, then names."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return (2, 0, host)
    return (address.version // 6, int(address), "")


def _due(since: str, last: str | None, every: float, now: datetime) -> bool:
    reference = datetime.fromisoformat(last or since)
    return now - reference >= timedelta(seconds=every)


def _sev_rank(value: str | None) -> int:
    return Severity(value).rank if value else -1


def _reminder(monitor: str, scan_id: str, previous: str | None, result: ServiceResult,
              since: str, stamp: str) -> Alert:
    worst = result.worst_severity
    how = "no password needed" if _no_auth(result) else "password required"
    return Alert(
        key=alert_key(monitor, scan_id, result.host, result.port), monitor=monitor,
        scan_id=scan_id, previous_scan_id=previous, host=result.host, port=result.port,
        rules=("reminder",), severity=worst.value if worst else None,
        title=f"VNC still reachable since {since[:10]} ({how}; reminder)",
        details=(), created=stamp, product=_product(result), state=result.state.value,
        auth_required=result.rfb.auth_required if result.rfb is not None else None,
        findings=tuple(f.id for f in result.findings))
