"""The monitors page and API: what `vncaudit watch` (or this service, with ``monitors`` set)
records in the store — each monitor's state, last and next cycle, and alert history.

Owns: `GET /monitors` (HTML; only for client addresses in `monitors_page_networks`, loopback
by default: monitors describe the operator's own networks), `GET /api/monitors`,
`GET /api/monitors/{name}`, `GET /api/monitors/{name}/alerts` and
`POST /api/monitors/{name}/run` (a cycle now, when this service runs the monitors). The API
always needs an API token: without configured tokens it answers 403. Must not: scan, send
alerts or change a monitor's definition (that is the monitors file).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from vncaudit.watch.records import AlertRecord, MonitorDb, MonitorRecord
from vncaudit.web.deps import AppContext, ClientDep, CtxDep, TokenDep, may_see_monitors
from vncaudit.web.routes.pages import render_page

router = APIRouter(tags=["monitors"])
pages = APIRouter(include_in_schema=False)

MonitorName = Annotated[str, Path(min_length=1, max_length=200,
                                  description="The monitor's name (its [monitor.NAME] table)")]
STALE_AFTER = 300.0  # seconds without a heartbeat after which a runner is taken for gone
OVERDUE_AFTER = 600.0  # seconds past its next cycle after which a monitor is "overdue"


class DeliveryPublic(BaseModel):
    channel: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt: str | None
    last_error: str | None
    last_attempt: str | None
    delivered: str | None
    digest: str | None = Field(None, description="The key of the cycle's digest that carried "
                               "this alert to the channel (a cycle with more alerts than the "
                               "monitor's digest_threshold); null: sent on its own")


class AlertPublic(BaseModel):
    key: str = Field(description="Idempotency key: the same on every delivery of this alert")
    monitor: str
    scan_id: str
    previous_scan_id: str | None
    host: str
    port: int
    rule: str
    rules: list[str]
    severity: str | None
    title: str
    text: str
    details: list[str]
    created: str
    product: str | None
    state: str | None
    auth_required: bool | None
    findings: list[str]
    deliveries: list[DeliveryPublic]


class CyclePublic(BaseModel):
    scan_id: str
    started: str
    finished: str | None
    status: str
    previous_scan_id: str | None
    evaluated: str | None
    alerts: int
    error: str | None


class MonitorPublic(BaseModel):
    name: str
    state: Literal["running", "waiting", "failing", "overdue"] = Field(
        description="running: a cycle now; failing: the last cycle failed; overdue: the next "
        "cycle is more than 10 minutes late (nothing runs the monitor); waiting otherwise")
    targets: list[str]
    ports: str
    schedule: str
    rules: list[str]
    channels: list[str]
    next_cycle: str | None
    runner: str | None
    last_cycle: CyclePublic | None
    alerts: int
    pending_deliveries: int


class MonitorDetail(MonitorPublic):
    cycles: list[CyclePublic]


class ErrorPublic(BaseModel):
    detail: str
    code: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "API token missing or wrong"},
    403: {"model": ErrorPublic, "description": "No API tokens are configured: the monitors "
          "API is closed"},
    404: {"model": ErrorPublic, "description": "No monitor of that name"},
}


def _require_token(ctx: AppContext, token: bool) -> None:
    if not token:  # tokens are not configured (a wrong token is already a 401)
        raise HTTPException(403, "the monitors API needs API tokens (serve --token-file)")


def _state(ctx: AppContext, record: MonitorRecord, last: Any) -> str:
    watcher = getattr(ctx, "watcher", None)
    if watcher is not None and record.name in watcher.running:
        return "running"
    if last is not None and last.status == "running" and _fresh(record.heartbeat):
        return "running"
    if last is not None and last.status == "failed":
        return "failing"
    if record.next_due is not None and _late(record.next_due):
        return "overdue"
    return "waiting"


def _late(stamp: str) -> bool:
    try:
        due = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return (datetime.now(UTC) - due).total_seconds() > OVERDUE_AFTER


def _fresh(stamp: str | None) -> bool:
    if not stamp:
        return False
    try:
        age = datetime.now(UTC) - datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return age.total_seconds() < STALE_AFTER


def _cycle(c: Any) -> CyclePublic:
    return CyclePublic(scan_id=c.scan_id, started=c.started, finished=c.finished,
                       status=c.status, previous_scan_id=c.previous_scan_id,
                       evaluated=c.evaluated, alerts=c.alerts, error=c.error)


def _pending(db: MonitorDb, name: str) -> int:
    with db.store.reading("cannot read the outbox") as conn:
        (n,) = conn.execute("SELECT count(*) FROM outbox o JOIN alerts a ON a.key = o.alert_key "
                            "WHERE a.monitor = ? AND o.state = 'pending'", (name,)).fetchone()
    return int(n)


def _monitor(ctx: AppContext, db: MonitorDb, record: MonitorRecord) -> MonitorPublic:
    last = db.last_cycle(record.name)
    spec = record.spec
    return MonitorPublic(
        name=record.name, state=_state(ctx, record, last),  # type: ignore[arg-type]
        targets=list(spec.get("targets", [])), ports=str(spec.get("ports", "")),
        schedule=str(spec.get("schedule", "")), rules=list(spec.get("rules", [])),
        channels=list(spec.get("channels", [])), next_cycle=record.next_due,
        runner=record.runner, last_cycle=_cycle(last) if last is not None else None,
        alerts=db.alert_count(record.name), pending_deliveries=_pending(db, record.name))


def _alert(r: AlertRecord) -> AlertPublic:
    return AlertPublic(**{**r.alert.to_dict(), "text": r.alert.text,
                          "deliveries": [d.to_dict() for d in r.deliveries]})


def _find(db: MonitorDb, name: str) -> MonitorRecord:
    record = db.monitor(name)
    if record is None:
        raise HTTPException(404, f"no monitor {name!r}")
    return record


@router.get("/api/monitors", response_model=list[MonitorPublic], responses=_ERRORS)
def list_monitors(ctx: CtxDep, token: TokenDep) -> Any:
    """Every monitor recorded in the store: state, schedule, last and next cycle."""
    _require_token(ctx, token)
    db = MonitorDb(ctx.store)
    return [_monitor(ctx, db, r) for r in db.monitors()]


@router.get("/api/monitors/{name}", response_model=MonitorDetail, responses=_ERRORS)
def get_monitor(name: MonitorName, ctx: CtxDep, token: TokenDep,
                cycles: Annotated[int, Query(ge=1, le=200)] = 20) -> Any:
    """One monitor with its recent cycles (each a scan: GET /api/scans/{scan_id})."""
    _require_token(ctx, token)
    db = MonitorDb(ctx.store)
    record = _find(db, name)
    public = _monitor(ctx, db, record)
    return MonitorDetail(**public.model_dump(),
                         cycles=[_cycle(c) for c in db.cycles(name, cycles)])


@router.get("/api/monitors/{name}/alerts", response_model=list[AlertPublic],
            responses=_ERRORS)
def monitor_alerts(name: MonitorName, ctx: CtxDep, token: TokenDep,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Any:
    """The monitor's alerts, newest first, with each channel's delivery state."""
    _require_token(ctx, token)
    db = MonitorDb(ctx.store)
    _find(db, name)
    return [_alert(r) for r in db.alerts(name, limit)]


class RunAccepted(BaseModel):
    monitor: str
    queued: bool


@router.post("/api/monitors/{name}/run", status_code=202, response_model=RunAccepted,
             responses={**_ERRORS, 409: {"model": ErrorPublic,
                                         "description": "This service does not run the "
                                         "monitors (serve without `monitors`)"}})
def run_monitor(name: MonitorName, ctx: CtxDep, token: TokenDep) -> Any:
    """Start a cycle of this monitor now (it runs after the current one, if any)."""
    _require_token(ctx, token)
    watcher = getattr(ctx, "watcher", None)
    if watcher is None:
        return JSONResponse({"detail": "this service does not run the monitors; run the "
                             "cycle where they run (vncaudit watch)", "code": "not-running"},
                            status_code=409)
    if not watcher.request(name):
        raise HTTPException(404, f"no monitor {name!r}")
    return RunAccepted(monitor=name, queued=True)


@pages.get("/monitors", response_class=HTMLResponse)
def monitors_page(request: Request, ctx: CtxDep, client: ClientDep) -> HTMLResponse:
    if not may_see_monitors(ctx, client):
        return render_page(ctx, request, "error.html", 404, title="Not found",
                     message="There is no such page.")
    db = MonitorDb(ctx.store)
    monitors = [_monitor(ctx, db, r) for r in db.monitors()]
    history = [_alert(r) for r in db.alerts(None, 100)]
    return render_page(ctx, request, "monitors.html", monitors=monitors, alerts=history,
                 runs_here=getattr(ctx, "watcher", None) is not None)
