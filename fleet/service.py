"""The fleet service: migrations, then ingest workers, the HTTP API, the alert evaluator and the webhook
sender side by side in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import uvicorn
from sqlalchemy import Engine
from sqlmodel import Session

from fleet import broker_admin
from fleet.alerts import Evaluator, Notifier
from fleet.api import create_app
from fleet.bundles import BundleHTTPServer
from fleet.control import Publisher
from fleet.db import make_engine, upgrade
from fleet.ingest import Ingest, subscriptions
from fleet.integrations.runner import attach as attach_integrations
from fleet.models import utcnow
from fleet.presence import PresenceRules
from fleet.rollouts import OtaStatusListener, RolloutEngine
from fleet.settings import Settings
from fleet.stream import Hub

log = logging.getLogger("maille.service")


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


async def _announce(
    server: uvicorn.Server, workers: list[Ingest], ready: asyncio.Event, listener: OtaStatusListener
) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    for worker in workers:
        await worker.subscribed.wait()
    await listener.subscribed.wait()
    ready.set()


def bundle_server(settings: Settings) -> BundleHTTPServer | None:
    """The release bundle server, or None (logged) when its port is taken: the rest still runs."""
    settings.bundle_dir.mkdir(parents=True, exist_ok=True)
    try:
        return BundleHTTPServer(
            settings.bundle_dir,
            settings.bundle_host,
            settings.bundle_port,
            settings.bundle_max_concurrent,
            settings.bundle_rate_bps,
        ).start()
    except OSError as e:
        log.error("release bundles are not served: %s:%s: %s", settings.bundle_host, settings.bundle_port, e)
        return None


def broker_sync(settings: Settings) -> Callable[[Session], object] | None:
    """The broker's users rewritten from the database, when this fleet administers the broker's files
    (tokens made or revoked through the API then take effect on the broker at once)."""
    if not (settings.broker_password_file and settings.broker_acl_file):
        return None
    return lambda session: broker_admin.sync(session, settings)


def ingest_workers(
    settings: Settings, engine: Engine, hub: Hub | None, clock: Callable[[], datetime]
) -> list[Ingest]:
    """`settings.ingest_workers` ingest clients; several share the stream (see ingest.subscriptions)."""
    n = settings.ingest_workers
    rules = PresenceRules(reboot_window_s=settings.reboot_window_s)
    return [
        Ingest(
            engine,
            settings.mqtt_url,
            client_id=settings.ingest_client_id if n == 1 else f"{settings.ingest_client_id}-{i}",
            batch_size=settings.ingest_batch_size,
            batch_interval=settings.ingest_batch_interval,
            max_payload=settings.max_payload,
            topics=subscriptions(i, n, settings.ingest_share_group),
            clock=clock,
            hub=hub,
            rules=rules,
        )
        for i in range(n)
    ]


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> None:
    """Run until `stop` is set (or a part fails); `ready` is set once the API answers and every ingest
    worker is subscribed. `clock` is the fleet's time for ingest and alerts (tests move it by hand)."""
    engine = make_engine(settings.database_url)
    await asyncio.to_thread(upgrade, engine)
    hub = Hub()
    workers = ingest_workers(settings, engine, hub, clock)
    integrations = attach_integrations(settings, engine, hub)  # site topics, Home Assistant discovery
    publisher = Publisher(settings.mqtt_url, f"{settings.ingest_client_id}-api")
    notifier = Notifier(settings.webhooks, settings.webhook_retries, settings.webhook_backoff_s)
    keep = timedelta(days=settings.health_retention_days)
    evaluator = Evaluator(engine, settings.alerts, notifier, settings.alert_interval_s, clock, keep)
    rollouts = RolloutEngine(
        engine, publisher.publish, settings.bundle_base_url, settings.rollout_interval_s, clock
    )
    listener = OtaStatusListener(
        engine, settings.mqtt_url, f"{settings.ingest_client_id}-ota", on_status=rollouts.nudge, clock=clock
    )
    bundles = await asyncio.to_thread(bundle_server, settings)
    app = create_app(
        engine,
        workers,
        publisher=publisher,
        hub=hub,
        notifier=notifier,
        metrics_public=settings.metrics_public,
        clock=clock,
        broker_sync=broker_sync(settings),
    )
    app.state.rollouts, app.state.loop = rollouts, asyncio.get_running_loop()
    app.state.integrations = integrations  # its counters go to /metrics
    # Live streams (SSE) never finish by themselves: on stop, cut them after a short grace.
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    sock = _listen(settings.api_host, settings.api_port)
    parts = [
        *(asyncio.create_task(w.run(stop), name=f"ingest-{i}") for i, w in enumerate(workers)),
        asyncio.create_task(server.serve(sockets=[sock]), name="api"),
        asyncio.create_task(evaluator.run(stop), name="alerts"),
        asyncio.create_task(notifier.run(stop), name="webhooks"),
        asyncio.create_task(rollouts.run(stop), name="rollouts"),
        asyncio.create_task(listener.run(stop), name="ota-status"),
        *([asyncio.create_task(integrations.run(stop), name="integrations")] if integrations else []),
        asyncio.create_task(stop.wait(), name="stop"),
    ]
    announcer = asyncio.create_task(_announce(server, workers, ready, listener)) if ready else None
    try:
        await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        server.should_exit = True
        if announcer:
            announcer.cancel()
        outcomes = await asyncio.gather(*parts, return_exceptions=True)
        sock.close()
        if bundles:
            bundles.stop()
        publisher.close()
        engine.dispose()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome  # a part that crashed takes the service down, after the others stopped cleanly
