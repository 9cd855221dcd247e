"""One message in place of many: the digest of a cycle whose alerts are more than a channel
should get one by one.

Owns: the `Digest` record (what a webhook or e-mail channel sends instead of a burst of
alerts), its idempotency key, `build` (the counts, the top items and the commands that list
the rest, from a cycle's alerts) and `wants_digest` (the threshold rule). Pure: no I/O, no
clock. Must not: read or write the store, send anything, or decide which alerts a cycle raises
(`alerts` does); the alerts a digest stands for stay in the store, one by one.

The rule: a cycle whose alerts number MORE than a channel's digest threshold (its own, else
the monitor's `digest_threshold`) sends that webhook or e-mail channel one digest instead of
them; 0 never digests. Channels with the same threshold share one digest. Standard output is a
pipe for programs, not a person's inbox: it always gets every alert.
"""

from __future__ import annotations

import hashlib
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vncaudit.watch.alerts import KEY_PREFIX, Alert

DIGEST_RULE = "digest"
"""The `rule` of a digest's row in the store's alerts table (its host is empty, its port 0):
the outbox delivers it like an alert, the alert history leaves it out."""
TOP_ITEMS = 10
SEVERITIES = ("critical", "high", "medium", "low", "info", "none")
RULE_WORDS = {"reachable": "newly reachable", "no-auth": "authentication newly not required",
              "severity": "worst severity raised", "cve": "known CVE appeared",
              "gone": "gone", "reminder": "reminder (still reachable)"}


def digest_key(monitor: str, scan_id: str, threshold: int | None = None) -> str:
    """The idempotency key of a cycle's digest: the same whenever the cycle is evaluated again
    and on every retry; never the key of an alert (those hash four fields, this three).
    `threshold`: a channel's own threshold, when it is not the monitor's (its digest says so,
    so it is another message with a key of its own)."""
    text = f"{monitor}\n{scan_id}\n{DIGEST_RULE}"
    if threshold is not None:
        text += f"\nthreshold {threshold}"
    return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]


def wants_digest(alert_count: int, threshold: int) -> bool:
    """Whether a cycle with `alert_count` alerts sends a digest: more than `threshold`, and a
    threshold of 0 never does."""
    return threshold > 0 and alert_count > threshold


@dataclass(frozen=True)
class Digest:
    """A cycle's alerts for one monitor in one message: how many, of which kinds, the worst
    few, and the commands that list them all."""

    key: str
    monitor: str
    scan_id: str
    previous_scan_id: str | None
    count: int  # the alerts this digest stands for (every one is in the store)
    by_rule: tuple[tuple[str, int], ...]  # each alert under its main rule: sums to `count`
    by_severity: tuple[tuple[str, int], ...]  # sums to `count` ("none": no finding)
    no_auth: int  # alerts about a service that needs no password now
    top: tuple[Alert, ...]  # the most severe alerts, as the alerts list them
    commands: tuple[str, ...]  # where to see the rest
    created: str
    threshold: int

    @property
    def label(self) -> str:
        return f"digest of {self.count} alerts"

    @property
    def title(self) -> str:
        rules = ", ".join(f"{n} {RULE_WORDS.get(r, r)}" for r, n in self.by_rule)
        worst = ", ".join(f"{n} {s}" for s, n in self.by_severity if s != "none")
        parts = [f"{self.count} alerts: {rules}"]
        if worst:
            parts.append(f"severity {worst}")
        if self.no_auth:
            parts.append(f"{self.no_auth} need no password")
        return "; ".join(parts)

    @property
    def headline(self) -> str:
        return f"vncaudit monitor {self.monitor}: {self.title} (scan {self.scan_id}, digest)"

    @property
    def text(self) -> str:
        """The message chat webhooks display: the headline, the top items one per line, and
        the command that lists every alert."""
        lines = [self.headline, ""]
        lines += [f"• {_item(a)}" for a in self.top]
        more = self.count - len(self.top)
        if more > 0:
            lines.append(f"… and {more} more")
        lines += ["", f"All {self.count}: {self.commands[0]}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "monitor": self.monitor,
            "scan_id": self.scan_id,
            "previous_scan_id": self.previous_scan_id,
            "count": self.count,
            "by_rule": dict(self.by_rule),
            "by_severity": dict(self.by_severity),
            "no_auth": self.no_auth,
            "top": [a.to_dict() for a in self.top],
            "commands": list(self.commands),
            "created": self.created,
            "threshold": self.threshold,
            "title": self.title,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Digest:
        return cls(key=str(d["key"]), monitor=str(d["monitor"]), scan_id=str(d["scan_id"]),
                   previous_scan_id=d.get("previous_scan_id"), count=int(d["count"]),
                   by_rule=tuple((str(k), int(v)) for k, v in d["by_rule"].items()),
                   by_severity=tuple((str(k), int(v)) for k, v in d["by_severity"].items()),
                   no_auth=int(d.get("no_auth") or 0),
                   top=tuple(Alert.from_dict(a) for a in d.get("top") or ()),
                   commands=tuple(str(c) for c in d.get("commands") or ()),
                   created=str(d["created"]), threshold=int(d.get("threshold") or 0))


def _item(alert: Alert) -> str:
    return f"{alert.address} {alert.tagged}"


def commands(monitor: str, scan_id: str, previous: str | None, db: str | None) -> tuple[str, ...]:
    """The commands that show every alert of the cycle, then what its scan found."""
    on = f" --db {shlex.quote(db)}" if db else ""
    listed = (f"vncaudit alerts --monitor {shlex.quote(monitor)} --scan {shlex.quote(scan_id)}"
              f"{on}")
    found = (f"vncaudit diff {shlex.quote(previous)} {shlex.quote(scan_id)}{on}" if previous
             else f"vncaudit results {shlex.quote(scan_id)}{on}")
    return listed, found


def build(alerts: Sequence[Alert], monitor: str, scan_id: str, previous: str | None,
          created: str, threshold: int, db: str | None = None,
          top: int = TOP_ITEMS, own_threshold: bool = False) -> Digest:
    """The digest of a cycle's `alerts` (sorted most severe first, as `alerts.evaluate` sorts
    them). `db`: the store's path when commands must name it (not the default one).
    `own_threshold`: `threshold` is some channels' own, not the monitor's."""
    rules = Counter(a.rule for a in alerts)
    severities = Counter(a.severity or "none" for a in alerts)
    return Digest(
        key=digest_key(monitor, scan_id, threshold if own_threshold else None),
        monitor=monitor, scan_id=scan_id,
        previous_scan_id=previous, count=len(alerts),
        by_rule=tuple(sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))),
        by_severity=tuple((s, severities[s]) for s in SEVERITIES if severities[s]),
        no_auth=sum(1 for a in alerts if a.auth_required is False and a.state is not None),
        top=tuple(alerts[:top]), commands=commands(monitor, scan_id, previous, db),
        created=created, threshold=threshold)
