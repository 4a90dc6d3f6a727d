"""The fleet's HTTP API: devices, readings, rejects, health and Prometheus metrics. Errors are RFC 9457
problem documents (application/problem+json)."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.exceptions import HTTPException

import fleet
from fleet import registry
from fleet.contract import describe_errors
from fleet.db import get_session
from fleet.ingest import Ingest, IngestStats
from fleet.models import Device, Site, as_utc

PROBLEM = "application/problem+json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

SessionDep = Annotated[Session, Depends(get_session)]
Limit = Annotated[int, Query(ge=1, le=10_000)]
Metric = Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,32}$", description="measurement name")]
When = Annotated[datetime | None, Query(description="ISO-8601; without an offset, UTC")]


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


class DeviceOut(BaseModel):
    id: str
    site: str
    room: str
    board: str
    fw: str | None
    status: Literal["provisioned", "online", "offline"]
    last_seen: datetime | None
    last_state_at: datetime | None
    boot: int | None
    reset: str | None
    stored_seq: int | None
    last_health: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(cls, device: Device, site: Site) -> DeviceOut:
        return cls.model_validate({**device.model_dump(), "site": site.slug})


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    name: str
    unit: str | None
    value: float
    ts: datetime


class RejectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    reason: str
    topic: str
    detail: str
    payload: str


def problem(status: int, detail: str) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route may answer."""
    return {code: {"model": Problem, "content": {PROBLEM: {}}} for code in codes}


def render_metrics(stats: IngestStats | None, devices: dict[str, int]) -> str:
    """Prometheus text exposition; ingest counters only when this process runs ingest."""
    lines = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, int]]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    if stats is not None:
        family(
            "maille_ingest_received_total",
            "counter",
            "MQTT messages received by ingest.",
            [("", stats.received)],
        )
        family(
            "maille_ingest_stored_messages_total",
            "counter",
            "Messages accepted and committed.",
            [("", stats.stored_messages)],
        )
        family(
            "maille_ingest_stored_readings_total",
            "counter",
            "Readings newly stored (not duplicates).",
            [("", stats.stored_readings)],
        )
        family(
            "maille_ingest_rejected_total",
            "counter",
            "Messages rejected, by reason.",
            [(f'{{reason="{reason}"}}', n) for reason, n in sorted(stats.rejected.items())],
        )
    family(
        "maille_devices",
        "gauge",
        "Registered devices, by status.",
        [(f'{{status="{status}"}}', n) for status, n in sorted(devices.items())],
    )
    return "\n".join(lines) + "\n"


def create_app(engine: Engine, ingest: Ingest | None = None) -> FastAPI:
    app = FastAPI(title="Maille fleet", version=fleet.__version__, responses=problem_responses(422))
    app.state.engine = engine

    @app.exception_handler(HTTPException)
    async def _http_problem(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, describe_errors(exc.errors()))

    @app.get("/healthz", response_model=HealthOut, responses=problem_responses(503))
    def healthz(session: SessionDep) -> HealthOut | JSONResponse:
        try:
            session.exec(text("SELECT 1"))
        except SQLAlchemyError as e:
            return problem(503, f"database unreachable: {type(getattr(e, 'orig', None) or e).__name__}")
        return HealthOut(status="ok", database="ok")

    @app.get("/api/v1/devices")
    def list_devices(session: SessionDep) -> list[DeviceOut]:
        return [DeviceOut.of(d, s) for d, s in registry.list_devices(session)]

    @app.get("/api/v1/devices/{device_id}", responses=problem_responses(404))
    def get_device(device_id: str, session: SessionDep) -> DeviceOut:
        row = registry.get_device_with_site(session, device_id)
        if row is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return DeviceOut.of(*row)

    @app.get("/api/v1/devices/{device_id}/readings", responses=problem_responses(404))
    def get_readings(
        device_id: str,
        session: SessionDep,
        metric: Metric = None,
        since: When = None,
        until: When = None,
        limit: Limit = 1000,
    ) -> list[ReadingOut]:
        """The latest `limit` readings in [since, until], oldest first (newest last)."""
        if registry.get_device(session, device_id) is None:
            raise HTTPException(404, f"no device {device_id!r}")
        if since and until and as_utc(since) > as_utc(until):
            raise HTTPException(422, "query.since: must not be after until")
        rows = registry.readings(session, device_id, metric=metric, since=since, until=until, limit=limit)
        return [ReadingOut.model_validate(r) for r in rows]

    @app.get("/api/v1/rejects")
    def get_rejects(session: SessionDep, limit: Limit = 100) -> list[RejectOut]:
        """The latest `limit` rejected messages, oldest first."""
        return [RejectOut.model_validate(r) for r in registry.recent_rejects(session, limit)]

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(session: SessionDep) -> PlainTextResponse:
        text_ = render_metrics(ingest.stats if ingest else None, registry.device_counts(session))
        return PlainTextResponse(text_, media_type=PROMETHEUS)

    return app
