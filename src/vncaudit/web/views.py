"""What the pages and the API show about a scan: verdict, service facts, fix guide, history.

Owns: the read side shared by the JSON API and the HTML pages — a scan's public dict, its
verdict (open / closed / filtered with the worst severity), the observed facts of each service
as label/value pairs, the fix guide for a result, the previous scan of the same target with
the diff to it, and a service's screenshot: its URL on this service (the stored file path is
never shown), the login-screen-or-desktop verdict, and which stored file a URL names.
Must not: write to the store, run scans, or import FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vncaudit.desktop import KIND_WORDS
from vncaudit.display import shown
from vncaudit.models import SILENT_STATES, ServiceResult, Severity, State
from vncaudit.payloads import ScreenshotCheck
from vncaudit.report.html import authentication_words
from vncaudit.store import ScanDiff, ScanRecord, Store
from vncaudit.web.jobs import SCREENSHOT_API_URL, Job

log = logging.getLogger(__name__)

SMALL_SCAN = 256


@dataclass(frozen=True)
class Verdict:
    state: str  # open | closed | filtered | pending
    severity: str | None  # worst finding severity, None without findings
    text: str

    @property
    def css(self) -> str:
        """The banner's colour class: the severity when open with findings, else the state."""
        if self.state == "open" and self.severity:
            return f"sev-{self.severity}"
        return f"state-{self.state}"

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "severity": self.severity, "text": self.text}


def verdict(results: list[ServiceResult], finished: bool) -> Verdict:
    """The one-line answer to "is VNC reachable here, and how bad is it?"."""
    open_ = [r for r in results if r.state not in SILENT_STATES]
    findings = [f for r in results for f in r.findings]
    worst = max(findings, key=lambda f: f.severity.rank) if findings else None
    severity = worst.severity.value if worst else None
    if open_:
        vnc = [r for r in open_ if r.state in (State.VNC, State.BLACKLISTED)]
        unprobed = [r for r in open_ if r.state is State.NOT_PROBED]
        if vnc:
            text = f"Open: {_count(len(vnc), 'VNC service')} reachable"
        elif len(unprobed) == len(open_):  # nothing read, nothing sent: no claim about VNC
            text = (f"Not probed: {_count(len(unprobed), 'port')}, to keep the server from "
                    "refusing this address (see the service)")
        else:
            text = f"Open: {_count(len(open_), 'port')} open, no VNC service"
        if worst is not None:
            text += f" — {worst.severity.value}: {worst.title}"
        return Verdict("open", severity, text)
    if not finished:
        return Verdict("pending", None, "Scanning…")
    closed = [r for r in results if r.state is State.CLOSED]
    if closed:
        which = "the port" if len(results) == 1 else _count(len(closed), "port")
        return Verdict("closed", None, f"Closed: {which} refused the connection")
    if results:
        return Verdict("filtered", None, "Filtered: no answer (a firewall drops the traffic)")
    return Verdict("filtered", None, "Nothing was probed")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def service_facts(r: ServiceResult) -> list[tuple[str, str]]:
    """The observed facts of one service, as (label, value) rows for its card."""
    rows: list[tuple[str, str]] = [("State", r.state.value)]
    if r.hostname:
        rows.append(("Host name", r.hostname))
    if r.product is not None and r.product.name != "unknown":
        text = r.product.name + (f" {r.product.version}" if r.product.version else "")
        rows.append(("Product", f"{text} (confidence {r.product.confidence:.0%})"))
    facts = r.rfb
    if facts is not None:
        if facts.server_version:
            rows.append(("RFB version", facts.server_version))
        if facts.security_types:
            rows.append(("Security types",
                         ", ".join(f"{t.name} ({t.id})" for t in facts.security_types)))
        if facts.vencrypt is not None:
            rows.append(("VeNCrypt", ", ".join(s.name for s in facts.vencrypt.subtypes)
                         or "no sub-types"))
        if facts.tls_inner_types is not None:
            rows.append(("Inside TLS", ", ".join(t.name for t in facts.tls_inner_types)))
        rows.append(("Authentication", authentication_words(r)))
        if facts.security_result:
            rows.append(("Security result", facts.security_result))
        if facts.desktop_name is not None:
            rows.append(("Desktop name", shown(facts.desktop_name)))
        if facts.framebuffer is not None:
            fb = facts.framebuffer
            rows.append(("Screen", f"{fb.width}×{fb.height}, depth {fb.depth}"))
        if facts.failure_reason:
            rows.append(("Server said", shown(facts.failure_reason)))
    tls = r.extra.tls
    if tls is not None and tls.version:
        rows.append(("TLS", f"{tls.version} {tls.cipher or ''}".strip()))
    if r.error:
        rows.append(("Note", shown(r.error)))
    return rows


def fix_guide(r: ServiceResult) -> list[Any]:
    """The fix guide's remedies for this result (`vncaudit.remedies.remedies_for`)."""
    if not r.findings:
        return []
    from vncaudit.remedies import remedies_for

    return list(remedies_for(r))


def remedy_dict(remedy: Any) -> dict[str, Any]:
    d: dict[str, Any] = remedy.to_dict()
    d.setdefault("by_product", [])
    return d


def scan_status(record: ScanRecord, job: Job | None) -> str:
    """queued / running / finished / failed / interrupted. A store record still "running"
    with no live job was left by a killed server: it is reported as interrupted."""
    if job is not None:
        return job.status
    return "interrupted" if record.status == "running" else record.status


def previous_scan(store: Store, record: ScanRecord,
                  visible: Callable[[ScanRecord], bool] | None = None) -> ScanRecord | None:
    """The newest scan of the same target that started before *record* (and that *visible*
    accepts: another client's scan of the same target must not leak through the diff)."""
    target = str(record.options.get("target") or (record.targets[0] if record.targets else ""))
    if not target:
        return None
    earlier = False
    for other in store.list_scans(limit=200, target=target):
        if other.id == record.id:
            earlier = True
            continue
        if earlier and other.options.get("source") == "web" and other.status == "finished" \
                and (visible is None or visible(other)):
            return other
    return None


def diff_to_previous(store: Store, record: ScanRecord,
                     visible: Callable[[ScanRecord], bool] | None = None,
                     ) -> tuple[ScanRecord | None, ScanDiff | None]:
    prev = previous_scan(store, record, visible)
    if prev is None:
        return None, None
    return prev, store.diff(prev.id, record.id)


SCREENSHOT_PAGE_URL = "/scans/{scan_id}/screenshots/{name}"
# The page's wording for `vncaudit.active.desktop_kind`: the HTML report's (vncaudit.desktop).
DESKTOP_VERDICT: dict[str, tuple[str, str, str]] = KIND_WORDS


def _shot_info(r: ServiceResult) -> ScreenshotCheck | None:
    return r.extra.active.screenshot if r.extra.active is not None else None


def screenshot_name(r: ServiceResult) -> str | None:
    """The file name of the service's stored screenshot (what its URL ends in), or None."""
    info = _shot_info(r)
    if info is None or not info.taken or not info.path:
        return None
    return Path(info.path).name


def with_screenshot_urls(r: ServiceResult, scan_id: str) -> ServiceResult:
    """A copy for clients: the screenshot's server path replaced by its API URL."""
    info = _shot_info(r)
    if info is None or r.extra.active is None:
        return r
    name = screenshot_name(r)
    url = SCREENSHOT_API_URL.format(scan_id=scan_id, name=name) if name is not None else None
    shown = replace(info, path=None, url=url, client_view=True)
    return r.with_extra(active=replace(r.extra.active, screenshot=shown))


def screenshot_card(r: ServiceResult, scan_id: str) -> dict[str, Any] | None:
    """What the result page shows of a service's screenshot, or None when none was asked."""
    info = _shot_info(r)
    if info is None or r.extra.active is None:
        return None
    name = screenshot_name(r)
    kind = r.extra.active.desktop_kind
    verdict_ = None
    if name is not None and kind is not None:
        label, css, why = DESKTOP_VERDICT.get(kind.kind, DESKTOP_VERDICT["unknown"])
        verdict_ = {"kind": kind.kind, "label": label, "css": css, "why": why,
                    "seen": kind.seen or "", "confidence": kind.confidence,
                    "evidence": list(kind.evidence)}
    return {
        "status": info.status,
        "url": (SCREENSHOT_PAGE_URL.format(scan_id=scan_id, name=name)
                if name is not None else None),
        "width": info.width,
        "height": info.height,
        "coverage": info.coverage if info.outcome is not None else None,
        "note": info.reason,
        "verdict": verdict_,
    }


def screenshot_file(store: Store, root: Path, scan_id: str, name: str) -> Path | None:
    """The stored PNG that *name* names among the scan's results, or None. The name is only
    compared with stored names, never joined to a path, and the file must lie in the scan's
    own folder under *root*."""
    folder = (root / scan_id).resolve()
    for r in store.results(scan_id):
        if screenshot_name(r) != name:
            continue
        info = _shot_info(r)
        assert info is not None and info.path is not None
        path = Path(info.path).resolve()
        if path.parent == folder and path.is_file():
            return path
    return None


def scan_public(store: Store, record: ScanRecord, job: Job | None,
                include_closed: bool = True) -> dict[str, Any]:
    """The API's view of a scan (`ScanPublic`)."""
    status = scan_status(record, job)
    done = job.done if job is not None else int(record.counts.get("done", 0))
    total = job.total if job is not None else _total(record)
    # Closed/filtered ports come back as bare results only for small scans: an "all 65535"
    # scan would otherwise list every closed port.
    results = ([] if job is not None and job.done == 0 else
               store.results(record.id, include_closed=include_closed and total <= SMALL_SCAN))
    finished = status not in ("queued", "running")
    services = [dict(with_screenshot_urls(r, record.id).to_dict(),
                     fix=[remedy_dict(x) for x in fix_guide(r)]) for r in results]
    return {
        "id": record.id,
        "status": status,
        "target": str(record.options.get("target", "")),
        "hostname": record.options.get("hostname"),
        "addresses": (list(job.decision.addresses) if job is not None
                      else list(record.options.get("addresses") or [])),
        "ports": record.ports,
        "started": record.started,
        "finished": record.finished,
        "progress": {"done": done, "total": total},
        "verdict": verdict(results, finished).to_dict(),
        "error": job.error if job is not None else None,
        "services": services,
        "reports": {fmt: f"/api/scans/{record.id}/report.{fmt}"
                    for fmt in ("json", "html", "xml", "sarif", "defectdojo")},
        "phase": job.phase if job is not None else "scanning",
        "refused": [dict(r) for r in record.options.get("refused") or []],
    }


def _total(record: ScanRecord) -> int:
    addresses = record.options.get("addresses") or []
    from vncaudit.targets import parse_ports

    try:
        return len(addresses) * len(parse_ports(record.ports))
    except Exception:  # an old or foreign record: progress is then just "done"
        return int(record.counts.get("done", 0))


def severity_rank(name: str | None) -> int:
    return Severity(name).rank if name else -1
