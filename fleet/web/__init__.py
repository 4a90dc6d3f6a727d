"""The web dashboard, served by the fleet service next to its API: server-rendered pages
(fleet.web.pages), our own CSS and script (static/), live values over Server-Sent Events.

`install(app)` adds it to the API's FastAPI app: the pages, /static, and HTML answers for the pages'
errors (a missing session goes to the login page; the API keeps its problem documents).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from fleet.contract import describe_errors
from fleet.web.access import LoginRequired
from fleet.web.pages import render, router

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Call after the API's exception handlers are set: the pages' errors go to HTML, others to them."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    api_http, api_validation = (
        app.exception_handlers[HTTPException],
        app.exception_handlers[RequestValidationError],
    )

    async def login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not getattr(request.state, "page", False):
            return await api_http(request, exc)
        return error_page(request, exc.status_code, str(exc.detail))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if not getattr(request.state, "page", False):
            return await api_validation(request, exc)
        return error_page(request, 422, describe_errors(exc.errors()))

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def error_page(request: Request, status: int, detail: str) -> Response:
    return render(request, "error.html", None, status=status, status_code=status, detail=detail)
