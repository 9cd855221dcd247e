"""Shared state and FastAPI dependencies of the web app (one `AppContext` per app instance).

Owns: the context object the lifespan builds (settings, store, policy, jobs, metrics, limiter,
CSRF signer, templates), the dependency aliases routes use (`CtxDep`, `ClientDep`,
`TokenDep`), and who may see which scan. Must not: hold route logic or scan anything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment

from vncaudit.store import ScanRecord, Store
from vncaudit.web.jobs import JobManager
from vncaudit.web.metrics import Metrics
from vncaudit.web.policy import IPNetwork, Policy
from vncaudit.web.security import Csrf, RateLimiter, forwarded_client, token_matches, within
from vncaudit.web.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    store: Store
    policy: Policy
    jobs: JobManager
    metrics: Metrics
    limiter: RateLimiter
    csrf: Csrf
    templates: Environment
    proxies: tuple[IPNetwork, ...] = ()
    watcher: Any = None  # a vncaudit.watch.Watcher when this service runs the monitors


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str:
    """The requester's address: the TCP peer, or the client a trusted reverse proxy names
    (`security.forwarded_client`)."""
    peer = request.client.host if request.client is not None else ""
    return forwarded_client(peer, request.headers.getlist("x-forwarded-for"),
                            get_ctx(request).proxies)


_bearer = HTTPBearer(auto_error=False, description="API token (only when the operator "
                     "configured tokens)")


def check_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> bool:
    """Enforce the API token when tokens are configured; True when a valid token was given."""
    ctx = get_ctx(request)
    hashes = ctx.settings.token_hashes
    if not hashes:
        return False
    if credentials is None or credentials.scheme.lower() != "bearer" or not token_matches(
            credentials.credentials, hashes):
        ctx.metrics.refused.labels("token").inc()
        raise HTTPException(401, "a valid API token is required (Authorization: Bearer …)",
                            headers={"WWW-Authenticate": "Bearer"})
    return True


CtxDep = Annotated[AppContext, Depends(get_ctx)]
ClientDep = Annotated[str, Depends(client_address)]
TokenDep = Annotated[bool, Depends(check_token)]


def can_view(ctx: AppContext, record: ScanRecord, client: str, token: bool = False) -> bool:
    """Scan ids are short, so results are not public by id alone: a scan is visible to the
    client address that asked for it, to holders of an API token, or to anyone when the
    operator made history public."""
    if token:
        return True
    if record.options.get("source") == "watch":
        # A monitor's cycle: shown where the monitors page is (the operator's networks).
        return may_see_monitors(ctx, client)
    if record.options.get("source") != "web":
        # A CLI scan in a store shared with the service (the default path is the same) is
        # the operator's, not public history: only token holders may read it.
        return False
    if ctx.settings.public_history:
        return True
    return bool(record.options.get("client") == client)


def may_see_monitors(ctx: AppContext, client: str) -> bool:
    """Whether this client address may open the monitors page and their cycles' scans."""
    networks = tuple(ipaddress.ip_network(n, strict=False)
                     for n in ctx.settings.monitors_page_networks)
    return within(client, networks)


def viewable_scan(ctx: AppContext, scan_id: str, client: str, token: bool) -> ScanRecord:
    record = ctx.store.get_scan(scan_id)
    if record is None or not can_view(ctx, record, client, token):
        raise HTTPException(404, f"no scan {scan_id}")
    return record


def open_store(settings: Settings) -> Store:
    return Store.open(settings.db_path or None)
