"""What the API and the dashboard both do on a caller's behalf, so that both check and act alike:
find a rollout the caller may see, pause/resume/abort it, reach the broker, wake the rollout engine."""

from __future__ import annotations

from fastapi import Request
from sqlmodel import Session
from starlette.exceptions import HTTPException

from fleet import control, rollouts
from fleet.auth import Principal
from fleet.models import Rollout


def publisher(request: Request) -> control.Publisher:
    """The fleet process's broker connection, or 503 when it has none."""
    found = request.app.state.publisher
    if found is None:
        raise HTTPException(503, "this fleet process has no broker connection to send with")
    return found


def nudge_rollouts(request: Request) -> None:
    """Wake the rollout engine (it runs on the service's loop) so a change acts at once."""
    engine, loop = request.app.state.rollouts, request.app.state.loop
    if engine is not None and loop is not None:
        loop.call_soon_threadsafe(engine.nudge)


def visible_rollout(session: Session, caller: Principal, rollout_id: int) -> Rollout:
    """The rollout, if every site it touches is in the caller's scope (else 403; 404 if none)."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"no rollout {rollout_id}")
    for site_id in rollouts.rollout_sites(session, rollout):
        caller.check_site(site_id)
    return rollout


def change_rollout(
    request: Request, session: Session, caller: Principal, rollout_id: int, action: str
) -> Rollout:
    """pause, resume or abort (409 when its status does not allow it), then wake the engine."""
    rollout = visible_rollout(session, caller, rollout_id)
    publish = publisher(request).publish if action == "abort" else None
    try:
        rollouts.change(session, rollout, action, caller.name, publish, request.app.state.clock())
    except rollouts.RolloutError as e:
        raise HTTPException(409, str(e)) from None
    nudge_rollouts(request)
    return rollout
