"""/console: the page shell (server-rendered) and its script and style, under a strict Content-Security-Policy.

The page holds no data: its script signs in with an API key kept in the tab's sessionStorage and reads the /v1 API
with it as a Bearer header, so the console can do exactly what the key's scopes allow and nothing more.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import Response
from starlette.types import Scope

from core.adapters.models import STATES
from core.forget_requests.models import STATUSES

HERE = Path(__file__).resolve().parent
STATIC_NAME = "console-static"
templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes every .html template
# No inline script or style anywhere, so none is allowed: an injected `<img onerror=...>` could not run even if a
# string slipped past the escaping. `connect-src 'self'` keeps the key from being sent anywhere but this API.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


class _ConsoleStatic(StaticFiles):
    """The console's script and style, with the same headers as the page."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


@router.get("/console", response_class=HTMLResponse)
def console(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    context = {"static": f"{root}/console/static", "api": root, "statuses": STATUSES, "states": STATES}
    response = templates.TemplateResponse(request, "console.html", context)
    response.headers.update(SECURITY_HEADERS)
    return response


def mount_console(app: FastAPI) -> None:
    """Serve the console page and its static files from `app`."""
    app.include_router(router)
    app.mount("/console/static", _ConsoleStatic(directory=HERE / "static"), name=STATIC_NAME)
