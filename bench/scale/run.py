"""Scale benchmark: `maille sim` with 10,000 nodes on one Mosquitto, the fleet's ingest storing.

Processes: Mosquitto (the fleet's config; open-file limit raised for it), Maille's ingest on a fresh
database (bench/ingest/worker.py, as the fleet service runs it), and one `maille sim` process running
every node (the firmware's Node + MQTTClient, fleet/sim.py), each node sampling once per `--interval`.

Reported:
- connect time: first node started -> every node connected (the sim paces starts at `--ramp`/s);
- memory: peak RSS of the sim process and of mosquitto (sampled every second), per node too;
- publish-to-committed latency, p50/p99: from the moment a node queues a reading (it is published at
  once) to the moment the fleet's `stored` watermark covering it reaches that node — the fleet
  publishes it after the commit, so this is end to end (node -> broker -> ingest -> DB commit ->
  broker -> node). Only readings queued once every node is connected count.

Usage: run.py [--nodes 10000] [--interval 10] [--duration 60] [--ramp 500] [--db sqlite|postgres] [--quick]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (  # noqa: E402
    PYTHON,
    RESULTS,
    ROOT,
    BenchBroker,
    finish,
    fresh_database,
    log,
    machine,
    shipped_inflight,
    source,
)
from bench.common import rss_of as rss  # noqa: E402

WORKER = str(ROOT / "bench" / "ingest" / "worker.py")
PASSWORD = "bench-sim-password"


class PeakRSS(threading.Thread):
    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss(pid) or 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between a node's messages")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds once all are connected")
    p.add_argument("--ramp", type=float, default=500.0, help="nodes started per second")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument(
        "--inflight",
        type=int,
        default=None,
        help="broker max_inflight_messages (default: the shipped value; see bench/README.md)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the ingest process while the sim runs")
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    a = p.parse_args()
    if a.quick:
        a.nodes, a.interval, a.duration, a.ramp = 20, 1.0, 3.0, 200.0
    from fleet.sim import add_broker_users, device_ids, register_devices

    ids = device_ids(a.nodes, "sim")
    with (
        tempfile.TemporaryDirectory(prefix="maille-bench-scale-") as tmp,
        fresh_database(a.db, Path(tmp)) as url,
    ):
        tmp = Path(tmp)
        broker = BenchBroker(tmp / "broker", max_inflight=a.inflight, log_connections=False).start()
        procs: list[subprocess.Popen] = []
        try:
            t0 = time.monotonic()
            add_broker_users(broker, ids, PASSWORD)
            register_devices(url, ids, site="scale", rooms=max(1, a.nodes // 10))
            setup_s = time.monotonic() - t0
            log(f"  {a.nodes} users and devices set up in {setup_s:.1f} s")
            ingest = subprocess.Popen(
                [PYTHON, WORKER, "ingest", "--db", url, "--mqtt", broker.fleet_url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(ingest)
            if ingest.stdout.readline().strip() != "ready":
                raise RuntimeError("ingest did not start")
            out = tmp / "sim.json"
            sim = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "fleet.sim",
                    "--nodes",
                    str(a.nodes),
                    "--broker",
                    f"mqtt://{broker.host}:{broker.port}",
                    "--device-password",
                    PASSWORD,
                    "--interval",
                    str(a.interval),
                    "--duration",
                    str(a.duration),
                    "--ramp",
                    str(a.ramp),
                    "--no-ingest",
                    "--workdir",
                    str(tmp / "nodes"),
                    "--json-out",
                    str(out),
                ],
                cwd=str(tmp),
                stdout=subprocess.DEVNULL,
                env=_env(),
            )
            procs.append(sim)
            peaks = PeakRSS({"sim": sim.pid, "mosquitto": broker.proc.pid, "ingest": ingest.pid})
            peaks.start()
            spy = prof = None
            if a.profile:
                from bench.ingest.run import find_pyspy

                if find_pyspy():
                    prof = RESULTS / f"scale-ingest-profile-{int(time.time())}.txt"
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        [
                            find_pyspy(),
                            "record",
                            "--pid",
                            str(ingest.pid),
                            "--format",
                            "raw",
                            "--rate",
                            "100",
                            "--threads",
                            "--output",
                            str(prof),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            # The sim writes its report before closing its connections; give that 60 s, no more.
            deadline = time.monotonic() + a.duration + a.nodes / a.ramp + 900
            while sim.poll() is None and not out.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            peaks.stop.set()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            try:
                sim.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("  the sim did not exit within 60 s of its report: killed")
                sim.kill()
                sim.wait()
            if not out.exists():
                raise RuntimeError(f"sim failed (exit {sim.returncode})")
            report = json.loads(out.read_text())
            ingest.stdin.write("stop\n")
            ingest.stdin.flush()
            ing_out, _ = ingest.communicate(timeout=60)
            ing_stats = json.loads([ln for ln in ing_out.splitlines() if ln.startswith("{")][-1])
        finally:
            for pr in procs:
                if pr.poll() is None:
                    pr.kill()
                    pr.wait()
            mosq_rss_end = rss(broker.proc.pid) if broker.proc else None
            broker.stop()
    mb = 1 / (1024 * 1024)
    summary = {
        "nodes": a.nodes,
        "connected": report["connected"],
        "connect_s": _r(report["connect_s"]),
        "latency_p50_ms": _r(report["latency_p50_ms"]),
        "latency_p99_ms": _r(report["latency_p99_ms"]),
        "sim_loop_lag_p50_ms": _r(report.get("loop_lag_p50_ms")),
        "sim_loop_lag_p99_ms": _r(report.get("loop_lag_p99_ms")),
        "confirmed": report["confirmed"],
        "sim_rss_mb": _r(peaks.peak["sim"] * mb),
        "mosquitto_rss_mb": _r(peaks.peak["mosquitto"] * mb),
        "sim_kb_per_node": _r(peaks.peak["sim"] / 1024 / a.nodes),
        "interval_s": a.interval,
        "duration_s": a.duration,
        "db": a.db,
        "inflight": a.inflight or shipped_inflight(),
        "cores": machine()["cores"],
    }
    details = {
        "machine": machine(),
        "source": source(),
        "options": vars(a),
        "sim_report": report,
        "ingest_stats": ing_stats,
        "peak_rss_bytes": peaks.peak,
        "mosquitto_rss_at_end": mosq_rss_end,
        "setup_s": setup_s,
    }
    if prof is not None and prof.exists():
        from bench.ingest.run import summarize_profile

        details["ingest_profile"] = {"raw": str(prof), **summarize_profile(prof)}
    finish("scale", summary, details)
    if report["connected"] < a.nodes or not report["confirmed"]:
        sys.exit(1)


def _r(v, nd=1):
    return None if v is None else round(v, nd)


def _env() -> dict:
    import os

    env = dict(os.environ)
    paths = [p for p in (os.environ.get("MAILLE_BENCH_SRC"), str(ROOT)) if p]
    env["PYTHONPATH"] = ":".join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


if __name__ == "__main__":
    main()
