"""The fleet's HTTP API: the registry, devices, readings, config and commands, alerts, the live
stream, rejects, the audit log, tokens, health and Prometheus metrics.

Every /api route wants a bearer token whose role holds the route's permission (fleet.auth), and
answers 403 for a site outside the token's scope. Errors are RFC 9457 problem documents
(application/problem+json). Routes stay thin: the work is in registry, readings, control, alerts.
"""

# No `from __future__ import annotations` here: the place routes are built in a function and FastAPI
# must resolve their annotations from its locals.

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, select
from starlette.exceptions import HTTPException

import fleet
from fleet import actions, audit, auth, control, insight_api, readings, refusals, registry, rollouts, web
from fleet import alerts as alerts_
from fleet.auth import Perm, Principal, require
from fleet.broker_admin import BrokerAdminError
from fleet.contract import ConfigSettings, describe_errors
from fleet.db import get_session
from fleet.health import VitalsOut, history
from fleet.models import (
    ApiToken,
    Channel,
    Command,
    Device,
    DeviceConfig,
    DeviceSensor,
    Release,
    Rollout,
    as_utc,
    utcnow,
)
from fleet.registry import PlaceKind
from fleet.schemas import (
    AlertOut,
    AuditOut,
    BucketOut,
    BuildingIn,
    BuildingPatch,
    ChannelOut,
    CommandIn,
    CommandOut,
    ConfigOut,
    DeviceIn,
    DeviceOut,
    DevicePatch,
    FloorIn,
    FloorPatch,
    HealthOut,
    NewTokenOut,
    Problem,
    ReadingOut,
    RejectOut,
    RoomIn,
    RoomPatch,
    SensorIn,
    SiteIn,
    SitePatch,
    TokenIn,
    TokenOut,
    ZoneIn,
    ZonePatch,
)
from fleet.stream import Filter, Hub

PROBLEM = "application/problem+json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
CSV = "text/csv; charset=utf-8"

SessionDep = Annotated[Session, Depends(get_session)]
Limit = Annotated[int, Query(ge=1, le=10_000)]
Metric = Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,32}$", description="measurement name")]
When = Annotated[datetime | None, Query(description="ISO-8601; without an offset, UTC")]
Resolution = Annotated[
    Literal["raw", "1m", "15m", "1h", "1d"], Query(description="raw readings, or rollup buckets")
]
Format = Annotated[Literal["json", "csv"] | None, Query(description="or send Accept: text/csv")]
Force = Annotated[bool, Query(description="also delete what hangs off it")]
Reader = Annotated[Principal, require(Perm.read)]


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM, headers=headers)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem documents a route may answer."""
    return {code: {"model": Problem, "content": {PROBLEM: {}}} for code in codes}


def render_metrics(app_state: Any, devices: dict[str, int], open_alerts: int) -> str:
    """Prometheus text exposition; ingest counters only when this process runs ingest."""
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    workers = app_state.ingest
    if workers:

        def total(attr: str) -> int:
            return sum(getattr(w.stats, attr) for w in workers)

        family(
            "maille_ingest_received_total",
            "counter",
            "MQTT messages received by ingest.",
            [("", total("received"))],
        )
        family(
            "maille_ingest_stored_messages_total",
            "counter",
            "Messages accepted and committed.",
            [("", total("stored_messages"))],
        )
        family(
            "maille_ingest_stored_readings_total",
            "counter",
            "Readings newly stored (not duplicates).",
            [("", total("stored_readings"))],
        )
        reasons = sorted(workers[0].stats.rejected)
        family(
            "maille_ingest_rejected_total",
            "counter",
            "Messages rejected, by reason.",
            [(f'{{reason="{r}"}}', sum(w.stats.rejected[r] for w in workers)) for r in reasons],
        )
        family(
            "maille_ingest_lag_seconds",
            "gauge",
            "Receipt of the oldest message of the last committed batch to its commit, by worker.",
            [(f'{{worker="{i}"}}', w.stats.lag_s) for i, w in enumerate(workers)],
        )
        family(
            "maille_ingest_worker_received_total",
            "counter",
            "Messages received, by worker.",
            [(f'{{worker="{i}"}}', w.stats.received) for i, w in enumerate(workers)],
        )
    family(
        "maille_devices",
        "gauge",
        "Registered devices, by status.",
        [(f'{{status="{status}"}}', n) for status, n in sorted(devices.items())],
    )
    family("maille_devices_online", "gauge", "Devices online now.", [("", devices["online"])])
    family("maille_alerts_open", "gauge", "Alerts open now.", [("", open_alerts)])
    if app_state.hub is not None:
        family(
            "maille_stream_dropped_total",
            "counter",
            "Live-stream events dropped for slow clients.",
            [("", app_state.hub.dropped)],
        )
    if app_state.notifier is not None:
        family(
            "maille_webhook_delivered_total",
            "counter",
            "Alert events delivered to webhooks.",
            [("", app_state.notifier.delivered)],
        )
        family(
            "maille_webhook_failed_total",
            "counter",
            "Alert events given up after all retries.",
            [("", app_state.notifier.failed)],
        )
    family(
        "maille_http_refused_total",
        "counter",
        "API calls and dashboard requests refused (4xx), by route and status.",
        refusals.samples(app_state.refused),
    )
    integrations = getattr(app_state, "integrations", None)  # site topics, Home Assistant discovery
    for name, kind, help_, value in integrations.samples() if integrations else ():
        family(name, kind, help_, [("", value)])
    return "\n".join(lines) + "\n"


def _sync_broker(request: Request, session: Session) -> None:
    """After a token's broker account changed: rewrite the broker's users when this process
    administers the broker (else `maille broker sync` does it where its files are)."""
    sync = request.app.state.broker_sync
    if sync is None:
        return
    try:
        sync(session)
    except BrokerAdminError as e:
        raise HTTPException(503, f"the token is stored, but the broker was not updated: {e}") from None


def _not_found(entity: str, key: object) -> HTTPException:
    return HTTPException(404, f"no {entity} {key!r}")


def _want_csv(request: Request, fmt: str | None) -> bool:
    return fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("accept", ""))


def _rows_response(request: Request, fmt: str | None, rows: list[BaseModel], model: type[BaseModel]):
    if _want_csv(request, fmt):
        return PlainTextResponse(readings.to_csv(rows, model), media_type=CSV)
    return rows


def _parent_site(session: Session, kind: PlaceKind, data: dict[str, Any]) -> int:
    """The site a new place will belong to, through its parent (422 if the parent does not exist)."""
    field, parent_model = kind.parent
    parent = session.get(parent_model, data[field])
    if parent is None:
        raise HTTPException(422, f"body.{field}: no {parent_model.__tablename__} {data[field]}")
    return registry.site_id_of(session, parent)


def place_router(kind: PlaceKind, create_model: type[BaseModel], patch_model: type[BaseModel]) -> APIRouter:
    """POST/GET/PATCH/DELETE for one level of the building tree; the same rules for every level."""
    router = APIRouter(prefix=f"/api/v1/{kind.entity}s", tags=["registry"])
    writer = require(Perm.registry_write)
    parent_field = kind.parent[0] if kind.parent else None

    def lookup(session: Session, caller: Principal, key: str) -> Any:
        obj = kind.get(session, key)
        if obj is None:
            raise _not_found(kind.entity, key)
        caller.check_site(registry.site_id_of(session, obj))
        return obj

    @router.get("", response_model=list[kind.model])
    def list_places(session: SessionDep, caller: Reader, parent: Annotated[int | None, Query()] = None):
        """All of them you may see; `parent` filters by the parent's id."""
        found = registry.list_places(session, kind, **({parent_field: parent} if parent_field else {}))
        return [p for p in found if caller.sees(registry.site_id_of(session, p))]

    @router.post("", response_model=kind.model, status_code=201, responses=problem_responses(403, 409, 422))
    def create(body: create_model, session: SessionDep, caller: Annotated[Principal, writer]):
        data = body.model_dump()
        if kind.parent is None:
            caller.check_unscoped()
        else:
            caller.check_site(_parent_site(session, kind, data))
        return registry.create_place(session, kind, caller.name, data)

    @router.get("/{key}", response_model=kind.model, responses=problem_responses(403, 404))
    def read(key: str, session: SessionDep, caller: Reader):
        return lookup(session, caller, key)

    @router.patch("/{key}", response_model=kind.model, responses=problem_responses(403, 404, 409))
    def patch(key: str, body: patch_model, session: SessionDep, caller: Annotated[Principal, writer]):
        obj = lookup(session, caller, key)
        return registry.update_place(session, kind, caller.name, obj, body.model_dump(exclude_unset=True))

    @router.delete("/{key}", status_code=204, responses=problem_responses(403, 404, 409))
    def remove(key: str, session: SessionDep, caller: Annotated[Principal, writer], force: Force = False):
        obj = lookup(session, caller, key)
        blockers = kind.blockers(session, obj)
        if blockers and not force:
            what = ", ".join(f"{n} {table}" for table, n in blockers.items())
            raise HTTPException(
                409, f"{kind.entity} {key} still has {what}; add ?force=true to delete them too"
            )
        registry.delete_place(session, kind, caller.name, obj)
        return Response(status_code=204)

    return router


def device_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
    DeviceWriter = Annotated[Principal, require(Perm.device_write)]
    Controller = Annotated[Principal, require(Perm.device_control)]

    def visible(session: Session, caller: Principal, device_id: str) -> Device:
        device = registry.get_device(session, device_id)
        if device is None:
            raise _not_found("device", device_id)
        caller.check_site(device.site_id)
        return device

    def out(session: Session, device_id: str) -> DeviceOut:
        return DeviceOut.of(registry.device_rows(session, device_id=device_id)[0])

    def room_site(session: Session, caller: Principal, room_id: int) -> int:
        room = registry.ROOMS.get(session, str(room_id))
        if room is None:
            raise HTTPException(422, f"body.room_id: no room {room_id}")
        site_id = registry.site_id_of(session, room)
        caller.check_site(site_id)
        return site_id

    @router.get("")
    def list_devices(
        session: SessionDep,
        caller: Reader,
        site: Annotated[str | None, Query()] = None,
        status: Annotated[str | None, Query()] = None,
        tag: Annotated[str | None, Query()] = None,
    ) -> list[DeviceOut]:
        site_ids = caller.site_ids
        if site is not None:
            found = registry.SITES.get(session, site)
            if found is None:
                raise _not_found("site", site)
            caller.check_site(found.id)
            site_ids = {found.id}
        rows = registry.device_rows(session, site_ids=site_ids, status=status, tag=tag)
        return [DeviceOut.of(r) for r in rows]

    @router.post("", status_code=201, responses=problem_responses(403, 409, 422))
    def create_device(body: DeviceIn, session: SessionDep, caller: DeviceWriter) -> DeviceOut:
        site = registry.SITES.get(session, body.site)
        if site is None:
            raise HTTPException(422, f"body.site: no site {body.site!r}")
        caller.check_site(site.id)
        if body.room_id is not None and room_site(session, caller, body.room_id) != site.id:
            raise HTTPException(422, "body.room_id: the room is in another site")
        data = body.model_dump(exclude={"site"}) | {"site_id": site.id}
        registry.create_device(session, caller.name, data)
        return out(session, body.id)

    @router.get("/{device_id}", responses=problem_responses(403, 404))
    def get_device(device_id: str, session: SessionDep, caller: Reader) -> DeviceOut:
        visible(session, caller, device_id)
        return out(session, device_id)

    @router.patch("/{device_id}", responses=problem_responses(403, 404, 422))
    def patch_device(
        device_id: str, body: DevicePatch, session: SessionDep, caller: DeviceWriter
    ) -> DeviceOut:
        device = visible(session, caller, device_id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("room_id") is not None:
            changes["site_id"] = room_site(session, caller, changes["room_id"])
        if changes.get("replaced_by") is not None:
            visible(session, caller, changes["replaced_by"])
        registry.update_device(session, caller.name, device, changes)
        return out(session, device_id)

    @router.delete("/{device_id}", status_code=204, responses=problem_responses(403, 404, 409))
    def delete_device(
        device_id: str,
        session: SessionDep,
        caller: Annotated[Principal, require(Perm.registry_write)],
        force: Force = False,
    ):
        """Retiring (PATCH lifecycle=retired) keeps the data; this removes the device and, with
        ?force, its readings."""
        device = visible(session, caller, device_id)
        blockers = registry.device_blockers(session, device)
        if blockers and not force:
            raise HTTPException(
                409,
                f"device {device_id} has {blockers['reading']} readings; "
                "retire it, or add ?force=true to delete them too",
            )
        registry.delete_device(session, caller.name, device)
        return Response(status_code=204)

    @router.get("/{device_id}/sensors")
    def list_sensors(device_id: str, session: SessionDep, caller: Reader) -> list[DeviceSensor]:
        visible(session, caller, device_id)
        return list(registry.sensors_of(session, device_id))

    @router.post("/{device_id}/sensors", status_code=201)
    def add_sensor(device_id: str, body: SensorIn, session: SessionDep, caller: DeviceWriter) -> DeviceSensor:
        device = visible(session, caller, device_id)
        return registry.add_sensor(session, caller.name, device, body.model_dump())

    @router.delete("/{device_id}/sensors/{sensor_id}", status_code=204)
    def remove_sensor(device_id: str, sensor_id: int, session: SessionDep, caller: DeviceWriter):
        visible(session, caller, device_id)
        sensor = session.get(DeviceSensor, sensor_id)
        if sensor is None or sensor.device_id != device_id:
            raise _not_found("sensor", sensor_id)
        registry.remove_sensor(session, caller.name, sensor)
        return Response(status_code=204)

    @router.get("/{device_id}/channels")
    def list_channels(device_id: str, session: SessionDep, caller: Reader) -> list[ChannelOut]:
        """Each measurement's last arrival and learned cadence."""
        visible(session, caller, device_id)
        found = session.exec(select(Channel).where(Channel.device_id == device_id).order_by(Channel.name))
        return [ChannelOut.of(c) for c in found if caller.metrics is None or c.name in caller.metrics]

    @router.get(
        "/{device_id}/readings",
        response_model=list[ReadingOut] | list[BucketOut],
        responses={**problem_responses(403, 404), 200: {"content": {"text/csv": {}}}},
    )
    def device_readings(
        request: Request,
        device_id: str,
        session: SessionDep,
        caller: Reader,
        q: ReadingQueryDep,
        resolution: Resolution = "raw",
    ):
        """The latest `limit` readings (or rollup buckets) in [since, until], oldest first."""
        visible(session, caller, device_id)
        return _readings(request, session, caller, [device_id], q, resolution)

    @router.get(
        "/{device_id}/health",
        response_model=list[VitalsOut],
        responses={**problem_responses(403, 404), 200: {"content": {"text/csv": {}}}},
    )
    def device_health(
        request: Request,
        device_id: str,
        session: SessionDep,
        caller: Reader,
        since: When = None,
        until: When = None,
        limit: Limit = 1000,
        format: Format = None,
    ):
        """The latest `limit` health messages received in [since, until], oldest first."""
        visible(session, caller, device_id)
        _check_window(since, until)
        rows = [VitalsOut.model_validate(h) for h in history(session, device_id, since, until, limit)]
        return _rows_response(request, format, rows, VitalsOut)

    @router.put("/{device_id}/config", status_code=202, responses=problem_responses(403, 404, 503))
    def put_config(
        device_id: str, body: ConfigSettings, request: Request, session: SessionDep, caller: Controller
    ) -> ConfigOut:
        """Store the desired settings under the next version and publish them (retained) to the node."""
        device = visible(session, caller, device_id)
        desired = control.set_config(session, actions.publisher(request), caller.name, device, body)
        return ConfigOut.of(device_id, desired, device.config_version)

    @router.get("/{device_id}/config", responses=problem_responses(403, 404))
    def get_config(device_id: str, session: SessionDep, caller: Reader) -> ConfigOut:
        device = visible(session, caller, device_id)
        return ConfigOut.of(device_id, session.get(DeviceConfig, device_id), device.config_version)

    @router.post("/{device_id}/commands", status_code=202, responses=problem_responses(403, 404, 503))
    def post_command(
        device_id: str,
        body: CommandIn,
        request: Request,
        response: Response,
        session: SessionDep,
        caller: Controller,
    ) -> CommandOut:
        """Publish the command (QoS 1); its ack shows on GET …/commands/{id}."""
        device = visible(session, caller, device_id)
        expires = int(utcnow().timestamp()) + body.expires_in_s if body.expires_in_s else None
        command = control.send_command(
            session, actions.publisher(request), caller.name, device, body.cmd, body.args, expires
        )
        response.headers["Location"] = f"/api/v1/devices/{device_id}/commands/{command.id}"
        return CommandOut.of(command)

    @router.get("/{device_id}/commands")
    def list_commands(
        device_id: str, session: SessionDep, caller: Reader, limit: Limit = 100
    ) -> list[CommandOut]:
        visible(session, caller, device_id)
        query = select(Command).where(Command.device_id == device_id)
        found = session.exec(query.order_by(Command.created_at.desc()).limit(limit)).all()
        return [CommandOut.of(c) for c in reversed(found)]

    @router.get("/{device_id}/commands/{command_id}", responses=problem_responses(403, 404))
    def get_command(device_id: str, command_id: str, session: SessionDep, caller: Reader) -> CommandOut:
        visible(session, caller, device_id)
        command = session.get(Command, command_id)
        if command is None or command.device_id != device_id:
            raise _not_found("command", command_id)
        return CommandOut.of(command)

    return router


def _check_window(since: datetime | None, until: datetime | None) -> None:
    if since and until and as_utc(since) > as_utc(until):
        raise HTTPException(422, "query.since: must not be after until")


@dataclass(frozen=True)
class ReadingQuery:
    """What a readings route is asked for, beside its resolution (whose default differs by route)."""

    metric: str | None
    since: datetime | None
    until: datetime | None
    limit: int
    format: str | None


def _reading_query(
    metric: Metric = None, since: When = None, until: When = None, limit: Limit = 1000, format: Format = None
) -> ReadingQuery:
    return ReadingQuery(metric, since, until, limit, format)


ReadingQueryDep = Annotated[ReadingQuery, Depends(_reading_query)]


def _readings(request, session, caller, device_ids, q: ReadingQuery, resolution: str):
    _check_window(q.since, q.until)
    caller.check_metric(q.metric)  # a token limited to some metrics: 403 for another; its own when none named
    window = {
        "metric": q.metric,
        "metrics": caller.metrics,
        "since": q.since,
        "until": q.until,
        "limit": q.limit,
    }
    if resolution == readings.RAW:
        rows = [ReadingOut.model_validate(r) for r in readings.raw(session, device_ids, **window)]
        return _rows_response(request, q.format, rows, ReadingOut)
    rows = [BucketOut.of(r) for r in readings.rolled(session, device_ids, resolution, **window)]
    return _rows_response(request, q.format, rows, BucketOut)


def ops_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["operations"])
    OpsReader = Annotated[Principal, require(Perm.read_ops)]
    Admin = Annotated[Principal, require(Perm.tokens)]

    @router.get(
        "/rooms/{room_id}/readings",
        response_model=list[ReadingOut] | list[BucketOut],
        responses={**problem_responses(403, 404), 200: {"content": {"text/csv": {}}}},
        tags=["registry"],
    )
    def room_readings(
        request: Request,
        room_id: int,
        session: SessionDep,
        caller: Reader,
        q: ReadingQueryDep,
        resolution: Resolution = "1h",
    ):
        """Every device of the room, from rollups unless resolution=raw."""
        room = registry.ROOMS.get(session, str(room_id))
        if room is None:
            raise _not_found("room", room_id)
        caller.check_site(registry.site_id_of(session, room))
        device_ids = readings.devices_in_room(session, room_id)
        return _readings(request, session, caller, device_ids, q, resolution)

    @router.get("/alerts")
    def list_alerts(
        session: SessionDep, caller: Reader, open: bool = True, device: str | None = None, limit: Limit = 100
    ) -> list[AlertOut]:
        """Open alerts (or, with open=false, the latest ones whatever their state), oldest first."""
        device_ids = None
        if caller.site_ids is not None:
            device_ids = [r.device.id for r in registry.device_rows(session, site_ids=caller.site_ids)]
        if device is not None:
            if device_ids is not None and device not in device_ids:
                raise HTTPException(403, f"token {caller.name!r} is not allowed on this site")
            device_ids = [device]
        found = alerts_.list_alerts(session, open_only=open, device_ids=device_ids, limit=limit)
        return [AlertOut.of(a) for a in found]

    @router.get("/rejects")
    def get_rejects(session: SessionDep, caller: OpsReader, limit: Limit = 100) -> list[RejectOut]:
        """The latest `limit` rejected messages, oldest first."""
        return [RejectOut.model_validate(r) for r in registry.recent_rejects(session, limit)]

    @router.get("/audit")
    def get_audit(
        session: SessionDep, caller: OpsReader, entity: str | None = None, limit: Limit = 100
    ) -> list[AuditOut]:
        """The latest `limit` writes, oldest first."""
        return [AuditOut.model_validate(e) for e in audit.recent(session, limit, entity)]

    @router.get("/tokens")
    def list_tokens(session: SessionDep, caller: Admin) -> list[TokenOut]:
        return [TokenOut.model_validate(t) for t in session.exec(select(ApiToken).order_by(ApiToken.id))]

    @router.post("/tokens", status_code=201, responses=problem_responses(409, 422))
    def create_token(body: TokenIn, request: Request, session: SessionDep, caller: Admin) -> NewTokenOut:
        try:
            scope = {"metrics": body.metrics, "broker": body.broker}
            token, secret = auth.create_token(session, body.name, body.role, body.sites, caller.name, **scope)
        except ValueError as e:
            raise HTTPException(409 if "exists" in str(e) else 422, str(e)) from None
        if token.broker_hash:
            _sync_broker(request, session)
        return NewTokenOut.model_validate({**TokenOut.model_validate(token).model_dump(), "token": secret})

    @router.delete("/tokens/{name}", status_code=204, responses=problem_responses(404))
    def revoke_token(name: str, request: Request, session: SessionDep, caller: Admin):
        revoked = auth.revoke_token(session, name, caller.name)
        if revoked is None:
            raise _not_found("token", name)
        if revoked.broker_hash:
            _sync_broker(request, session)
        return Response(status_code=204)

    @router.get(
        "/stream", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}}
    )
    def stream(
        request: Request,
        session: SessionDep,
        caller: Reader,
        device: str | None = None,
        site: str | None = None,
    ):
        """Server-Sent Events: one `reading` event per newly stored reading, as ingest commits them."""
        hub: Hub | None = request.app.state.hub
        if hub is None:
            raise HTTPException(503, "this API process runs no ingest to stream from")
        site_ids = caller.site_ids
        if site is not None:
            found = registry.SITES.get(session, site)
            if found is None:
                raise _not_found("site", site)
            caller.check_site(found.id)
            site_ids = frozenset({found.id})
        if device is not None:
            d = registry.get_device(session, device)
            if d is None:
                raise _not_found("device", device)
            caller.check_site(d.site_id)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            hub.sse(Filter(device, None if site_ids is None else frozenset(site_ids), caller.metrics)),
            media_type="text/event-stream",
            headers=headers,
        )

    return router


def rollout_router() -> APIRouter:
    """Releases (read) and rollouts: plan one, follow it, pause, resume, abort (fleet.rollouts)."""
    router = APIRouter(prefix="/api/v1", tags=["rollouts"])
    Controller = Annotated[Principal, require(Perm.device_control)]

    @router.get("/releases")
    def list_releases(session: SessionDep, caller: Reader) -> list[Release]:
        """Published releases, newest first."""
        return list(session.exec(select(Release).order_by(Release.id.desc())))

    @router.post("/rollouts", status_code=201, responses=problem_responses(403, 404, 422))
    def create_rollout(
        body: rollouts.RolloutSpec,
        request: Request,
        response: Response,
        session: SessionDep,
        caller: Controller,
    ) -> rollouts.RolloutOut:
        """Plan the rollout (its devices and waves) and start it; the engine sends the offers."""
        try:
            rollout = rollouts.create_rollout(session, body, caller.name, site_ids=caller.site_ids)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        actions.nudge_rollouts(request)
        response.headers["Location"] = f"/api/v1/rollouts/{rollout.id}"
        return rollouts.describe(session, rollout)

    @router.get("/rollouts")
    def list_rollouts(session: SessionDep, caller: Reader) -> list[rollouts.RolloutOut]:
        found = session.exec(select(Rollout).order_by(Rollout.id))
        return [
            rollouts.describe(session, r)
            for r in found
            if all(caller.sees(s) for s in rollouts.rollout_sites(session, r))
        ]

    @router.get("/rollouts/{rollout_id}", responses=problem_responses(403, 404))
    def get_rollout(rollout_id: int, session: SessionDep, caller: Reader) -> rollouts.RolloutOut:
        return rollouts.describe(session, actions.visible_rollout(session, caller, rollout_id))

    def action(name: str):
        @router.post(f"/rollouts/{{rollout_id}}/{name}", responses=problem_responses(403, 404, 409, 503))
        def act(
            rollout_id: int, request: Request, session: SessionDep, caller: Controller
        ) -> rollouts.RolloutOut:
            changed = actions.change_rollout(request, session, caller, rollout_id, name)
            return rollouts.describe(session, changed)

        act.__name__ = f"{name}_rollout"
        act.__doc__ = {
            "pause": "No new offers; the devices updating now finish.",
            "resume": "Carry on where it paused.",
            "abort": "Stop for good and withdraw the retained offers of the devices not done.",
        }[name]

    for name in ("pause", "resume", "abort"):
        action(name)
    return router


# --- site calendars: when a building is occupied (fleet.calendar; rollouts wait until it is free) ---
def calendar_router() -> APIRouter:
    from fleet import sites
    from fleet.calendar import Calendar

    router = APIRouter(prefix="/api/v1/sites/{key}/calendar", tags=["registry"])
    Writer = Annotated[Principal, require(Perm.registry_write)]

    def site_of(session: Session, caller: Principal, key: str):
        site = registry.SITES.get(session, key)
        if site is None:
            raise _not_found("site", key)
        caller.check_site(site.id)
        return site

    @router.get("", responses=problem_responses(403, 404))
    def get_calendar(key: str, session: SessionDep, caller: Reader) -> Calendar:
        site = site_of(session, caller, key)
        if site.calendar is None:
            raise HTTPException(404, f"site {key} has no calendar")
        return Calendar.model_validate(site.calendar)

    @router.put("", responses=problem_responses(403, 404, 422))
    def put_calendar(key: str, body: Calendar, session: SessionDep, caller: Writer) -> Calendar:
        """Replace the site's calendar (weekly occupied spans in its time zone, closures)."""
        sites.set_calendar(session, site_of(session, caller, key), body, caller.name)
        return body

    @router.delete("", status_code=204, responses=problem_responses(403, 404))
    def delete_calendar(key: str, session: SessionDep, caller: Writer) -> Response:
        sites.set_calendar(session, site_of(session, caller, key), None, caller.name)
        return Response(status_code=204)

    return router


PLACE_ROUTES = [
    (registry.SITES, SiteIn, SitePatch),
    (registry.BUILDINGS, BuildingIn, BuildingPatch),
    (registry.FLOORS, FloorIn, FloorPatch),
    (registry.ZONES, ZoneIn, ZonePatch),
    (registry.ROOMS, RoomIn, RoomPatch),
]


def create_app(
    engine: Engine,
    ingest: list | None = None,
    *,
    publisher: control.Publisher | None = None,
    hub: Hub | None = None,
    notifier: alerts_.Notifier | None = None,
    metrics_public: bool = True,
    clock=utcnow,
    broker_sync: Callable[[Session], object] | None = None,
) -> FastAPI:
    """The API over `engine`; the ingest workers, publisher, hub and notifier of the same process
    when there are (an API-only process answers 503 where it would need them)."""
    app = FastAPI(title="Maille fleet", version=fleet.__version__, responses=problem_responses(401, 422))
    app.state.engine = engine
    app.state.ingest = ingest or []
    app.state.publisher = publisher
    app.state.hub = hub
    app.state.notifier = notifier
    app.state.clock = clock
    app.state.rollouts = None  # the rollout engine, when this process runs one (nudged on changes)
    app.state.loop = None  # the event loop it runs in
    app.state.broker_sync = broker_sync  # rewrites the broker's users when this process administers it
    app.state.refused = Counter()  # (route, status) → refused requests, for /metrics
    app.add_middleware(refusals.RefusalCounter, counts=app.state.refused)

    @app.exception_handler(HTTPException)
    async def _http_problem(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, describe_errors(exc.errors()))

    @app.exception_handler(IntegrityError)
    async def _conflict_problem(_request: Request, exc: IntegrityError) -> JSONResponse:
        return problem(409, f"conflicts with what is stored: {str(exc.orig).splitlines()[0][:300]}")

    @app.exception_handler(control.PublishError)
    async def _broker_problem(_request: Request, exc: control.PublishError) -> JSONResponse:
        return problem(503, f"stored, but not delivered to the broker: {exc}")

    @app.exception_handler(ValueError)
    async def _value_problem(_request: Request, exc: ValueError) -> JSONResponse:
        return problem(422, str(exc))

    @app.get("/healthz", response_model=HealthOut, responses=problem_responses(503))
    def healthz(session: SessionDep) -> HealthOut | JSONResponse:
        try:
            session.exec(text("SELECT 1"))
        except SQLAlchemyError as e:
            return problem(503, f"database unreachable: {type(getattr(e, 'orig', None) or e).__name__}")
        workers = app.state.ingest
        down = sum(1 for w in workers if not w.subscribed.is_set())
        if down:
            return problem(503, f"ingest not subscribed to the broker: {down} of {len(workers)} workers")
        return HealthOut(status="ok", database="ok", ingest="subscribed" if workers else "none")

    metrics_deps = [] if metrics_public else [require(Perm.read)]

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=metrics_deps)
    def metrics(session: SessionDep) -> PlainTextResponse:
        open_alerts = len(alerts_.list_alerts(session, open_only=True, device_ids=None, limit=10_000))
        body = render_metrics(app.state, registry.device_counts(session), open_alerts)
        return PlainTextResponse(body, media_type=PROMETHEUS)

    for kind, create_model, patch_model in PLACE_ROUTES:
        app.include_router(place_router(kind, create_model, patch_model))
    app.include_router(device_router())
    app.include_router(ops_router())
    app.include_router(rollout_router())
    app.include_router(insight_api.router())
    app.include_router(calendar_router())
    web.install(app)  # the dashboard: pages, /static, HTML errors for pages
    return app
