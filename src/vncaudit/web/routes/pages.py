"""The HTML pages: the check form, the live progress / result page, and the history.

Owns: `GET /`, `POST /scans` (the form; CSRF-checked), `GET /scans/{id}` (progress while it
runs, then verdict banner, one card per service, findings with reasons and the fix commands),
`GET /scans/{id}/status` (what the page's script polls), `GET /scans/{id}/screenshots/{name}`
(the result page's images, under the page's visibility rule), `GET /history` (past scans with
the diff to the previous scan of the same target). Server-rendered; the result is complete without
JavaScript (without it the running page refreshes itself through a <noscript> meta refresh).
Must not: bypass the API's submission path (`api.submit`: rate limit → policy → queue).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from vncaudit import __version__
from vncaudit.models import Severity
from vncaudit.store import ScanDiff, ScanRecord
from vncaudit.web.deps import AppContext, ClientDep, CtxDep, can_view
from vncaudit.web.routes.api import ScanId, ShotName, SubmitRefused, submit
from vncaudit.web.security import CSRF_COOKIE, Csrf
from vncaudit.web.views import (
    diff_to_previous,
    fix_guide,
    scan_public,
    scan_status,
    screenshot_card,
    screenshot_file,
    service_facts,
    verdict,
)

router = APIRouter(include_in_schema=False)

PRESETS: tuple[tuple[str, str], ...] = (
    ("5900", "Port 5900"),
    ("5900-5910", "VNC 5900-5910"),
    ("1-65535", "All 65535 ports"),
    ("custom", "Custom"),
)


def render_page(ctx: AppContext, request: Request, name: str, http_status: int = 200,
          **values: Any) -> HTMLResponse:
    cookie = request.cookies.get(CSRF_COOKIE)
    fresh = not cookie or len(cookie) > 100
    if fresh:
        cookie = Csrf.new_cookie()
    assert cookie is not None
    html = ctx.templates.get_template(name).render(
        csrf_token=ctx.csrf.form_token(cookie), version=__version__, **values)
    response = HTMLResponse(html, status_code=http_status)
    if fresh:
        response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


def _form_page(ctx: AppContext, request: Request, client: str, status: int = 200,
               error: str | None = None, target: str | None = None, preset: str = "5900",
               ports: str = "", screenshot: bool = False) -> HTMLResponse:
    return render_page(ctx, request, "index.html", status, client=client, error=error,
                 target=client if target is None else target, preset=preset, ports=ports,
                 presets=PRESETS, own_only=ctx.settings.allow_own_address and not
                 ctx.settings.allow, discovery=bool(ctx.policy.domains),
                 screenshots=ctx.settings.allow_screenshots, screenshot=screenshot)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, ctx: CtxDep, client: ClientDep) -> HTMLResponse:
    return _form_page(ctx, request, client)


@router.post("/scans", response_model=None)
async def submit_form(
    request: Request, ctx: CtxDep, client: ClientDep,
    target: Annotated[str, Form(max_length=300)] = "",
    preset: Annotated[str, Form(max_length=20)] = "5900",
    ports: Annotated[str, Form(max_length=300)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    subdomains: Annotated[str, Form(max_length=10)] = "",
    screenshot: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    shot = bool(screenshot)
    if not ctx.csrf.valid(request.cookies.get(CSRF_COOKIE), csrf_token):
        ctx.metrics.refused.labels("csrf").inc()
        return _form_page(ctx, request, client, 403, "The form expired or was not sent from "
                          "this page; please submit it again.", target, preset, ports, shot)
    spec = ports.strip() if preset == "custom" else preset
    if preset not in {p for p, _ in PRESETS}:
        spec = "5900"
    try:
        scan_id = await submit(ctx, target.strip(), spec or "5900", client, bool(subdomains),
                               shot)
    except SubmitRefused as exc:
        return _form_page(ctx, request, client, exc.status, exc.detail, target, preset, ports,
                          shot)
    return RedirectResponse(f"/scans/{scan_id}", status_code=303)


def _not_found(ctx: AppContext, request: Request, scan_id: str) -> HTMLResponse:
    return render_page(ctx, request, "error.html", 404, title="Not found",
                 message=f"There is no scan {scan_id} that you may see.")


@router.get("/scans/{scan_id}", response_class=HTMLResponse)
def scan_page(scan_id: ScanId, request: Request, ctx: CtxDep,
              client: ClientDep) -> HTMLResponse:
    record = ctx.store.get_scan(scan_id)
    if record is None or not can_view(ctx, record, client):
        return _not_found(ctx, request, scan_id)
    job = ctx.jobs.get(scan_id)
    status = scan_status(record, job)
    running = status in ("queued", "running")
    results = ctx.store.results(scan_id)
    public = scan_public(ctx.store, record, job, include_closed=False)
    # Worst first: the card that explains the verdict banner comes right under it.
    results.sort(key=lambda r: -(r.worst_severity.rank if r.worst_severity else -1))
    cards = [{"result": r, "facts": service_facts(r),
              "findings": sorted(r.findings, key=lambda f: -f.severity.rank),
              "fixes": fix_guide(r), "shot": screenshot_card(r, scan_id)} for r in results]
    if not running:
        everything = ctx.store.results(scan_id, include_closed=public["progress"]["total"]
                                       <= 256)
        the_verdict = verdict(everything, True)
    else:
        the_verdict = verdict(results, False)
    prev, diff = (None, None) if running else diff_to_previous(
        ctx.store, record, lambda other: can_view(ctx, other, client))
    return render_page(ctx, request, "scan.html", record=record, status=status, running=running,
                 scan=public, verdict=the_verdict, cards=cards, previous=prev, diff=diff)


@router.get("/scans/{scan_id}/screenshots/{name}", response_model=None)
def screenshot_image(scan_id: ScanId, name: ShotName, request: Request, ctx: CtxDep,
                     client: ClientDep) -> Response:
    record = ctx.store.get_scan(scan_id)
    path = None
    if record is not None and can_view(ctx, record, client):
        path = screenshot_file(ctx.store, ctx.jobs.screenshots, scan_id, name)
    if path is None:
        return _not_found(ctx, request, scan_id)
    return FileResponse(path, media_type="image/png")


@router.get("/scans/{scan_id}/status")
def scan_status_json(scan_id: ScanId, ctx: CtxDep, client: ClientDep) -> JSONResponse:
    record = ctx.store.get_scan(scan_id)
    if record is None or not can_view(ctx, record, client):
        return JSONResponse({"detail": "not found"}, status_code=404)
    job = ctx.jobs.get(scan_id)
    status = scan_status(record, job)
    done = job.done if job is not None else int(record.counts.get("done", 0))
    total = job.total if job is not None else done
    running = status in ("queued", "running")
    found = verdict(ctx.store.results(scan_id), not running)
    return JSONResponse({"status": status, "done": done, "total": total,
                         "phase": job.phase if job is not None else "scanning",
                         "open": int(record.counts.get("services", 0)),
                         "verdict": {**found.to_dict(), "css": found.css}})


def _summary_verdict(counts: dict[str, int]) -> tuple[str, str | None]:
    if counts.get("services", 0) == 0:
        return "closed", None
    for sev in (Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW,
                Severity.INFO):
        if counts.get(sev.value, 0):
            return "open", sev.value
    return "open", None


@router.get("/history", response_class=HTMLResponse)
def history(request: Request, ctx: CtxDep, client: ClientDep) -> HTMLResponse:
    records = [r for r in ctx.store.list_scans(limit=ctx.settings.history_limit)
               if r.options.get("source") == "web" and can_view(ctx, r, client)]
    # The previous scan of each target is usually the next older row of the same target; only
    # the oldest row of each target asks the store (one query per target, not per row).
    last: dict[str, ScanRecord] = {}
    rows: list[dict[str, Any]] = []
    for record in reversed(records):
        status = scan_status(record, ctx.jobs.get(record.id))
        state, severity = _summary_verdict(record.counts)
        target = str(record.options.get("target", ""))
        prev: ScanRecord | None = None
        diff: ScanDiff | None = None
        if status == "finished":
            if target in last:
                prev = last[target]
                diff = ctx.store.diff(prev.id, record.id)
            else:
                prev, diff = diff_to_previous(
                    ctx.store, record, lambda other: can_view(ctx, other, client))
            last[target] = record
        rows.append({"record": record, "status": status, "state": state,
                     "severity": severity, "previous": prev, "diff": diff})
    rows.reverse()
    return render_page(ctx, request, "history.html", rows=rows,
                 public=ctx.settings.public_history)
