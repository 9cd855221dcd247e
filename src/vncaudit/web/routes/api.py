"""The JSON scans API: submit a scan, poll it, fetch its report.

Owns: `POST /api/scans`, `GET /api/scans`, `GET /api/scans/{id}`,
`GET /api/scans/{id}/report.{json,html,xml,sarif,defectdojo}`,
`GET /api/scans/{id}/screenshots/{name}` (a stored PNG, under the same visibility rule as the
scan) and their public models. Every submission goes rate limit → target policy → job queue,
in that order, so nothing reaches the engine that the policy did not turn into literal
addresses. Must not: probe, resolve names itself, or render HTML pages.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from vncaudit import report
from vncaudit.web.deps import (
    AppContext,
    ClientDep,
    CtxDep,
    TokenDep,
    can_view,
    viewable_scan,
)
from vncaudit.web.jobs import QueueFullError, TooManyActiveError
from vncaudit.web.policy import Decision, PolicyError, parse_address
from vncaudit.web.security import REPORT_CSP
from vncaudit.web.views import scan_public, scan_status, screenshot_file, with_screenshot_urls

router = APIRouter(prefix="/api", tags=["scans"])

ScanId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$",
                             description="Scan id as returned by POST /api/scans")]
ShotName = Annotated[str, Path(min_length=5, max_length=120, pattern=r"^[A-Za-z0-9._-]+\.png$",
                               description="File name from the service's "
                               "`extra.active.screenshot.url`")]


class ScanCreate(BaseModel):
    """What to check. The server decides whether you may (see the README's safety rules)."""

    target: str = Field(min_length=1, max_length=255, examples=["203.0.113.7"],
                        description="An IP address (any spelling) or a host name")
    ports: str = Field(default="5900", min_length=1, max_length=200,
                       examples=["5900", "5900-5910", "all"],
                       description="Ports: 5900, 5900-5910, :0-:9, all")
    subdomains: bool = Field(default=False, description="Also find the domain's hosts through "
                             "DNS (zone transfer, common names) and check each address; only "
                             "for domains the operator allow-lists")
    screenshot: bool = Field(default=False, description="Also take a screenshot of each VNC "
                             "service that needs no password (proof; one framebuffer update, "
                             "no input events). Refused with 400 when the operator disabled "
                             "screenshots (`allow_screenshots`)")


class Progress(BaseModel):
    done: int
    total: int


class VerdictPublic(BaseModel):
    state: Literal["open", "closed", "filtered", "pending"]
    severity: str | None
    text: str


class ScanPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "finished", "failed", "interrupted"]
    phase: Literal["scanning", "discovering"]
    target: str
    hostname: str | None
    addresses: list[str]
    ports: str
    started: str
    finished: str | None
    progress: Progress
    verdict: VerdictPublic
    error: str | None
    services: list[dict[str, Any]] = Field(
        description="Result schema v1 services (README), each with `fix`: the fix guide")
    reports: dict[str, str]
    refused: list[dict[str, str]] = Field(
        description="Discovered addresses the policy refused, with the reason")


class ScanSummary(BaseModel):
    id: str
    status: str
    target: str
    ports: str
    started: str
    finished: str | None
    counts: dict[str, int]


class ErrorPublic(BaseModel):
    detail: str
    code: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorPublic, "description": "Not an address, host name or port list, "
          "or a screenshot asked for where screenshots are disabled"},
    401: {"model": ErrorPublic, "description": "API token missing or wrong"},
    403: {"model": ErrorPublic, "description": "Refused by the target policy"},
    429: {"model": ErrorPublic, "description": "Too many submissions, or too many scans "
          "still running, from your address"},
    503: {"model": ErrorPublic, "description": "Too many scans waiting"},
}


def error(status: int, detail: str, code: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


async def decide(ctx: AppContext, target: str, ports: str, client: str,
                 subdomains: bool = False) -> Decision:
    """The policy decision; a host name is resolved in a thread (getaddrinfo blocks)."""
    if subdomains:
        return ctx.policy.decide_discovery(target, ports, client)
    try:
        literal = parse_address(target) is not None
    except PolicyError:
        literal = True  # decide() raises the same error without resolving
    if literal:
        return ctx.policy.decide(target, ports, client)
    return await asyncio.to_thread(ctx.policy.decide, target, ports, client)


SCREENSHOTS_DISABLED = ("screenshots are disabled on this service (the operator's "
                        "allow_screenshots setting); submit without screenshot")


async def submit(ctx: AppContext, target: str, ports: str, client: str,
                 subdomains: bool = False, screenshot: bool = False) -> str:
    """Rate limit, policy, queue; returns the scan id or raises `SubmitRefused`."""
    if screenshot and not ctx.settings.allow_screenshots:
        # An input error, refused before anything else: the request can never succeed here.
        ctx.metrics.refused.labels("screenshots-disabled").inc()
        raise SubmitRefused(400, SCREENSHOTS_DISABLED, "screenshots-disabled")
    wait = ctx.limiter.take(client)
    if wait > 0:
        ctx.metrics.refused.labels("rate-limit").inc()
        raise SubmitRefused(429, "too many scans from your address; try again in "
                            f"{math.ceil(wait)} s", "rate-limit",
                            {"Retry-After": str(math.ceil(wait))})
    try:
        decision = await decide(ctx, target, ports, client, subdomains)
    except PolicyError as exc:
        ctx.metrics.refused.labels(exc.code).inc()
        raise SubmitRefused(exc.status, str(exc), exc.code) from None
    try:
        job = ctx.jobs.submit(decision, client, screenshot)
    except QueueFullError as exc:
        ctx.metrics.refused.labels("queue-full").inc()
        raise SubmitRefused(503, str(exc), "queue-full", {"Retry-After": "60"}) from None
    except TooManyActiveError as exc:
        ctx.metrics.refused.labels("too-many-active").inc()
        raise SubmitRefused(429, str(exc), "too-many-active", {"Retry-After": "10"}) from None
    return job.scan_id


class SubmitRefused(Exception):
    def __init__(self, status: int, detail: str, code: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code, self.headers = status, detail, code, headers


@router.post("/scans", status_code=201, response_model=ScanPublic, responses=_ERRORS)
async def create_scan(body: ScanCreate, response: Response, ctx: CtxDep, client: ClientDep,
                      token: TokenDep) -> Any:
    """Check a target's ports. Returns at once; poll the scan until `status` is final."""
    try:
        scan_id = await submit(ctx, body.target, body.ports, client, body.subdomains,
                               body.screenshot)
    except SubmitRefused as exc:
        return error(exc.status, exc.detail, exc.code, exc.headers)
    record = ctx.store.require_scan(scan_id)
    response.headers["Location"] = f"/api/scans/{scan_id}"
    return scan_public(ctx.store, record, ctx.jobs.get(scan_id))


@router.get("/scans", response_model=list[ScanSummary], responses={401: _ERRORS[401]})
def list_scans(ctx: CtxDep, client: ClientDep, token: TokenDep,
               limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Any:
    """Your most recent scans (all scans with an API token or public history)."""
    out = []
    for record in ctx.store.list_scans(limit=ctx.settings.history_limit):
        if record.options.get("source") != "web" or not can_view(ctx, record, client, token):
            continue
        out.append(ScanSummary(id=record.id,
                               status=scan_status(record, ctx.jobs.get(record.id)),
                               target=str(record.options.get("target", "")),
                               ports=record.ports, started=record.started,
                               finished=record.finished, counts=record.counts))
        if len(out) >= limit:
            break
    return out


@router.get("/scans/{scan_id}", response_model=ScanPublic,
            responses={401: _ERRORS[401], 404: {"model": ErrorPublic}})
def get_scan(scan_id: ScanId, ctx: CtxDep, client: ClientDep, token: TokenDep) -> Any:
    """A scan's status, progress, verdict, services, findings and fix guide."""
    record = viewable_scan(ctx, scan_id, client, token)
    return scan_public(ctx.store, record, ctx.jobs.get(scan_id))


_MEDIA = {"json": "application/json", "html": "text/html; charset=utf-8",
          "xml": "application/xml", "sarif": "application/sarif+json",
          "defectdojo": "application/json"}


@router.get("/scans/{scan_id}/report.{fmt}", response_class=Response,
            responses={200: {"content": {"application/json": {}, "text/html": {},
                                         "application/xml": {}, "application/sarif+json": {}},
                             "description": "The report in the asked format"},
                       401: _ERRORS[401], 404: {"model": ErrorPublic}})
def get_report(scan_id: ScanId, fmt: Literal["json", "html", "xml", "sarif", "defectdojo"],
               ctx: CtxDep, client: ClientDep, token: TokenDep) -> Response:
    """The scan's report: JSON (result schema v1), HTML, XML (nmap-compatible), SARIF 2.1.0, or
    DefectDojo's Generic Findings Import JSON (`report.defectdojo`)."""
    record = viewable_scan(ctx, scan_id, client, token)
    if fmt not in report.FORMATS:
        raise HTTPException(404, f"the {fmt} report format is not available in this version")
    meta = report.ScanMeta(id=record.id, started=record.started, finished=record.finished,
                           targets=list(record.targets), ports=record.ports, tool=record.tool)
    results = ctx.store.results(record.id)
    if fmt != "html":
        # The HTML report embeds each PNG from its stored path; elsewhere the path is ours.
        results = [with_screenshot_urls(r, record.id) for r in results]
    text = report.render(fmt, meta, results)
    headers = {"Content-Security-Policy": report_csp(text)} if fmt == "html" else {}
    return Response(text, media_type=_MEDIA[fmt], headers=headers)


_SCRIPT_HASH = re.compile(r"script-src '(sha256-[A-Za-z0-9+/=]{40,50})'")


def report_csp(html: str) -> str:
    """The HTML report is self-contained (inline styles, data: images, one inline script
    pinned by its hash in the report's own CSP): it gets exactly that script and nothing
    else, whatever text from scanned servers it displays."""
    found = _SCRIPT_HASH.search(html[:4096])
    script = f"script-src '{found.group(1)}'" if found else "script-src 'none'"
    return f"{REPORT_CSP}; {script}"


@router.get("/scans/{scan_id}/screenshots/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "The PNG"},
                       401: _ERRORS[401], 404: {"model": ErrorPublic}})
def get_screenshot(scan_id: ScanId, name: ShotName, ctx: CtxDep, client: ClientDep,
                   token: TokenDep) -> FileResponse:
    """A service's screenshot, to whoever may see the scan (the same rule as the scan)."""
    viewable_scan(ctx, scan_id, client, token)
    path = screenshot_file(ctx.store, ctx.jobs.screenshots, scan_id, name)
    if path is None:
        raise HTTPException(404, f"no screenshot {name} in scan {scan_id}")
    return FileResponse(path, media_type="image/png")
