"""Who is looking at the dashboard: the API's own tokens and roles, carried in a cookie.

Logging in checks an API token (`fleet.auth.authenticate`) and keeps it in an HttpOnly,
SameSite=Strict cookie (Secure over https), so revoking the token logs the browser out on its next
request and a page answers exactly what the API would answer that token. State-changing forms are
POSTs that must come from the dashboard itself: the browser's Origin (or Referer) must name this
host, and the form must carry the token derived from the session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request, Response
from sqlmodel import Session
from starlette.exceptions import HTTPException

from fleet import auth
from fleet.auth import Perm, Principal
from fleet.db import get_session

log = logging.getLogger("maille.web")

COOKIE = "maille_session"
COOKIE_MAX_AGE_S = 12 * 3600  # a working day on site; then log in again
MAX_FORM_BYTES = 4096
SessionDep = Annotated[Session, Depends(get_session)]


class LoginRequired(Exception):
    """No valid session: the browser is sent to the login page, then back to `next_path`."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def safe_next(path: str | None) -> str:
    """Only a path of this site (no scheme, no host, no `//host`): login must not redirect away."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/fleet"
    return path


def csrf_token(secret: str) -> str:
    """The forms' anti-forgery token, derived from the session's secret (another site cannot read it)."""
    return hashlib.sha256(b"maille-web-csrf:" + secret.encode()).hexdigest()[:32]


def start_session(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(
        COOKIE,
        secret,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def viewer(request: Request, session: SessionDep) -> Principal:
    """FastAPI dependency: the logged-in caller, or off to the login page."""
    secret = request.cookies.get(COOKIE)
    found = auth.authenticate(session, secret) if secret else None
    if found is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    request.state.csrf = csrf_token(secret)
    return found


Viewer = Annotated[Principal, Depends(viewer)]


def require(perm: Perm):
    """FastAPI dependency factory: the caller, who must hold `perm` (403 as in the API)."""

    def check(caller: Viewer) -> Principal:
        if not caller.can(perm):
            raise HTTPException(403, f"role {caller.role} may not {perm.value}")
        return caller

    return Depends(check)


def check_origin(request: Request) -> None:
    """A POST must come from a page of this host (the browser sets Origin, or at least Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or urlsplit(source).netloc != request.headers.get("host"):
        log.warning("web: %s %s refused: origin %r", request.method, request.url.path, source)
        raise HTTPException(403, "this form was not sent from the dashboard (Origin/Referer mismatch)")


async def form(request: Request) -> dict[str, str]:
    """FastAPI dependency: an urlencoded form from this host, small, each field once."""
    check_origin(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, f"expected a form (application/x-www-form-urlencoded), got {kind!r}")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"a form is at most {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=16, strict_parsing=True))
    except (UnicodeDecodeError, ValueError) as e:
        raise HTTPException(400, f"unreadable form: {e}") from None


Form = Annotated[dict[str, str], Depends(form)]


def checked_form(request: Request, fields: Form, caller: Viewer) -> dict[str, str]:
    """FastAPI dependency: the form of a logged-in caller, carrying this session's CSRF token."""
    if not hmac.compare_digest(fields.get("csrf", ""), request.state.csrf):
        log.warning("web: %s %s refused: bad CSRF token (%s)", request.method, request.url.path, caller.name)
        raise HTTPException(403, "the form's anti-forgery token is missing or stale: reload the page")
    return fields


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]
