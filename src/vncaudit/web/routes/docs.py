"""The interactive API documentation: `GET /docs`, Swagger UI over our own /openapi.json.

Owns: the page and where its assets come from: the Swagger UI build that the `fastapi-offline`
package ships, served by this service at /docs/assets (no CDN, no request leaves the
browser for another host; the online validator badge is off). Must not: describe the API
itself (FastAPI builds /openapi.json from the routes).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from vncaudit.web.deps import CtxDep

router = APIRouter(include_in_schema=False)

ASSETS_URL = "/docs/assets"
# Swagger UI sets style attributes from script (React), which a style-src without
# 'unsafe-inline' blocks; scripts stay 'self' only.
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def assets_directory() -> Path:
    """Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css) as fastapi-offline ships
    them."""
    return Path(str(resources.files("fastapi_offline") / "static"))


@router.get("/docs", response_class=HTMLResponse)
def docs_page(request: Request, ctx: CtxDep) -> HTMLResponse:
    html = ctx.templates.get_template("docs.html").render(assets=ASSETS_URL)
    return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP})
