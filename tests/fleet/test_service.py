"""The whole service in one event loop: migrations, ingest and the API, ready and stopped on cue."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.broker import free_port
from fleet.service import serve
from fleet.settings import Settings


def settings_for(db_url: str, broker, port: int | None = None) -> Settings:
    return Settings(database_url=db_url, mqtt_url=broker.fleet_url, api_port=port or free_port())


def test_serve_gets_ready_answers_and_stops(db_url, broker, engine):
    settings = settings_for(db_url, broker)
    with Session(engine) as s:
        admin = create_token(s, "admin", Role.admin)[1]

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        service = asyncio.create_task(serve(settings, stop, ready))
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as http:
            assert (await http.get("/healthz")).json() == {
                "status": "ok",
                "database": "ok",
                "ingest": "subscribed",
            }
            assert "maille_ingest_received_total" in (await http.get("/metrics")).text
            assert (await http.get("/api/v1/devices")).status_code == 401
            headers = {"Authorization": f"Bearer {admin}"}
            assert (await http.get("/api/v1/devices", headers=headers)).json() == []
        stop.set()
        await asyncio.wait_for(service, 10)

    asyncio.run(scenario())
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", settings.api_port))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_fails_clearly_when_the_port_is_taken(db_url, broker):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        settings = settings_for(db_url, broker, taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="cannot listen"):
            asyncio.run(serve(settings, asyncio.Event()))
