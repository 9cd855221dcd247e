"""The web service's FastAPI application: `create_app(settings)`.

Owns: wiring — the lifespan that opens this instance's store and starts its scan workers, the
routers, static files and templates, the middlewares (security headers, body limit, and the
deployment ones of `deploy`: Host allow-list, Origin check, proxy scheme and HSTS, access log)
and the error handlers. Must not: contain route logic, policy or scanning (see `routes/`,
`policy`, `jobs`).

No external resources: the OpenAPI document is served at /openapi.json and browsable at /docs,
whose Swagger UI assets this service serves itself (FastAPI's own docs pages, which load them
from a CDN, are off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vncaudit import __version__
from vncaudit.exceptions import VncAuditError
from vncaudit.web.deploy import (
    AccessLog,
    ForwardedScheme,
    HostGuard,
    OriginGuard,
    close_access_log,
    open_access_log,
)
from vncaudit.web.deps import AppContext, open_store
from vncaudit.web.jobs import JobManager
from vncaudit.web.metrics import Metrics
from vncaudit.web.routes import api, docs, health, monitors, pages
from vncaudit.web.security import CSP, SECURITY_HEADERS, Csrf, RateLimiter
from vncaudit.web.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# Every request the service takes is a short form or JSON object (a target of at most 255
# characters and a port list); FastAPI would otherwise read any body whole into memory.
MAX_BODY = 64 * 1024


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413: by Content-Length before the app
    runs, and for a chunked body as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = JSONResponse({"detail": f"request body over {self.limit} bytes",
                                     "code": "body-too-large"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI passes an HTTPException raised while it reads the body through.
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """Adds the security headers (and no-store caching) to every HTTP response; a route that
    set its own Content-Security-Policy keeps it. Also counts responses by status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.fixed = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.fixed if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                if b"cache-control" not in names:
                    headers.append((b"cache-control",
                                    b"public, max-age=300" if static else b"no-store"))
                message["headers"] = headers
                self.metrics.requests.labels(str(message.get("status", 0))).inc()
            await send(message)

        await self.app(scope, receive, wrapped)


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html", "xml"]), trim_blocks=True,
                      lstrip_blocks=True)
    return env


def _document_without_tokens(app: FastAPI) -> None:
    """Without configured tokens the API takes none: the OpenAPI document must not claim a
    bearer scheme (clients and fuzzers would take the token as required)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            for path in doc.get("paths", {}).values():
                for operation in path.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
                        responses = operation.get("responses", {})
                        responses.pop("401", None)
            doc.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def start_monitors(cfg: Settings, store: Any, ctx: AppContext) -> list[asyncio.Task[None]]:
    """With `monitors` set: run them beside the scan workers (their lock, recovery and
    outbox as in `vncaudit watch`). With `retention`: prune daily. Returns the tasks."""
    tasks: list[asyncio.Task[None]] = []
    retention = None
    if cfg.retention:
        from vncaudit.watch.schedule import parse_duration

        retention = parse_duration(cfg.retention, "retention")
    if cfg.monitors:
        from dataclasses import replace

        from vncaudit.watch import Watcher, load

        config = load(cfg.monitors)
        if retention is not None and config.retention is None:
            config = replace(config, retention=retention)
        watcher = Watcher(store, config)
        watcher.start()  # StoreError (another watcher holds the lock) stops the start-up
        ctx.watcher = watcher
        tasks.append(asyncio.create_task(watcher.run_forever(), name="monitors"))
    elif retention is not None:
        tasks.append(asyncio.create_task(_prune_daily(store, retention), name="retention"))
    return tasks


async def _prune_daily(store: Any, retention: float) -> None:
    from vncaudit.watch import prune

    while True:
        try:
            report = await asyncio.to_thread(prune, store, retention)
            if report.scans:
                log.info("web: retention: %s", report.describe())
        except VncAuditError as exc:
            log.warning("web: retention: %s", exc)
        await asyncio.sleep(86400)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own store (settings.db_path), workers, limiter and metrics."""
    cfg = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(cfg)
        policy = cfg.policy()
        jobs = JobManager(cfg, store, metrics, policy)
        app.state.ctx = AppContext(
            settings=cfg, store=store, policy=policy, jobs=jobs, metrics=metrics,
            limiter=RateLimiter(cfg.rate_per_minute, cfg.rate_burst),
            csrf=Csrf(cfg.secret_key), templates=templates(), proxies=cfg.proxy_networks())
        await jobs.start()
        background = start_monitors(cfg, store, app.state.ctx)
        log.info("web: serving with store %s, %d workers", store.path or ":memory:",
                 cfg.workers)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(BaseException):
                    await task
            if app.state.ctx.watcher is not None:
                app.state.ctx.watcher.stop()
            await jobs.stop()
            store.close()
            if getattr(app.state, "access_log", None) is not None:
                close_access_log(app.state.access_log)

    app = FastAPI(
        title="vncaudit",
        version=__version__,
        description="Check whether VNC is reachable on your address and how bad it is. "
        "Targets are checked by a server-side policy before any packet is sent.",
        docs_url=None, redoc_url=None, lifespan=lifespan,
    )
    if not cfg.token_hashes:
        _document_without_tokens(app)
    app.include_router(api.router)
    app.include_router(health.router)
    app.include_router(pages.router)
    app.include_router(monitors.router)
    app.include_router(monitors.pages)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.assets_directory()),
              name="docs-assets")

    @app.exception_handler(VncAuditError)
    async def library_error(request: Request, exc: VncAuditError) -> JSONResponse:
        # A store or engine failure is ours, but it is reported as one line, not a traceback.
        log.error("web: %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc), "code": "internal"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8: a lone surrogate ("\udcff" in the
        # JSON) made that a 500. ASCII-escaped JSON carries any input.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    # Outermost last: the access log sees every request, refusals included; HostGuard and
    # OriginGuard answer inside SecurityHeaders, so refusals carry the headers too.
    proxies = cfg.proxy_networks()
    app.add_middleware(BodyLimit)
    app.add_middleware(OriginGuard, metrics=metrics)
    app.add_middleware(HostGuard, hosts=cfg.hosts(), metrics=metrics)
    app.add_middleware(SecurityHeaders, metrics=metrics)
    app.add_middleware(ForwardedScheme, proxies=proxies, hsts_max_age=cfg.hsts_max_age)
    if cfg.access_log:
        logger = open_access_log(cfg.access_log)
        app.state.access_log = logger
        app.add_middleware(AccessLog, logger=logger, fmt=cfg.access_log_format,
                           proxies=proxies)
    return app
