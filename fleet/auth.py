"""API tokens and roles: who may do what, on which sites and metrics.

A token is `mt_` + 32 random bytes (URL-safe base64); only its SHA-256 is stored. A token may be
scoped to sites; an integrator token must be. It may also be limited to some metrics (readings of
other metrics are refused or left out), and may get a broker account (`token.<name>`, the same secret
as password, stored as a Mosquitto `$7$` hash) that reads its sites' topics only
(fleet.integrations.topics.reader_acl). Permissions per role are in PERMISSIONS (and in
docs/operators.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, col, select
from starlette.exceptions import HTTPException

from fleet import audit
from fleet.broker import hash_password
from fleet.db import get_session
from fleet.models import ApiToken, Site, utcnow

PREFIX = "mt_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per token
METRIC = re.compile(r"^[a-z0-9_]{1,32}$")  # a measurement name (docs/contract.md)
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # also a broker user name and an ACL line: no spaces
BROKER_USER_PREFIX = "token."  # device ids have no ".": a token's broker user never is a device's


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    technician = "technician"
    integrator = "integrator"
    viewer = "viewer"


class Perm(StrEnum):
    read = "read"  # registry, devices, readings, stream, alerts, commands and config
    read_ops = "read:ops"  # rejects, audit log
    device_write = "device:write"  # create and edit devices and their sensors
    device_control = "device:control"  # send commands and config
    registry_write = "registry:write"  # sites, buildings, floors, zones, rooms; delete devices
    tokens = "tokens"  # create, list and revoke API tokens


PERMISSIONS: dict[Role, frozenset[Perm]] = {
    Role.viewer: frozenset({Perm.read}),
    Role.integrator: frozenset({Perm.read}),
    Role.technician: frozenset({Perm.read, Perm.device_write, Perm.device_control}),
    Role.operator: frozenset(set(Perm) - {Perm.tokens}),
    Role.admin: frozenset(Perm),
}


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a token's name (written in the audit log), role and site scope."""

    name: str
    role: Role
    site_ids: frozenset[int] | None  # None: every site
    metrics: frozenset[str] | None = None  # None: every metric

    def can(self, perm: Perm) -> bool:
        return perm in PERMISSIONS[self.role]

    def sees(self, site_id: int) -> bool:
        return self.site_ids is None or site_id in self.site_ids

    def check_site(self, site_id: int) -> None:
        if not self.sees(site_id):
            raise HTTPException(403, f"token {self.name!r} is not allowed on this site")

    def check_unscoped(self) -> None:
        if self.site_ids is not None:
            raise HTTPException(403, f"token {self.name!r} is limited to some sites; this needs all sites")

    def check_metric(self, metric: str | None) -> None:
        """403 for a metric outside the token's; None (no metric named) passes: callers filter."""
        if metric is not None and self.metrics is not None and metric not in self.metrics:
            allowed = ", ".join(sorted(self.metrics))
            raise HTTPException(403, f"token {self.name!r} may read only these metrics: {allowed}")


def broker_user(token_name: str) -> str:
    """The broker user name of a token's account."""
    return BROKER_USER_PREFIX + token_name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    name: str,
    role: Role,
    site_slugs: Iterable[str] = (),
    who: str = "cli",
    *,
    metrics: Iterable[str] = (),
    broker: bool = False,
) -> tuple[ApiToken, str]:
    """Store a new token (hashed) and return it with the secret, which is shown once and never again.
    `metrics`: limit it to these (none: every metric); `broker`: give it a broker account."""
    if not NAME.match(name):
        raise ValueError(f"a token name is 1 to 64 of A-Z a-z 0-9 _ . @ -, not {name!r}")
    slugs = sorted(set(site_slugs))
    if role == Role.integrator and not slugs:
        raise ValueError("an integrator token needs at least one --site")
    names = sorted(set(metrics))
    bad = [m for m in names if not METRIC.match(m)]
    if bad:
        raise ValueError(f"not a metric name (a-z, 0-9, _; up to 32): {', '.join(map(repr, bad))}")
    if session.exec(select(ApiToken).where(ApiToken.name == name)).first():
        raise ValueError(f"a token named {name!r} exists already")
    sites = session.exec(select(Site).where(col(Site.slug).in_(slugs))).all() if slugs else []
    missing = set(slugs) - {s.slug for s in sites}
    if missing:
        raise ValueError(f"no site {', '.join(sorted(missing))}")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role,
        site_ids=sorted(s.id for s in sites) if slugs else None,
        metrics=names or None,
        broker_hash=hash_password(secret) if broker else None,
        hash=hash_token(secret),
    )
    session.add(token)
    session.flush()
    audit.record(session, who, "create", "api_token", name, after=_public(token))
    session.commit()
    session.refresh(token)
    return token, secret


def revoke_token(session: Session, name: str, who: str) -> ApiToken | None:
    token = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if token is None:
        return None
    before = _public(token)
    token.revoked = True
    audit.record(session, who, "revoke", "api_token", name, before=before, after=_public(token))
    session.commit()
    session.refresh(token)
    return token


def _public(token: ApiToken) -> dict:
    """What the audit log keeps of a token: never its hashes."""
    return token.model_dump(mode="json", exclude={"hash", "broker_hash"}) | {
        "broker": bool(token.broker_hash)
    }


def authenticate(session: Session, secret: str) -> Principal | None:
    token = session.exec(select(ApiToken).where(ApiToken.hash == hash_token(secret))).first()
    if token is None or token.revoked:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = now
        session.commit()
    return Principal(
        token.name,
        Role(token.role),
        None if token.site_ids is None else frozenset(token.site_ids),
        None if token.metrics is None else frozenset(token.metrics),
    )


_bearer = HTTPBearer(auto_error=False, description="An API token: `maille token create`")


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="maille"' + (f', error="{error}"' if error else "")
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def principal(
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    if credentials is None:
        raise _unauthorized("this endpoint needs an API token: Authorization: Bearer mt_…")
    found = authenticate(session, credentials.credentials)
    if found is None:
        raise _unauthorized("the API token is unknown or revoked", "invalid_token")
    return found


def require(perm: Perm):
    """FastAPI dependency factory: the caller, who must hold `perm` (else 403)."""

    def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
        if not caller.can(perm):
            raise HTTPException(403, f"role {caller.role} may not {perm.value}")
        return caller

    return Depends(check)
