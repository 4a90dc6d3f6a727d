"""The fleet service: migrations, then ingest and the HTTP API side by side in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from fleet.api import create_app
from fleet.db import make_engine, upgrade
from fleet.ingest import Ingest
from fleet.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: whoever owns `stop` (the CLI, the demo) decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """Bind the API socket ourselves: uvicorn would sys.exit() on a port in use."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise RuntimeError(f"the API cannot listen on {host}:{port}: {e.strerror}") from e


async def _announce(server: uvicorn.Server, ingest: Ingest, ready: asyncio.Event) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    await ingest.subscribed.wait()
    ready.set()


async def serve(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or a part fails); `ready` is set once the API answers and ingest is
    subscribed."""
    engine = make_engine(settings.database_url)
    await asyncio.to_thread(upgrade, engine)
    ingest = Ingest(
        engine,
        settings.mqtt_url,
        client_id=settings.ingest_client_id,
        batch_size=settings.ingest_batch_size,
        batch_interval=settings.ingest_batch_interval,
        max_payload=settings.max_payload,
    )
    app = create_app(engine, ingest)
    server = _Server(uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning"))
    sock = _listen(settings.api_host, settings.api_port)
    parts = [
        asyncio.create_task(ingest.run(stop), name="ingest"),
        asyncio.create_task(server.serve(sockets=[sock]), name="api"),
        asyncio.create_task(stop.wait(), name="stop"),
    ]
    announcer = asyncio.create_task(_announce(server, ingest, ready)) if ready else None
    try:
        await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        server.should_exit = True
        if announcer:
            announcer.cancel()
        outcomes = await asyncio.gather(*parts, return_exceptions=True)
        sock.close()
        engine.dispose()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome  # a part that crashed takes the service down, after the others stopped cleanly
