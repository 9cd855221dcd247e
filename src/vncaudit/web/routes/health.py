"""Health and metrics: `GET /api/health` (always open) and `GET /metrics` (Prometheus text;
needs the API token when tokens are configured).

Must not: expose targets, addresses or anything per user.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from vncaudit import __version__
from vncaudit.web.deps import CtxDep, TokenDep

router = APIRouter()


class HealthPublic(BaseModel):
    status: str
    version: str
    workers: int
    queued: int
    running: int


@router.get("/api/health", response_model=HealthPublic, tags=["health"])
def health(ctx: CtxDep) -> Any:
    """Liveness: the store answers and the scan workers run."""
    ctx.store.get_scan("s-health-check")  # a read: raises if the database is unusable
    queued, running = ctx.jobs.load()
    return HealthPublic(status="ok", version=__version__, workers=ctx.settings.workers,
                        queued=queued, running=running)


@router.get("/metrics", include_in_schema=False)
def metrics(ctx: CtxDep, token: TokenDep) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
