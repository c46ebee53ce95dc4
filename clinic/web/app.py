"""The ASGI application: routes, the security headers on every response, and errors turned
into pages (or FHIR OperationOutcomes under /fhir) that never say more than they must."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clinic.config import ClinicConfig
from clinic.errors import ClinicError, StoreUnavailable, UsageError
from clinic.keys import KeyRing
from clinic.web import admin, events, fhir_api, pages, signin
from clinic.web import security as sec
from clinic.web.common import (
    HERE,
    UNSTORABLE_MESSAGE,
    Pool,
    SignInNeeded,
    WebState,
    redirect,
    render,
)

log = logging.getLogger("clinic.web")


class SecurityHeaders:
    """Adds :data:`security.SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in sec.SECURITY_HEADERS
                         if k.encode() not in have]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/fhir/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_api(request):
        return fhir_api.outcome(exc.status_code, "not-found" if exc.status_code == 404
                                else "processing", "not found" if exc.status_code == 404
                                else str(exc.detail))
    msg = "Not found." if exc.status_code == 404 else str(exc.detail)
    return render(request, "error.html", exc.status_code, message=msg)


async def _sign_in_needed(request: Request, exc: Exception) -> Response:
    if _is_api(request):
        return fhir_api.outcome(401, "login", "a valid bearer token is required",
                                headers={"www-authenticate": 'Bearer realm="clinic"'})
    return redirect("/signin")


def _bad_data(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised (``raise ... from``) from, a psycopg ``DataError``:
    input PostgreSQL cannot store (NUL in text, a value out of range), not an unavailable
    database."""
    e: BaseException | None = exc
    for _ in range(8):
        if e is None or isinstance(e, psycopg.DataError):
            break
        e = e.__cause__
    return isinstance(e, psycopg.DataError)


async def _clinic_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClinicError | psycopg.DataError)
    if _bad_data(exc):  # the database's own message is never shown
        status, msg = 400, UNSTORABLE_MESSAGE
    elif isinstance(exc, UsageError):
        status, msg = 400, str(exc)
    elif isinstance(exc, StoreUnavailable):
        status, msg = 503, "The database is unavailable; try again shortly."
    else:
        status, msg = 500, "Something went wrong; it has been logged."
    log.warning("request failed: %s (%s)", type(exc).__name__, status)
    if _is_api(request):
        return fhir_api.outcome(status, "processing", msg)
    return render(request, "error.html", status, message=msg)


def routes() -> list[Route | Mount]:
    get, post, both = ["GET"], ["POST"], ["GET", "POST"]
    return [
        Route("/", signin.home, methods=get),
        Route("/signin", signin.signin_page, methods=get),
        Route("/signin", signin.signin_submit, methods=post),
        Route("/signout", signin.signout, methods=post),
        Route("/me", signin.me_page, methods=both),
        Route("/patients", pages.patients_page, methods=get),
        Route("/patients/{pseudonym}", pages.patient_page, methods=get),
        Route("/patients/{pseudonym}/alerts/{alert_id}/ack", pages.acknowledge, methods=post),
        Route("/alerts", pages.alerts_page, methods=get),
        Route("/events", events.events, methods=get),
        Route("/admin", admin.admin_page, methods=get),
        Route("/admin/{action}", admin.admin_action, methods=post),
        Route("/audit", admin.audit_page, methods=get),
        *fhir_api.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def build_app(cfg: ClinicConfig, ring: KeyRing, **overrides: Any) -> Starlette:
    """The app over ``cfg.db.dsn``; ``overrides`` replace WebState fields (tests)."""
    web = WebState(cfg, ring, Pool(cfg.db.dsn), **overrides)
    app = Starlette(routes=routes(), exception_handlers={
        HTTPException: _http_error, SignInNeeded: _sign_in_needed, ClinicError: _clinic_error,
        psycopg.DataError: _clinic_error})
    app.state.web = web
    app.add_middleware(SecurityHeaders)
    return app
