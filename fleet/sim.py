"""`maille sim`: many virtual nodes in one CPython process, running the firmware's own code.

Each virtual node is the firmware's `node.app.Node` (sampling, outbox, the link loop with its backoff,
the one publishing task, the `stored` watermark handling), its `node.mqtt.MQTTClient` and its
`node.codec`, imported from `firmware/app` as the boards run them. Only what a single process cannot
share is adapted, in `SimNode`:

- flash: `Node` keeps its files relative to the working directory (one board = one process = one
  folder). `SimNode` builds the node with the working directory set to its own folder (the
  constructor is synchronous, so nothing else runs meanwhile) and then points the outbox and the
  sequence counter, the two parts that touch flash later, at that folder by absolute path;
- the "boot is healthy" mark (`data/crashes`) is written to the node's folder by absolute path;
- for benchmarks, each node remembers when it queued each sequence number and, when the fleet's
  `stored` watermark comes back, how long that took (publish-to-committed latency, end to end).

`blast()` is the other load shape: device connections that publish pre-made telemetry through the
firmware's `MQTTClient` as fast as the broker takes it (several QoS 1 publishes in flight per
connection), for the ingest benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import typer

FIRMWARE_APP = Path(__file__).resolve().parent.parent / "firmware" / "app"
if str(FIRMWARE_APP) not in sys.path:
    sys.path.insert(0, str(FIRMWARE_APP))

from node import codec, store  # noqa: E402  (the firmware package, from firmware/app)
from node.app import Node  # noqa: E402
from node.mqtt import MQTTClient  # noqa: E402

DEFAULT_PREFIX = "sim"
DEFAULT_SITE = "sim"


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit (one socket per node); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def device_ids(n: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(n)]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of `values`, None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def rss_bytes(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- one virtual node ------------------------------------------------------------------------------


@dataclass
class Latencies:
    """Queue-to-stored times (seconds) of every message the fleet confirmed, across nodes."""

    values: list[float] = field(default_factory=list)
    confirmed: int = 0


class SimNode(Node):
    """The firmware's `Node` with its flash in its own folder (see the module's docstring)."""

    def __init__(self, cfg: dict, root: Path, latencies: Latencies | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = str(root)
        here = os.getcwd()
        os.chdir(root)  # Node.__init__ is synchronous: no other task runs while we are in here
        try:
            super().__init__(cfg)
        finally:
            os.chdir(here)
        self.seq.path = self.root + "/" + self.seq.path
        self.outbox.root = self.root + "/" + self.outbox.root
        self.latencies = latencies
        self.sent_at: dict[int, float] = {}  # seq -> when queued while online (time.monotonic)
        self.connected_at: float | None = None
        self.queued = 0
        self.stopping = False

    def new_client(self):
        if self.stopping:  # the sim is stopping: end link_loop instead of reconnecting
            raise asyncio.CancelledError
        return super().new_client()

    def queue(self, seq, bt, records):
        super().queue(seq, bt, records)
        self.queued += 1
        if self.latencies is not None and self.client is not None and self.client.connected:
            self.sent_at[seq] = time.monotonic()

    def on_stored(self, payload, retained=False):
        super().on_stored(payload, retained)
        if self.latencies is None or not self.sent_at:
            return
        upto = codec.stored_seq(payload)
        if upto is None:
            return
        now = time.monotonic()
        for seq in [s for s in self.sent_at if s <= upto]:
            self.latencies.values.append(now - self.sent_at.pop(seq))
            self.latencies.confirmed += 1

    async def online(self, client):
        self.connected_at = time.monotonic()
        await super().online(client)

    def check_healthy(self):
        # Node.check_healthy writes `data/crashes` relative to the working directory.
        if self.healthy or self.safe or self.online_since is None or self.outbox.stored_upto < 0:
            return
        from node.port import port

        if port.ticks_diff(port.ticks_ms(), self.online_since) >= 20000:
            store.write_atomic(self.root + "/data/crashes", "0")
            self.healthy = True


def node_config(
    device_id: str,
    host: str,
    port: int,
    password: str,
    *,
    interval: float,
    seed: int = 1,
    health_interval: float = 60,
    keepalive: int = 30,
) -> dict:
    """A node's merged config.json + creds.json, as the firmware's `config.load()` returns it."""
    return {
        "device_id": device_id,
        "board": "sim",
        "sample_interval_s": interval,
        "health_interval_s": health_interval,
        "log_level": "warning",  # "sent seq=…" at info level for every message would flood stdout
        "mqtt": {
            "host": host,
            "port": port,
            "keepalive": keepalive,
            "tls": False,
            "user": device_id,
            "password": password,
        },
        "sensors": [{"type": "sim_climate", "seed": seed}],
    }


# --- a fleet of virtual nodes ----------------------------------------------------------------------


@dataclass
class SimOptions:
    nodes: int
    host: str
    port: int
    password: str | Callable[[str], str]
    interval: float = 10.0
    duration: float | None = None
    ramp: float = 500.0  # nodes started per second
    prefix: str = DEFAULT_PREFIX
    workdir: Path | None = None
    health_interval: float = 60.0
    keepalive: int = 30
    measure_latency: bool = True


@dataclass
class SimReport:
    nodes: int
    connected: int = 0
    connect_s: float | None = None  # first node started -> all connected
    queued: int = 0
    confirmed: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    reconnects: int = 0
    loop_lag_p50_ms: float | None = None  # the sim's own event-loop lag (its share of the latency)
    loop_lag_p99_ms: float | None = None
    rss_bytes: int | None = None
    nofile_limit: int | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Sim:
    """Runs `SimOptions.nodes` SimNodes in this event loop; `run()` returns a SimReport."""

    def __init__(self, opts: SimOptions):
        self.opts = opts
        self.ids = device_ids(opts.nodes, opts.prefix)
        self.latencies = Latencies()
        self.nodes: list[SimNode] = []
        self.tasks: list[asyncio.Task] = []
        self.all_connected = asyncio.Event()
        self.started_at: float | None = None
        self.connect_s: float | None = None
        self.measure_from = 0  # index into latencies.values where the measured window starts
        self.lags: list[float] = []
        self.lags_from = 0
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _root(self) -> Path:
        if self.opts.workdir is not None:
            return Path(self.opts.workdir)
        self._tmp = tempfile.TemporaryDirectory(prefix="maille-sim-")
        return Path(self._tmp.name)

    async def start(self) -> None:
        o = self.opts
        root = self._root() / "nodes"
        password = o.password if callable(o.password) else (lambda _id, p=o.password: p)
        lat = self.latencies if o.measure_latency else None
        for i, did in enumerate(self.ids):
            cfg = node_config(
                did,
                o.host,
                o.port,
                password(did),
                interval=o.interval,
                seed=i + 1,
                health_interval=o.health_interval,
                keepalive=o.keepalive,
            )
            self.nodes.append(SimNode(cfg, root / did, lat))
        self.started_at = time.monotonic()
        # Connect pacing: `ramp` nodes per second, so 10,000 CONNECTs (and their PBKDF2 checks in the
        # broker) do not arrive at once; it also spreads the nodes' sampling phases over the interval.
        step = 1.0 / o.ramp if o.ramp > 0 else 0.0
        watcher = asyncio.create_task(self._watch_connected())
        self.tasks.append(asyncio.create_task(self._watch_lag()))
        for i, node in enumerate(self.nodes):
            self.tasks.append(asyncio.create_task(node.run()))
            target = self.started_at + (i + 1) * step
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 200 == 199:
                await asyncio.sleep(0)
        self.tasks.append(watcher)

    async def _watch_connected(self) -> None:
        while True:
            n = sum(1 for nd in self.nodes if nd.client is not None and nd.client.connected)
            if len(self.nodes) == self.opts.nodes and n == self.opts.nodes:
                self.connect_s = time.monotonic() - self.started_at
                self.all_connected.set()
                return
            await asyncio.sleep(0.1)

    async def _watch_lag(self, every: float = 0.1) -> None:
        """How late this process's event loop runs a 100 ms timer: the sim's own share of latency."""
        while True:
            t = time.monotonic()
            await asyncio.sleep(every)
            self.lags.append(time.monotonic() - t - every)

    def connected(self) -> int:
        return sum(1 for nd in self.nodes if nd.client is not None and nd.client.connected)

    def reset_latencies(self) -> None:
        """Measure from now on (e.g. once every node is connected)."""
        self.measure_from = len(self.latencies.values)
        self.lags_from = len(self.lags)

    def report(self) -> SimReport:
        vals = [v * 1000 for v in self.latencies.values[self.measure_from :]]
        lags = [v * 1000 for v in self.lags[self.lags_from :]]
        return SimReport(
            nodes=self.opts.nodes,
            connected=self.connected(),
            connect_s=self.connect_s,
            queued=sum(nd.queued for nd in self.nodes),
            confirmed=len(vals),
            latency_p50_ms=percentile(vals, 50),
            latency_p99_ms=percentile(vals, 99),
            latency_max_ms=max(vals) if vals else None,
            reconnects=sum(nd.reconnects for nd in self.nodes),
            loop_lag_p50_ms=percentile(lags, 50),
            loop_lag_p99_ms=percentile(lags, 99),
            rss_bytes=rss_bytes(),
            nofile_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )

    async def stop(self) -> None:
        for nd in self.nodes:
            nd.stopping = True  # no reconnect from here on (see SimNode.new_client)
        # Python 3.11's wait_for can swallow a cancellation that lands as its inner wait finishes
        # (fixed in 3.12), so a node's loop may survive one cancel: cancel until every task is done.
        pending = [t for t in self.tasks if not t.done()]
        for _ in range(20):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, still = await asyncio.wait(pending, timeout=1.0)
            pending = list(still)
        # Cancelled nodes still hold their connection: close cleanly (the broker drops the will).
        clients = [nd.client for nd in self.nodes if nd.client is not None and nd.client.connected]
        for i in range(0, len(clients), 500):
            await asyncio.gather(*(c.disconnect() for c in clients[i : i + 500]), return_exceptions=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    async def run(self, stop: asyncio.Event | None = None, connect_timeout: float = 600) -> SimReport:
        """Start every node (paced by `ramp`), wait until all are connected (at most `connect_timeout`
        seconds), then run for `duration` seconds (or until `stop`) and stop them. Latencies count
        only the messages queued once every node was connected: the steady state, not the ramp."""
        raise_nofile_limit()
        stop = stop or asyncio.Event()
        waits: list[asyncio.Task] = []
        try:
            await self.start()
            stopping = asyncio.create_task(stop.wait())
            waits.append(stopping)
            connected = asyncio.create_task(self.all_connected.wait())
            waits.append(connected)
            await asyncio.wait(
                [stopping, connected], timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            self.reset_latencies()
            if not stopping.done():
                if self.opts.duration is not None:
                    await asyncio.wait([stopping], timeout=self.opts.duration)
                else:
                    await stopping
            return self.report()
        finally:
            for w in waits:
                w.cancel()
            await self.stop()


# --- broker users and registry -----------------------------------------------------------------


def add_broker_users(broker, ids: Iterable[str], password: str) -> None:
    """Create the devices' users on a `fleet.broker.LocalBroker` (one password for all) and reload it."""
    for did in ids:
        broker.users.set_user(did, password)
    broker.reload()


def register_devices(database_url: str, ids: list[str], site: str = DEFAULT_SITE, rooms: int = 100) -> int:
    """Register the devices in the fleet's database (migrating it first); returns how many were new."""
    from sqlmodel import Session, col, select

    from fleet.db import make_engine, upgrade
    from fleet.models import Device
    from fleet.registry import register_device

    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with Session(engine) as session:
            known = (
                set(session.exec(select(Device.id).where(col(Device.id).in_(ids))).all())
                if len(ids) <= 30000
                else set(session.exec(select(Device.id)).all())
            )
            new = [d for d in ids if d not in known]
            for i, did in enumerate(new):
                register_device(session, did, site, f"room-{i % rooms:03d}", board="sim")
        return len(new)
    finally:
        engine.dispose()


# --- blast: device connections publishing as fast as the broker takes it ---------------------------


@dataclass
class BlastReport:
    devices: int
    messages: int
    first_publish: float  # time.time()
    last_puback: float  # time.time()
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.messages / max(1e-9, self.last_puback - self.first_publish)


async def connect_clients(
    host: str, port: int, creds: list[tuple[str, str]], ramp: float = 2000.0, keepalive: int = 60
) -> list[MQTTClient]:
    """Connect one firmware MQTTClient per device (persistent session, LWT as the node sets it)."""
    clients = []
    for i, (did, password) in enumerate(creds):
        c = MQTTClient(
            did,
            host,
            port,
            user=did,
            password=password,
            keepalive=keepalive,
            clean=False,
            will=(codec.topic(did, "state"), codec.state_offline(), 1, True),
        )
        await c.connect()
        clients.append(c)
        if ramp and i % 50 == 49:
            await asyncio.sleep(50 / ramp)
    return clients


def telemetry_payloads(per_device: int, seq_start: int = 0, bt: int | None = None) -> list[bytes]:
    """`per_device` telemetry payloads made by the firmware's codec (2 readings each)."""
    bt = int(time.time()) if bt is None else bt
    return [
        codec.telemetry(
            seq,
            bt,
            [("temperature", "Cel", 20.0 + (seq % 100) / 10), ("humidity", "%RH", 40.0 + (seq % 50) / 5)],
        )
        for seq in range(seq_start, seq_start + per_device)
    ]


async def blast(
    clients: list[MQTTClient], per_device: int, window: int = 32, seq_start: int = 0
) -> BlastReport:
    """Each client publishes `per_device` QoS 1 telemetry messages, `window` in flight at a time."""
    payloads = telemetry_payloads(per_device, seq_start)
    errors = 0

    async def one_device(c: MQTTClient) -> None:
        nonlocal errors
        topic = codec.topic(c.client_id, "telemetry")
        it = iter(payloads)

        async def worker() -> None:
            nonlocal errors
            for p in it:
                try:
                    await c.publish(topic, p, qos=1, timeout=30, retries=2)
                except Exception:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(window)))

    first = time.time()
    await asyncio.gather(*(one_device(c) for c in clients))
    return BlastReport(len(clients), len(clients) * per_device, first, time.time(), errors)


# --- the command ---------------------------------------------------------------------------------

sim_app = typer.Typer(help="Run many virtual nodes (the firmware's own code) in one process.")


def _broker_from_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise typer.BadParameter("the broker URL must look like mqtt://host:port (TLS is not simulated)")
    return parts.hostname, parts.port or 1883


@sim_app.command()
def sim(
    nodes: int = typer.Option(100, "--nodes", min=1, help="How many virtual nodes."),
    broker: str = typer.Option(
        None,
        "--broker",
        help="Connect to this broker (mqtt://host:port); its users for the nodes must exist with "
        "--device-password. Default: start a private Mosquitto and create the users.",
    ),
    interval: float = typer.Option(10.0, "--interval", min=0.01, help="Seconds between samples, per node."),
    duration: float = typer.Option(
        None,
        "--duration",
        min=0.1,
        help="Run this many seconds once every node is connected, then stop (default: until Ctrl-C).",
    ),
    database: str = typer.Option(
        None, "--database", help="Register the nodes in this fleet database (SQLAlchemy URL)."
    ),
    ingest: bool = typer.Option(
        None,
        "--ingest/--no-ingest",
        help="Run the fleet's ingest in this process (default: on when the sim starts its own broker).",
    ),
    device_password: str = typer.Option(None, "--device-password", help="The nodes' broker password."),
    ramp: float = typer.Option(500.0, "--ramp", min=1, help="Nodes started per second."),
    prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", help="Device ids are <prefix>-00000, …"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep node folders (and the private broker) here."),
    json_out: Path = typer.Option(None, "--json-out", help="Also write the report to this file."),
    connect_timeout: float = typer.Option(
        600, "--connect-timeout", help="Longest wait for all nodes to connect."
    ),
) -> None:
    """Start NODES virtual nodes running the firmware's code; print a JSON report when they stop."""
    report = asyncio.run(
        run_sim_command(
            nodes,
            broker,
            interval,
            duration,
            database,
            ingest,
            device_password,
            ramp,
            prefix,
            workdir,
            connect_timeout,
            json_out,
        )
    )
    typer.echo(json.dumps(report))


async def run_sim_command(
    nodes,
    broker_url,
    interval,
    duration,
    database,
    ingest,
    device_password,
    ramp,
    prefix,
    workdir,
    connect_timeout=600,
    json_out=None,
) -> dict:
    import signal

    from fleet.broker import LocalBroker, new_password

    raise_nofile_limit()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="maille-sim-")
        workdir = Path(tmp.name)
    workdir = Path(workdir)
    ids = device_ids(nodes, prefix)
    local = None
    try:
        if broker_url:
            host, port = _broker_from_url(broker_url)
            if device_password is None:
                raise typer.BadParameter("--device-password is required with --broker")
            password = device_password
        else:
            local = LocalBroker(workdir / "broker").start()
            host, port = local.host, local.port
            password = device_password or new_password()
            add_broker_users(local, ids, password)
        if ingest is None:
            ingest = local is not None
        if ingest and database is None:
            database = f"sqlite:///{workdir / 'maille.db'}"
        if database:
            await asyncio.to_thread(register_devices, database, ids)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ingest_task = None
        ing = None
        if ingest:
            if local is None:
                raise typer.BadParameter("--ingest needs the private broker (run `maille serve` otherwise)")
            from fleet.db import make_engine
            from fleet.ingest import Ingest

            engine = make_engine(database)
            ing = Ingest(engine, local.fleet_url, client_id="maille-ingest-sim")
            ingest_stop = asyncio.Event()
            ingest_task = asyncio.create_task(ing.run(ingest_stop))
            await asyncio.wait_for(ing.subscribed.wait(), 30)
        sim = Sim(
            SimOptions(
                nodes=nodes,
                host=host,
                port=port,
                password=password,
                interval=interval,
                duration=duration,
                ramp=ramp,
                prefix=prefix,
                workdir=workdir,
            )
        )
        report = (await sim.run(stop, connect_timeout)).as_dict()
        if ingest_task is not None:
            ingest_stop.set()
            await ingest_task
            report["stored_messages"] = ing.stats.stored_messages
        if json_out:
            json_out.write_text(json.dumps(report) + "\n")
        return report
    finally:
        if local is not None:
            local.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sim_app()
