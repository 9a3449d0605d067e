"""The FastAPI application: routers, the one error shape, and start-up (database, queue, engine)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from core.crypto import callback_signer, master_key, signing_key
from core.db import make_engine, make_session_factory, transaction
from core.errors import InvalidRequestError, LetheError, UnauthorizedError
from core.keys.repository import ApiKeyRepository
from core.queue import make_celery
from core.settings import Settings, get_settings
from server.adapters.router import router as adapters_router
from server.audit.router import router as audit_router
from server.background import PeriodicTask
from server.body_limit import BodyLimitMiddleware
from server.callbacks import callback_client, deliver_due_callbacks
from server.certificates.router import router as certificates_router
from server.console.router import mount_console
from server.forget_requests.router import router as forget_requests_router
from server.forget_requests.schemas import ForgetRequestIn
from server.inference import InferenceEngine
from server.ops.router import router as ops_router
from server.ops.service import Metrics
from server.reconciler import resend_silent_jobs
from server.vqa.router import router as vqa_router
from server.vqa.schemas import VQAIn

log = logging.getLogger(__name__)
# Swagger UI and ReDoc as the fastapi-offline package ships them: /docs and /redoc load nothing from a CDN.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_STATIC = "/docs-static"
# FastAPI's docs pages start their bundle with an inline script; nothing may load from elsewhere (ReDoc's bundle
# would fetch its vendor's logo from a CDN).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'"
)
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are an error, as unknown body fields are: a typo must not pass silently."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidRequestError(
            f"unknown query parameter(s) {', '.join(unknown)}; this endpoint takes {', '.join(sorted(known)) or 'none'}"
        )


def _body_limit(settings: Settings) -> Callable[[Scope], tuple[int, str]]:
    """Filing a deletion request carries photos; every other body is small."""

    def limit_for(scope: Scope) -> tuple[int, str]:
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/v1/forget-requests":
            return settings.max_forget_request_bytes, "2 x LETHE_MAX_IMAGES x LETHE_MAX_IMAGE_BYTES + 1 MB"
        return settings.max_body_bytes, "LETHE_MAX_BODY_BYTES"

    return limit_for


def _offline_docs(app: FastAPI) -> None:
    """/docs and /redoc from the assets installed with the project."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            # Swagger UI would send the document to its public validator for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page


def create_app(settings: Settings | None = None, load_model: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_engine(settings.resolved_database_url)
        app.state.settings = settings
        app.state.sessions = make_session_factory(db)
        app.state.celery = make_celery(settings)
        app.state.master_key = master_key(settings)
        app.state.signer = signing_key(settings)
        app.state.metrics = Metrics()
        app.state.engine = InferenceEngine(settings, app.state.sessions, on_gated=app.state.metrics.record_gate)
        if settings.bootstrap_admin_key:
            with transaction(app.state.sessions) as session:
                ApiKeyRepository(session).ensure_admin(settings.bootstrap_admin_key.get_secret_value())
        if load_model:
            # Loading takes seconds to minutes: /healthz answers meanwhile, /readyz says not yet.
            threading.Thread(target=app.state.engine.load, name="engine-load", daemon=True).start()
        http = callback_client(settings)
        signer = callback_signer(settings)
        background = [
            PeriodicTask(
                "reconciler",
                settings.reconcile_interval_s,
                lambda: resend_silent_jobs(app.state.sessions, app.state.celery, settings),
            ),
            # Off the request path: a request reads the engine's in-memory set only.
            PeriodicTask("active-set", max(0.05, settings.engine_sync_interval_s), app.state.engine.sync),
            PeriodicTask(
                "integrity", max(0.05, settings.engine_integrity_interval_s), app.state.engine.check_integrity
            ),
            PeriodicTask(
                "callbacks",
                min(1.0, settings.callback_backoff_s),
                lambda: deliver_due_callbacks(app.state.sessions, signer, settings, http),
            ),
        ]
        for task in background:
            task.start()
        yield
        for task in background:
            task.stop()
        app.state.engine.close()
        http.close()
        db.dispose()

    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        summary="Unlearning as a service for vision-language models (CAGUL).",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
        docs_url=None,
        redoc_url=None,
    )
    routers = (forget_requests_router, certificates_router, adapters_router, vqa_router, audit_router, ops_router)
    for router in routers:
        app.include_router(router)
    mount_console(app)
    _offline_docs(app)

    @app.exception_handler(LetheError)
    async def _lethe_error(_request: Request, exc: LetheError) -> JSONResponse:
        response = _error(exc.status_code, exc.code, exc.detail)
        if isinstance(exc, UnauthorizedError):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by several routes has them all.
            allowed = sorted(
                {m for r in app.routes if r.matches(request.scope)[0] != Match.NONE for m in getattr(r, "methods", ())}
            )
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "internal_error", "an internal error occurred; it has been logged")

    # Inside the metrics middleware, so refused bodies are counted too.
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limit(settings))

    @app.middleware("http")
    async def _metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.requests.labels(request.method, path, str(response.status_code)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # These routes parse their bodies themselves (after the key check), so their schemas are added here.
        if app.openapi_schema is None:
            schema = base_openapi()
            _, defs = models_json_schema(
                [(ForgetRequestIn, "validation"), (VQAIn, "validation")], ref_template="#/components/schemas/{model}"
            )
            schema["components"]["schemas"].update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
