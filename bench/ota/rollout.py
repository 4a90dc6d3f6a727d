"""A rollout to N virtual nodes (default 100): the real firmware under `micropython`, the real fleet
service (`maille serve`, its own process), a signed release published with `maille release publish`
and served by the fleet's bundle server class, a staged rollout through the API until every node
confirms.

Baseline, in the same run: the same N nodes **rebooting** (power cut, then all started again at
once) until each one's birth reaches the broker. Every update ends in exactly that — a reboot into
the new slot and a reconnection — and on this machine starting N MicroPython processes at once is the
dominant cost of the fleet's nodes, so the ratios say what the OTA (download, verify, install, trial,
confirm) and the staging (canary, waves, site cap, jitter, continuity gate) add over restarting the
fleet once. A raw-transfer baseline would not mean much: a one-file delta is ≈6 KB per node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from sqlmodel import Session, select

from bench.common import BenchBroker, fresh_database, log, rss_of
from fleet.auth import Role, create_token
from fleet.broker import FLEET_USER, free_port
from fleet.bundles import BundleHTTPServer
from fleet.db import make_engine, upgrade
from fleet.models import Channel, Device, RolloutTarget, RolloutWave
from fleet.registry import register_device
from provisioning import release
from provisioning.tree import FIRMWARE
from provisioning.virtual import VirtualBoard
from tests.helpers import wait_until

MAILLE = Path(sys.executable).with_name("maille")
BASE, NEW = "1.0.0", "1.1.0"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build_releases(work: Path) -> tuple[str, Path, Path]:
    """The release key, the base bundle and a one-file fix (node/codec.py changed), both signed."""
    keyfile, pub = release.generate_key(work / "release.pem")
    src = work / "src"
    shutil.copytree(FIRMWARE / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    bundles = {}
    for version in (BASE, NEW):
        if version == NEW:
            codec = src / "node" / "codec.py"
            codec.write_text(codec.read_text() + "\nCODEC_NOTE = 'fixed'\n")
        out = work / "releases" / version
        release.build(src, version, "host", out)
        release.sign(out, keyfile)
        bundles[version] = out
    return pub.read_text().strip(), bundles[BASE], bundles[NEW]


class Watch:
    """The fleet user's paho subscription to every node's `state`: when each birth arrived."""

    def __init__(self, broker: BenchBroker) -> None:
        self.births: dict[str, list[tuple[float, str]]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(FLEET_USER, broker.fleet_password)
        self.client.on_connect = lambda c, *_: c.subscribe("maille/v1/+/state", 1)
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _message(self, _c, _u, m) -> None:
        try:
            body = json.loads(m.payload)
        except ValueError:
            return
        if body.get("state") == "online":
            with self.lock:
                self.births.setdefault(m.topic.split("/")[2], []).append((time.monotonic(), body.get("fw")))

    def first_birth_after(self, device: str, t: float) -> float | None:
        with self.lock:
            return next((at for at, _ in self.births.get(device, []) if at >= t), None)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopping = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.peak = max(self.peak, rss_of(self.pid) or 0)


def start_in_batches(boards: list[VirtualBoard], batch: int, pause: float, how) -> dict[str, float]:
    """Start (or restart) the boards `batch` at a time; when each was started (monotonic)."""
    started = {}
    for i in range(0, len(boards), batch):
        for vb in boards[i : i + batch]:
            started[vb.root.name] = time.monotonic()
            how(vb)
        time.sleep(pause)
    return started


class RolloutBench:
    """The parts of one run (broker, database, fleet service, bundle server, boards), stopped by close()."""

    def __init__(self, args, work: Path, db_url: str) -> None:
        self.args, self.work, self.db_url = args, work, db_url
        self.n, self.sites = args.nodes, [f"bench-site-{i}" for i in range(min(args.sites, args.nodes))]
        self.broker = BenchBroker(work / "mosquitto", log_connections=False).start()
        self.engine = make_engine(db_url)
        upgrade(self.engine)
        self.boards: list[VirtualBoard] = []
        self.fleet: subprocess.Popen | None = None
        self.bundles: BundleHTTPServer | None = None
        self.watch: Watch | None = None

    def close(self) -> None:
        for vb in self.boards:
            vb.power_cut()
        if self.watch:
            self.watch.close()
        if self.fleet and self.fleet.poll() is None:
            self.fleet.terminate()
            try:
                self.fleet.wait(30)
            except subprocess.TimeoutExpired:
                self.fleet.kill()
        if self.bundles:
            self.bundles.stop()
        self.engine.dispose()
        self.broker.stop()

    # --- setting up ------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        a = self.args
        return {
            **os.environ,
            "MAILLE_SETTINGS_FILE": str(self.work / "none.toml"),
            "MAILLE_DATABASE_URL": self.db_url,
            "MAILLE_MQTT_URL": self.broker.fleet_url,
            "MAILLE_API_PORT": str(self.api_port),
            "MAILLE_INGEST_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "MAILLE_RELEASE_PUBLIC_KEY": self.pub,
            "MAILLE_BUNDLE_DIR": str(self.work / "store"),
            "MAILLE_BUNDLE_PORT": str(free_port()),  # the service's own server, idle: see start_fleet
            "MAILLE_BUNDLE_URL": self.bundles.url,
            "MAILLE_ROLLOUT_INTERVAL_S": str(a.rollout_interval),
        }

    def start_fleet(self, pub: str) -> httpx.Client:
        """`maille serve` in its own process (its RSS is measured). The bundles reach the nodes through
        a `fleet.bundles.BundleHTTPServer` of this process — the class the service runs, with the same
        throttles — so that the bytes it served can be read; the service's own one stays idle."""
        self.pub, self.api_port = pub, free_port()
        store = self.work / "store"
        store.mkdir()
        self.bundles = BundleHTTPServer(
            store, max_concurrent=self.args.bundle_max_concurrent, rate_bps=self.args.bundle_rate_bps
        ).start()
        log_file = open(self.work / "fleet.log", "wb")  # noqa: SIM115 (the child writes it until the end)
        self.fleet = subprocess.Popen(
            [str(MAILLE), "serve"], env=self.env(), stdout=log_file, stderr=subprocess.STDOUT
        )
        with Session(self.engine) as s:
            secret = create_token(s, "bench-ops", Role.operator)[1]
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )

        def up():
            if self.fleet.poll() is not None:
                raise RuntimeError(f"maille serve exited: {(self.work / 'fleet.log').read_text()[-2000:]}")
            try:
                return http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, 0.2, what="the fleet service's API")
        return http

    def publish(self, bundle: Path) -> None:
        done = subprocess.run(
            [str(MAILLE), "release", "publish", str(bundle)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"maille release publish: {done.stderr}")
        log(done.stdout.strip())

    def make_boards(self, base: Path) -> None:
        a = self.args
        with Session(self.engine) as s:
            for i in range(self.n):
                device, site = f"bench-{i:03d}", self.sites[i % len(self.sites)]
                register_device(s, device, site, f"r{i // len(self.sites):02d}", board="sim", who="bench")
                password = uuid.uuid4().hex
                self.broker.users.set_user(device, password)
                cfg = {
                    "device_id": device,
                    "site": site,
                    "room": "1.01",
                    "mqtt": {"host": self.broker.host, "port": self.broker.port, "keepalive": 30},
                    "sample_interval_s": a.sample_interval,
                    "health_interval_s": a.health_interval,
                    "sensors": [{"type": "sim_climate"}],
                    "ota": {"keys": [self.pub], "confirm_s": a.confirm_s, "trial_s": 300},
                }
                vb = VirtualBoard.create(
                    self.work / "boards" / device, cfg, {"user": device, "password": password},
                    heapsize=a.heap,
                )  # fmt: skip
                release.unpack(base, vb.root / "app" / "a")
                self.boards.append(vb)
        self.broker.reload()

    def ready(self) -> bool:
        """Every node online on the base release, its channels' cadence learned (the gate needs it)."""
        with Session(self.engine) as s:
            online = s.exec(select(Device.id).where(Device.status == "online", Device.fw == BASE)).all()
            learned = set(s.exec(select(Channel.device_id).where(Channel.interval_s.is_not(None))).all())
        return len(online) == self.n and len(learned) == self.n

    # --- measuring -------------------------------------------------------------------------------
    def start_nodes(self) -> float:
        t0 = time.monotonic()
        start_in_batches(self.boards, self.args.batch, self.args.batch_pause, lambda vb: vb.start())
        wait_until(self.ready, 120 + self.n * 3, 1.0, what="every node online with learned channels")
        return time.monotonic() - t0

    def reboot_baseline(self) -> dict:
        """Power-cut every node and start it again, all at once (no staging at all: the floor of a
        fleet restart on this machine); each one's time from its restart to its birth."""
        t0 = time.monotonic()
        started = start_in_batches(self.boards, self.n, 0, VirtualBoard.reboot)

        def births():
            got = {d: self.watch.first_birth_after(d, at) for d, at in started.items()}
            return got if all(got.values()) else None

        got = wait_until(births, 120 + self.n * 3, 0.5, what="every node's birth after its reboot")
        per_node = [got[d] - started[d] for d in started]
        return {"wall_s": max(got.values()) - t0, "per_node_s": per_node}

    def rollout(self, http: httpx.Client) -> dict:
        a = self.args
        spec = {
            "release": NEW,
            "name": "bench",
            "targets": {"sites": self.sites},
            "canary": a.canary,
            "waves": a.waves,
            "site_cap": a.site_cap,
            "start_jitter_s": a.jitter,
            "timeout_s": 600,
            "retries": 1,
            "gate_s": 120,
        }
        t0 = time.monotonic()
        made = http.post("/api/v1/rollouts", json=spec)
        made.raise_for_status()
        url = f"/api/v1/rollouts/{made.json()['id']}"
        last = [None]

        def ended():
            r = http.get(url).json()
            line = f"{r['status']} wave {r['wave']}: {r['counts']}"
            if line != last[0]:
                log(f"  {time.monotonic() - t0:6.1f} s  {line}")
                last[0] = line
            return r if r["status"] != "running" else None

        done = wait_until(ended, 600 + self.n * 20, 1.0, what="the rollout's end")
        wall = time.monotonic() - t0
        with Session(self.engine) as s:
            waves = s.exec(select(RolloutWave).where(RolloutWave.rollout_id == done["id"])).all()
            targets = s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == done["id"])).all()
        return {"spec": spec, "wall_s": wall, "result": done, "waves": waves, "targets": targets}


def run_rollout(args, work: Path, db: str = "sqlite") -> tuple[dict, dict]:
    """The rollout to `args.nodes` nodes and its reboot baseline; (summary fields, details)."""
    log(f"rollout: building and signing {BASE} and a one-file fix {NEW} (host arch)")
    pub, base, new = build_releases(work)
    with fresh_database(db, work) as url:
        b = RolloutBench(args, work, url)
        try:
            return _measure(b, args, pub, base, new)
        finally:
            b.close()


def _measure(b: RolloutBench, args, pub: str, base: Path, new: Path) -> tuple[dict, dict]:
    http = b.start_fleet(pub)
    rss = PeakRss(b.fleet.pid)
    rss.start()
    b.publish(new)
    b.make_boards(base)
    b.watch = Watch(b.broker)
    log(f"rollout: starting {b.n} nodes, {args.batch} at a time, {args.batch_pause:g} s apart")
    started_s = b.start_nodes()
    log(f"rollout: all online with learned channels in {started_s:.1f} s; baseline: rebooting them all")
    reboot = b.reboot_baseline()
    wait_until(b.ready, 60, 1.0, what="every node online again after the reboot")
    log(f"rollout: reboot baseline {reboot['wall_s']:.1f} s; rolling {NEW} out")
    sent_before = b.bundles.sent
    r = b.rollout(http)
    rss.stopping.set()
    http.close()
    result, waves, targets = r["result"], r["waves"], r["targets"]
    per_node = [
        (t.finished_at - t.offered_at).total_seconds()
        for t in targets
        if t.state == "confirmed" and t.offered_at
    ]
    wave_s = [
        round((w.finished_at - w.started_at).total_seconds(), 1) if w.finished_at and w.started_at else None
        for w in sorted(waves, key=lambda w: w.index)
    ]
    confirmed = result["counts"].get("confirmed", 0)
    gate_s = [
        round((w.finished_at - w.done_at).total_seconds(), 1) if w.finished_at and w.done_at else None
        for w in sorted(waves, key=lambda w: w.index)
    ]
    summary = {
        "rollout_nodes": b.n,
        "rollout_status": result["status"],
        "rollout_confirmed": confirmed,
        "rollout_wall_s": round(r["wall_s"], 1),
        "rollout_wave_sizes": [w["size"] for w in result["waves"]],
        "rollout_wave_s": wave_s,
        "rollout_gate_s": gate_s,
        "offer_to_confirmed_p50_s": round(percentile(per_node, 0.5) or 0, 1),
        "offer_to_confirmed_p99_s": round(percentile(per_node, 0.99) or 0, 1),
        "bundle_bytes_served": b.bundles.sent - sent_before,
        "bundle_peak_transfers": b.bundles.peak,
        "fleet_peak_rss_mb": round(rss.peak / 2**20, 1),
        "baseline_reboot_wall_s": round(reboot["wall_s"], 1),
        "baseline_reboot_p50_s": round(percentile(reboot["per_node_s"], 0.5), 1),
        "ratio_rollout_to_reboot_wall": round(r["wall_s"] / reboot["wall_s"], 1),
        "ratio_update_to_reboot_p50": round(
            (percentile(per_node, 0.5) or 0) / percentile(reboot["per_node_s"], 0.5), 1
        ),
        "rollout_settings": {
            **{k: r["spec"][k] for k in ("canary", "waves", "site_cap", "start_jitter_s")},
            "sites": len(b.sites),
            "bundle_max_concurrent": args.bundle_max_concurrent,
            "bundle_rate_bps": args.bundle_rate_bps,
            "rollout_interval_s": args.rollout_interval,
            "node_confirm_s": args.confirm_s,
            "node_sample_interval_s": args.sample_interval,
            "node_heap": args.heap,
        },
    }
    details = {
        "rollout": result,
        "waves": [w.model_dump(mode="json") for w in waves],
        "offer_to_confirmed_s": sorted(per_node),
        "reboot_per_node_s": sorted(reboot["per_node_s"]),
        "nodes_started_s": started_s,
    }
    return summary, details
