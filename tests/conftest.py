"""Real parts for every test: a private Mosquitto, SQLite and PostgreSQL databases, virtual boards."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fleet.broker import LocalBroker

POSTGRES_URL = os.environ.get("MAILLE_TEST_POSTGRES_URL")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> LocalBroker:
    """One private Mosquitto per test session (auth, %u ACL, persistence under the session's tmp)."""
    b = LocalBroker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path) -> LocalBroker:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    b = LocalBroker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def _database_params():
    params = [pytest.param("sqlite", id="sqlite")]
    params.append(
        pytest.param(
            "postgres",
            id="postgres",
            marks=pytest.mark.skipif(
                not POSTGRES_URL, reason="MAILLE_TEST_POSTGRES_URL not set (.ci/run sets it)"
            ),
        )
    )
    return params


@pytest.fixture(params=_database_params())
def db_url(request, tmp_path) -> str:
    """An empty database of the test's own: a SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'maille.db'}"
        return
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"maille_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def device_credentials(broker):
    """Factory: a new device user on the session broker, returning (device_id, password)."""
    made = []

    def make(device_id: str | None = None) -> tuple[str, str]:
        device_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
        password = f"pw-{uuid.uuid4().hex}"
        broker.users.set_user(device_id, password)
        broker.reload()
        made.append(device_id)
        return device_id, password

    yield make
    for d in made:
        broker.users.remove_user(d)
    broker.reload()


@pytest.fixture
def boards(request):
    """Factory for virtual boards; all are powered off and their worlds ended after the test, their
    consoles shown on failure."""
    from provisioning.virtual import VirtualBoard

    made: list[VirtualBoard] = []

    def make(root: Path, config: dict, creds: dict, **kw) -> VirtualBoard:
        vb = VirtualBoard.create(root, config, creds, **kw)
        made.append(vb)
        return vb

    yield make
    for vb in made:
        vb.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for vb in made:
            print(f"\n==== console of {vb.root.name} ({vb.runtime}) ====\n{vb.tail(60)}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """`postgres_long`: a test whose PostgreSQL run adds little over SQLite's runs in `make test-long`."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("postgres_long") and params.get("db_url") == "postgres":
            item.add_marker(pytest.mark.long)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


class RunningFleet:
    """The fleet service (ingest + API) running in a thread of the test process."""

    def __init__(self, settings, engine):
        import asyncio
        import threading

        self.settings = settings
        self.engine = engine
        self.api = f"http://{settings.api_host}:{settings.api_port}"
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        from fleet.service import serve

        async def main():
            ready = asyncio.Event()
            task = asyncio.create_task(serve(self.settings, self._stop, ready))
            await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            self._loop.run_until_complete(main())
        except BaseException as e:  # reported by start()/stop()
            self._error = e
            self._ready.set()

    def start(self) -> RunningFleet:
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._error:
            raise self._error


@pytest.fixture
def fleet_service(db_url, broker):
    """Factory: start the real fleet service on `db_url` against the session broker."""
    from fleet.broker import free_port
    from fleet.db import make_engine, upgrade
    from fleet.settings import Settings

    running: list[RunningFleet] = []
    # One ingest session per test, kept across restarts within it (a persistent session's queue
    # is what the restart tests are about), and never shared with another test's.
    client_id = f"maille-ingest-{uuid.uuid4().hex[:8]}"
    engine = make_engine(db_url)
    upgrade(engine)

    def start(on: LocalBroker | None = None, **over) -> RunningFleet:
        """Start a fleet service, on the session broker or the test's own (`on`)."""
        over.setdefault("ingest_client_id", client_id)
        settings = Settings(
            database_url=db_url, mqtt_url=(on or broker).fleet_url, api_port=free_port(), **over
        )
        f = RunningFleet(settings, engine).start()
        running.append(f)
        return f

    start.engine = engine
    yield start
    for f in running:
        f.stop()
    engine.dispose()
