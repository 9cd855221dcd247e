"""HTML report (`-o html`): one self-contained page a person reads, forwards and acts on.

Owns: `render_html()` and the view model behind `templates/report.html.j2`: a summary by
severity (worst first), one card per service with the observed facts, the identified product
and its evidence, the findings with evidence and why they matter, the fix commands of the fix
guide (`vncaudit.remedies.remedies_for`, if installed) with copy buttons, and the proof of the
active checks — the screenshot embedded as a `data:image/png;base64` URI with the
login-screen-or-desktop verdict, the password audit and the auth-bypass check.

Must not: grade, probe, or load anything from the network. The page is one file: inline CSS,
images as data URIs, no external URL, and it reads fine without JavaScript (the only script
adds copy buttons). Its Content-Security-Policy allows no fetch at all and only that one
script (by hash), so even markup that slipped through could not load or run anything.

Every string a server sent is hostile. Jinja2 autoescaping is ON for the whole template (never
`|safe` on data), and `shown()` additionally makes control and bidirectional-override
characters visible as `\\xNN`/`\\uNNNN`, so a desktop name cannot hide or reorder text.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import jinja2

from vncaudit.desktop import KIND_WORDS
from vncaudit.display import shown as bounded
from vncaudit.models import SILENT_STATES, ServiceResult, Severity, State
from vncaudit.payloads import ActiveChecks, WebFrontEnd
from vncaudit.report import ScanMeta, severity_counts, sorted_findings

log = logging.getLogger(__name__)

MAX_EMBEDDED_PNG: Final = 8 * 1024 * 1024  # a bigger file is linked, not embedded
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"

# C0/C1 controls (except tab/newline) and the Unicode bidi/zero-width controls that can make
# text render differently from what it is ("Trojan Source").
_INVISIBLE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)

SEVERITY_LABEL: Final = {
    Severity.CRITICAL: "Critical",
    Severity.HIGH: "High",
    Severity.MEDIUM: "Medium",
    Severity.LOW: "Low",
    Severity.INFO: "Info",
}

DESKTOP_VERDICT: Final = KIND_WORDS  # label, severity class, meaning (vncaudit.desktop)


def shown(value: object) -> str:
    """`value` as text with invisible/bidi characters made visible (escaping is Jinja's)."""
    text = "" if value is None else str(value)

    def visible(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _INVISIBLE.sub(visible, text)


# -- view model -----------------------------------------------------------------------------------


@dataclass
class Fact:
    label: str
    value: str | list[str]
    mono: bool = False
    alert: bool = False  # shown highlighted (no authentication, a refusal)


@dataclass
class Shot:
    """The screenshot section: an embedded image or the reason there is none."""

    status: str
    data_uri: str | None = None
    width: int = 0
    height: int = 0
    note: str | None = None
    coverage: float | None = None
    verdict: tuple[str, str, str] | None = None  # (label, severity class, explanation)
    seen: str = ""  # what the screen shows, in words
    confidence: float | None = None
    evidence: list[str] = field(default_factory=list)


@dataclass
class Check:
    """One other active check (password audit, auth bypass, login) in one line or two."""

    name: str
    status: str
    level: str  # a severity class for the badge
    detail: str


@dataclass
class Service:
    result: ServiceResult
    anchor: str
    endpoint: str  # "host:port", "[v6]:port"
    worst: Severity | None
    facts: list[Fact]
    findings: list[Any]
    remedies: list[Any] | None  # None: the fix guide is not installed
    remediation_ids: list[str]
    shot: Shot | None
    checks: list[Check]
    transcript: str


def _endpoint(result: ServiceResult) -> str:
    host = f"[{result.host}]" if ":" in result.host else result.host
    return f"{host}:{result.port}"


def _anchor(result: ServiceResult) -> str:
    return "svc-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{result.host}-{result.port}").strip("-")


def authentication_words(result: ServiceResult) -> str:
    """The "Authentication" fact of a service, as the report and the web page word it."""
    facts = result.rfb
    need = facts.auth_required if facts is not None else None
    if need is False and any(f.id == "approval-required" for f in result.findings):
        return "NONE — no password, but the session was not handed out at once " \
               "(approval-required)"
    return {True: "required", False: "NONE — no password needed", None: "unknown"}[need]


def _facts(result: ServiceResult) -> list[Fact]:
    facts = result.rfb
    out: list[Fact] = []
    if result.hostname:
        out.append(Fact("Host name", result.hostname))
    out.append(Fact("State", result.state.value, alert=result.state is not State.VNC))
    web = result.extra.web or WebFrontEnd()
    if web.transport == "websocket" and web.websocket:
        out.append(Fact("Transport", f"RFB over WebSocket ({web.websocket.url})", mono=True))
    elif web.transport:
        out.append(Fact("Web front end", web.transport))
    if facts is None:
        if result.error:
            out.append(Fact("Detail", bounded(result.error)))
        return out
    if facts.banner:
        out.append(Fact("Banner", facts.banner.strip(), mono=True))
    if facts.server_version:
        answered = f" (we answered {facts.client_version})" if facts.client_version else ""
        out.append(Fact("RFB version", facts.server_version + answered))
    if facts.security_types:
        label = "Security type (server-chosen)" if facts.security_types_server_chosen else \
            "Security types"
        out.append(Fact(label, [f"{t.name} ({t.id})" for t in facts.security_types]))
    if facts.vencrypt is not None:
        out.append(Fact(f"VeNCrypt {facts.vencrypt.version} sub-types",
                        [f"{s.name} ({s.id})" for s in facts.vencrypt.subtypes] or ["none"]))
    if facts.tight is not None:
        if facts.tight.tunnels:
            out.append(Fact("Tight tunnels", [f"{c.vendor} {c.signature} ({c.code})"
                                              for c in facts.tight.tunnels], mono=True))
        out.append(Fact("Tight auth", [f"{c.vendor} {c.signature} ({c.code})"
                                       for c in facts.tight.auth] or ["none (no auth)"],
                        mono=True))
    if facts.tls_inner_types is not None:
        out.append(Fact("Inside TLS", [f"{t.name} ({t.id})" for t in facts.tls_inner_types]
                        or ["none"]))
    out.append(Fact("Authentication", authentication_words(result),
                    alert=facts.auth_required is False))
    if facts.security_result:
        out.append(Fact("SecurityResult", facts.security_result))
    if facts.failure_reason:
        out.append(Fact("Server's reason", bounded(facts.failure_reason), alert=True))
    if facts.desktop_name is not None:
        out.append(Fact("Desktop name", bounded(facts.desktop_name), mono=True))
    if facts.framebuffer is not None:
        fb = facts.framebuffer
        out.append(Fact("Geometry", f"{fb.width} × {fb.height}, depth {fb.depth}"
                        + (f", {fb.bits_per_pixel} bpp" if fb.bits_per_pixel else "")))
    if facts.notes:
        out.append(Fact("Notes", [bounded(n) for n in facts.notes]))
    if result.error:
        out.append(Fact("Detail", bounded(result.error)))
    out.append(Fact("Probe time", f"{result.elapsed * 1000:.0f} ms"))
    return out


def _load_png(path_text: str) -> tuple[bytes | None, str | None]:
    path = Path(path_text)
    try:
        size = path.stat().st_size
        if size > MAX_EMBEDDED_PNG:
            return None, f"screenshot too large to embed ({size} bytes): {path}"
        data = path.read_bytes()
    except OSError as exc:
        return None, f"screenshot file not readable: {path} ({exc.strerror or exc})"
    if not data.startswith(PNG_MAGIC):
        return None, f"not a PNG file: {path}"
    return data, None


def _shot(active: ActiveChecks) -> Shot | None:
    info = active.screenshot
    if info is None:
        return None
    shot = Shot(status=info.status, width=info.width, height=info.height)
    if not info.taken:
        shot.note = info.reason or "no screenshot was taken"
        return shot
    shot.coverage = info.coverage
    if info.path:
        data, problem = _load_png(info.path)
        if data is not None:
            shot.data_uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        shot.note = problem
    else:
        shot.note = "the screenshot was taken but not saved (no screenshot directory)"
    if info.reason and shot.note is None:
        shot.note = info.reason  # e.g. a partial image
    kind = active.desktop_kind
    if kind is not None:
        shot.verdict = DESKTOP_VERDICT.get(kind.kind, DESKTOP_VERDICT["unknown"])
        shot.confidence = kind.confidence
        shot.seen = kind.seen or ""
        shot.evidence = list(kind.evidence)
    return shot


def _checks(active: ActiveChecks) -> list[Check]:
    out: list[Check] = []
    auth = active.auth.handshake if active.auth is not None else None
    if auth is not None:
        ok = auth.outcome == "ok"
        detail = "authenticated with the given password" if ok else \
            f"{auth.outcome}: {auth.reason or ''}".strip(": ")
        if ok and auth.desktop_name is not None:
            detail += f"; desktop name {auth.desktop_name!r}"
        out.append(Check("Login with --password", auth.outcome, "info" if ok else "low", detail))
    audit = active.password_audit
    if audit is not None:
        level = {"found": "critical", "not-found": "info"}.get(audit.status, "low")
        detail = f"{audit.attempts} of at most {audit.budget} attempts ({audit.source} list)"
        if audit.found:
            detail = f"password accepted: {audit.password}; " + detail
        if audit.stop_reason:
            detail += f"; {audit.stop_reason}"
        out.append(Check("Weak-password audit", audit.status, level, detail))
    bypass = active.unoffered_none
    if bypass is not None:
        level = {"vulnerable": "critical", "not-vulnerable": "info"}.get(bypass.status, "low")
        cves = ", ".join(bypass.cves)
        out.append(Check(f"Auth bypass ({cves})" if cves else "Auth bypass", bypass.status,
                         level, bypass.evidence or ""))
    if active.error:
        out.append(Check("Active checks", "error", "low", active.error))
    return out


def _remedies(result: ServiceResult) -> list[Any] | None:
    """The fix guide's remedies for this service; None when the guide is not installed."""
    try:
        # Looked up by name (sys.modules first): the guide is optional for this module.
        guide = importlib.import_module("vncaudit.remedies")
    except ImportError:
        return None
    try:
        return list(guide.remedies_for(result))
    except (KeyError, ValueError) as exc:  # an id the guide does not know: show the rest
        log.warning("fix guide for %s:%s: %s", result.host, result.port, exc)
        return []


def _service(result: ServiceResult) -> Service:
    active = result.extra.active or ActiveChecks()
    findings = sorted_findings(result)
    ids = list(dict.fromkeys(rid for f in findings for rid in f.remediation))
    transcript = result.transcript_hex
    return Service(
        result=result,
        anchor=_anchor(result),
        endpoint=_endpoint(result),
        worst=result.worst_severity,
        facts=_facts(result),
        findings=findings,
        remedies=_remedies(result) if findings else [],
        remediation_ids=ids,
        shot=_shot(active),
        checks=_checks(active),
        transcript=" ".join(transcript[i:i + 32] for i in range(0, len(transcript), 32)),
    )


def _discovery(meta: ScanMeta) -> list[dict[str, Any]]:
    """`scan --domain` records (how each name was found), as plain dicts for the template."""
    found = meta.extra.get("discovery")
    out: list[dict[str, Any]] = []
    for d in found if isinstance(found, list) else []:
        if not isinstance(d, dict):
            continue
        out.append({
            "domain": str(d.get("domain", "")),
            "hosts": [{"name": str(h.get("name", "")),
                       "addresses": [str(a) for a in h.get("addresses") or []],
                       "sources": [str(x) for x in h.get("sources") or []]}
                      for h in d.get("hosts") or [] if isinstance(h, dict)],
            "open_axfr": sorted(str(k) for k, v in (d.get("axfr") or {}).items() if v == "ok"),
            "wildcard": d.get("wildcard"),
            "queries": int(d.get("queries") or 0),
        })
    return out


def _order(services: Sequence[Service]) -> list[Service]:
    """Worst first; services without findings after, VNC before the rest; stable otherwise."""
    def key(s: Service) -> tuple[int, int]:
        return (-(s.worst.rank if s.worst else -1), 0 if s.result.state is State.VNC else 1)

    return sorted(services, key=key)


# -- rendering ------------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("vncaudit.report").joinpath("templates", name).read_text("utf-8")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vncaudit.report", "templates"),
        autoescape=True,  # everything a server sent is hostile; never disable for data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shown"] = shown
    return env


def _script_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def render_html(meta: ScanMeta, results: Iterable[ServiceResult]) -> str:
    """The self-contained HTML page for these (already filtered) services."""
    results = list(results)
    listed = [r for r in results if r.state not in SILENT_STATES]
    quiet = [r for r in results if r.state in SILENT_STATES]
    services = _order([_service(r) for r in listed])
    counts = severity_counts(listed)
    worst = next((sev for sev, n in counts.items() if n), None)
    script = _asset("report.js")
    guide_missing = any(s.remedies is None for s in services)
    context = {
        "meta": meta,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "counts": counts,
        "labels": SEVERITY_LABEL,
        "worst": worst,
        "services": services,
        "quiet": quiet,
        "total": len(listed),
        "vnc": sum(r.state is State.VNC for r in listed),
        "no_auth": sum(bool(r.rfb and r.rfb.auth_required is False) for r in listed),
        "hosts": len({r.host for r in listed}),
        "with_findings": sum(bool(r.findings) for r in listed),
        "css": _asset("report.css"),
        "script": script,
        "script_hash": _script_hash(script),
        "guide_missing": guide_missing,
        "discovery": _discovery(meta),
    }
    return _environment().get_template("report.html.j2").render(context)
