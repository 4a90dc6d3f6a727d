"""The dashboard's pages: thin routes over fleet.web.overview, the API's services (fleet.control,
fleet.rollouts) and the API's permission rules, rendered by Jinja2 templates.

Every page wants a session (fleet.web.access) and answers a site outside the caller's scope with
403, as the API does; actions are POST forms checked for their origin and anti-forgery token, and
land in the audit log under the caller's token name through the same service calls as the API's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import col, select
from starlette.exceptions import HTTPException

from fleet import actions, auth, control, health, registry, rollouts
from fleet import alerts as alerts_
from fleet.auth import Perm, Principal
from fleet.contract import describe_errors
from fleet.models import Device, Rollout, Room, Site
from fleet.readings import rolled
from fleet.stream import Filter, Hub
from fleet.web import charts, overview
from fleet.web.access import (
    CheckedForm,
    Form,
    SessionDep,
    Viewer,
    end_session,
    require,
    safe_next,
    start_session,
)
from fleet.web.levels import BANDS, TILE_METRICS, for_browser, level, tile_level

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=TEMPLATES)
templates.env.filters["num"] = charts.num
templates.env.filters["when"] = lambda at: "—" if at is None else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def _tile_level(values: dict[str, overview.Latest]) -> str:
    return tile_level({name: found.value for name, found in values.items()})


templates.env.globals.update(
    level=level, tile_level=_tile_level, BANDS=BANDS, TILE_METRICS=TILE_METRICS, Perm=Perm
)
LEVELS_JSON = json.dumps(for_browser())

# What a rollout in each status can be told (fleet.rollouts.change refuses the rest with RolloutError).
RolloutAction = Literal["pause", "resume", "abort"]
Controller = Annotated[Principal, require(Perm.device_control)]


def _page(request: Request) -> None:
    """Marks the request as a page: its errors are shown as HTML (fleet.web.install)."""
    request.state.page = True


router = APIRouter(dependencies=[Depends(_page)], include_in_schema=False)


def render(
    request: Request, name: str, caller: Principal | None, status: int = 200, **context: Any
) -> Response:
    base = {"caller": caller, "csrf": getattr(request.state, "csrf", ""), "levels": LEVELS_JSON}
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def parse(model: type[BaseModel], fields: dict[str, str]) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise HTTPException(422, describe_errors(e.errors())) from None


def _site(session, caller: Principal, slug: str) -> Site:
    site = registry.SITES.get(session, slug)
    if site is None:
        raise HTTPException(404, f"no site {slug!r}")
    caller.check_site(site.id)
    return site


def _device(session, caller: Principal, device_id: str) -> Device:
    device = registry.get_device(session, device_id)
    if device is None:
        raise HTTPException(404, f"no device {device_id!r}")
    caller.check_site(device.site_id)
    return device


# --- login ---------------------------------------------------------------------------------------
class LoginForm(BaseModel):
    token: str = Field(min_length=1, max_length=256)
    next: str | None = None


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/fleet", status_code=303)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", None, next=safe_next(next))


@router.post("/login")
def login(request: Request, session: SessionDep, fields: Form) -> Response:
    body = parse(LoginForm, fields)
    caller = auth.authenticate(session, body.token.strip())
    target = safe_next(body.next)
    if caller is None:
        error = "This token is unknown or revoked."
        return render(request, "login.html", None, status=401, next=target, error=error)
    response = RedirectResponse(target, status_code=303)
    start_session(request, response, body.token.strip())
    return response


@router.post("/logout")
def logout(fields: CheckedForm) -> Response:
    response = RedirectResponse("/login", status_code=303)
    end_session(response)
    return response


# --- the fleet, sites, rooms ---------------------------------------------------------------------
@router.get("/fleet")
def fleet_page(
    request: Request,
    session: SessionDep,
    caller: Viewer,
    site: str = "",
    condition: str = "",
    q: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """Every device you may see, by site, with its condition; filtered by site, condition and text."""
    if condition and condition not in overview.CONDITIONS:
        raise HTTPException(
            422, f"query.condition: one of {', '.join(overview.CONDITIONS)}, not {condition!r}"
        )
    site_ids = caller.site_ids if not site else [_site(session, caller, site).id]
    everything = overview.device_lines(session, site_ids)
    shown = overview.filtered(everything, condition or None, q)
    return render(
        request,
        "fleet.html",
        caller,
        sites=overview.visible_sites(session, caller),
        counts=overview.counts_by_site(everything),
        lines=shown,
        conditions=overview.CONDITIONS,
        chosen={"site": site, "condition": condition, "q": q},
    )


@router.get("/sites/{slug}")
def site_page(request: Request, slug: str, session: SessionDep, caller: Viewer) -> Response:
    site = _site(session, caller, slug)
    buildings, unplaced = overview.site_tree(session, site)
    return render(
        request,
        "site.html",
        caller,
        site=site,
        buildings=buildings,
        unplaced=unplaced,
        energy=overview.building_energy(session, caller, [block.building for block in buildings]),
        stream=f"/live?site={site.slug}",
    )


@router.get("/rooms/{room_id}")
def room_page(request: Request, room_id: int, session: SessionDep, caller: Viewer) -> Response:
    room = session.get(Room, room_id)
    if room is None:
        raise HTTPException(404, f"no room {room_id}")
    site, building, floor = overview.room_place(session, room)
    caller.check_site(site.id)
    lines = [line for line in overview.device_lines(session, [site.id]) if line.row.device.room_id == room.id]
    values = overview.latest(session, [line.row.device.id for line in lines])
    return render(
        request,
        "room.html",
        caller,
        room=room,
        site=site,
        building=building,
        floor=floor,
        lines=lines,
        values=values,
        room_values=overview.merged(values, values.keys()),
        insight=overview.room_insight(session, caller, room, building),
        stream=f"/live?site={site.slug}",
    )


# --- one device ----------------------------------------------------------------------------------
class CommandForm(BaseModel):
    cmd: Literal["identify", "reboot"]


@router.get("/devices/{device_id}")
def device_page(
    request: Request,
    device_id: str,
    session: SessionDep,
    caller: Viewer,
    range: Annotated[Literal["6h", "24h", "7d", "30d"], Query()] = charts.DEFAULT_SPAN,
    sent: str | None = None,
) -> Response:
    device = _device(session, caller, device_id)
    condition = overview.condition(device, overview.open_rules(session, [device_id]).get(device_id, set()))
    values = overview.latest(session, [device_id]).get(device_id, {})
    span = charts.SPANS[range]
    until = request.app.state.clock()
    since = until - span.length
    chart_list = []
    for metric in sorted(values):
        buckets = rolled(session, [device_id], span.resolution, metric=metric, since=since, limit=2000)
        chart_list.append((metric, charts.svg(metric, buckets, since, until)))
    vitals = health.trace(session, device_id, since, until)
    vital_charts = []
    for name in health.CHARTED:
        buckets = charts.bucketed(((v.at, getattr(v, name)) for v in vitals), name, span.resolution)
        vital_charts.append((name, charts.svg(name, buckets, since, until)))
    commands = overview.recent_commands(session, device_id)
    return render(
        request,
        "device.html",
        caller,
        device=device,
        room=session.get(Room, device.room_id) if device.room_id is not None else None,
        condition=condition,
        units=overview.units(session, device_id),
        values=values,
        charts=chart_list,
        vital_charts=vital_charts,
        health_changes=sorted(health.changes(vitals), key=lambda c: c.at, reverse=True)[:50],  # stable
        spans=charts.SPANS,
        span=span,
        alerts=overview.alert_history(session, device_id),
        ota=overview.ota_history(session, device_id),
        commands=commands,
        sent=next((c for c in commands if c.id == sent), None),
        stream=f"/live?device={device_id}",
    )


@router.post("/devices/{device_id}/commands")
def send_command(
    request: Request, device_id: str, session: SessionDep, caller: Controller, fields: CheckedForm
) -> Response:
    """Identify or reboot, through fleet.control as POST /api/v1/devices/{id}/commands does."""
    device = _device(session, caller, device_id)
    body = parse(CommandForm, fields)
    try:
        command = control.send_command(session, actions.publisher(request), caller.name, device, body.cmd, {})
    except control.PublishError as e:
        raise HTTPException(503, f"stored, but not delivered to the broker: {e}") from None
    return RedirectResponse(f"/devices/{device_id}?sent={command.id}#commands", status_code=303)


# --- rollouts ------------------------------------------------------------------------------------
@router.get("/rollouts")
def rollouts_page(request: Request, session: SessionDep, caller: Viewer) -> Response:
    found = session.exec(select(Rollout).order_by(col(Rollout.id).desc())).all()
    shown = [
        rollouts.describe(session, r)
        for r in found
        if all(caller.sees(s) for s in rollouts.rollout_sites(session, r))
    ]
    return render(request, "rollouts.html", caller, rollouts=shown)


@router.get("/rollouts/{rollout_id}")
def rollout_page(request: Request, rollout_id: int, session: SessionDep, caller: Viewer) -> Response:
    described = rollouts.describe(session, actions.visible_rollout(session, caller, rollout_id))
    return render(
        request,
        "rollout.html",
        caller,
        r=described,
        actions=rollouts.actions_for(described.status),
        failures=[t for t in described.targets if t.state in rollouts.BAD],
    )


@router.post("/rollouts/{rollout_id}/{action}")
def rollout_action(
    request: Request,
    rollout_id: int,
    action: RolloutAction,
    session: SessionDep,
    caller: Controller,
    fields: CheckedForm,
) -> Response:
    """Pause, resume or abort, through fleet.rollouts.change as the API does."""
    actions.change_rollout(request, session, caller, rollout_id, action)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)


# --- alerts and rejects --------------------------------------------------------------------------
@router.get("/alerts")
def alerts_page(request: Request, session: SessionDep, caller: Viewer, all: bool = False) -> Response:
    """Open alerts (or the latest ones, with all=true) of the devices you may see, newest first."""
    device_ids = None
    if caller.site_ids is not None:
        device_ids = [r.device.id for r in registry.device_rows(session, site_ids=caller.site_ids)]
    found = alerts_.list_alerts(session, open_only=not all, device_ids=device_ids, limit=200)
    return render(request, "alerts.html", caller, alerts=found[::-1], all=all)


@router.get("/rejects")
def rejects_page(
    request: Request, session: SessionDep, caller: Annotated[Principal, require(Perm.read_ops)]
) -> Response:
    found = registry.recent_rejects(session, 200)[::-1]
    return render(request, "rejects.html", caller, rejects=found)


# --- live updates --------------------------------------------------------------------------------
async def _announced(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The hub's stream with a `ready` event once the hub has subscribed it (nothing is missed from
    then on: the page shows it is live, and tests know when to publish)."""
    try:
        yield await anext(events)
        yield "event: ready\ndata: {}\n\n"
        async for chunk in events:
            yield chunk
    finally:
        await events.aclose()


@router.get("/live")
def live(
    request: Request, session: SessionDep, caller: Viewer, device: str | None = None, site: str | None = None
) -> StreamingResponse:
    """Server-Sent Events: `reading` events of one device or one site (else every site you may see)."""
    site_ids = caller.site_ids
    if site is not None:
        site_ids = frozenset({_site(session, caller, site).id})
    if device is not None:
        _device(session, caller, device)
    hub: Hub | None = request.app.state.hub
    if hub is None:
        raise HTTPException(503, "this fleet process runs no ingest to stream from")
    wanted = Filter(device, None if site_ids is None else frozenset(site_ids))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_announced(hub.sse(wanted)), media_type="text/event-stream", headers=headers)
