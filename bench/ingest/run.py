"""Ingest benchmark: Maille's ingest rate to committed rows against a bare paho-mqtt subscriber.

In one run, on one private Mosquitto: K device connections (the firmware's MQTTClient, see
fleet/sim.py) publish M QoS 1 telemetry messages (2 readings each) as fast as the broker takes them.
Subscribed to the same topics at the same time:
  (a) a bare paho-mqtt subscriber (QoS 1) counting messages: rate = M / (last received - first publish);
  (b) `fleet.ingest.Ingest` on a fresh database: rate = M / (all 2M rows counted in the database -
      first publish), the database polled every 20 ms.
ratio = (b) / (a). Each role is its own process (no shared GIL); all share the machine's cores.

Broker configurations: `inflight=1000` is the shipped QUEUE_SETTINGS (max_inflight_messages 1000,
100 until 2026-11-26); the others replace only that line (see README: with ack-after-commit, the
broker never has more than max_inflight unacknowledged messages out to ingest, so an ingest batch
can never hold more).

Usage: run.py [--messages M] [--devices K] [--runs N] [--db sqlite|postgres|both] [--inflight 100,1000]
              [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import (  # noqa: E402
    PYTHON,
    RESULTS,
    BenchBroker,
    finish,
    fresh_database,
    log,
    machine,
    median,
    postgres_available,
    source,
)

WORKER = str(Path(__file__).resolve().parent / "worker.py")
PASSWORD = "bench-device-password"
READINGS_PER_MESSAGE = 2


class Proc:
    """A worker process speaking lines: `ready`, then one JSON line at the end."""

    def __init__(self, args: list[str], wrap: list[str] | None = None):
        self.p = subprocess.Popen(
            (wrap or []) + [PYTHON, WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        line = self.p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker {self.p.args[2:4]} failed to start: {line!r}")

    def send(self, line: str = "go") -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def result(self, timeout: float = 120) -> dict:
        import json

        out, _ = self.p.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"worker {self.p.args[2:4]} gave no result (exit {self.p.returncode})")
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def shipped_inflight() -> int:
    import re

    from fleet.broker import QUEUE_SETTINGS

    return int(re.search(r"max_inflight_messages (\d+)", QUEUE_SETTINGS).group(1))


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def find_pyspy() -> str | None:
    import os

    return (
        os.environ.get("MAILLE_PYSPY")
        or shutil.which("py-spy")
        or ("/tmp/pyspy/bin/py-spy" if Path("/tmp/pyspy/bin/py-spy").exists() else None)
    )


def one_run(kind: str, inflight: int | None, a, run_no: int, profile_to: Path | None) -> dict:
    from sqlalchemy import create_engine, text

    from fleet.db import normalize_url
    from fleet.sim import add_broker_users, device_ids, register_devices

    per_device = max(1, a.messages // a.devices)
    m = per_device * a.devices
    with (
        tempfile.TemporaryDirectory(prefix="maille-bench-ingest-") as tmp,
        fresh_database(kind, Path(tmp)) as url,
    ):
        broker = BenchBroker(Path(tmp) / "broker", max_inflight=inflight).start()
        procs: list[Proc] = []
        spy = None
        try:
            ids = device_ids(a.devices, "bench")
            add_broker_users(broker, ids, PASSWORD)
            register_devices(url, ids, site="bench")
            ingest = Proc(["ingest", "--db", url, "--mqtt", broker.fleet_url])
            procs.append(ingest)
            ingest.wait_ready()
            bare = Proc(["bare", "--mqtt", broker.fleet_url, "--expect", str(m), "--timeout", str(a.timeout)])
            procs.append(bare)
            bare.wait_ready()
            pub = Proc(
                [
                    "publish",
                    "--host",
                    broker.host,
                    "--port",
                    str(broker.port),
                    "--password",
                    PASSWORD,
                    "--devices",
                    str(a.devices),
                    "--per-device",
                    str(per_device),
                    "--window",
                    str(a.window),
                ]
            )
            procs.append(pub)
            pub.wait_ready()
            if profile_to is not None:
                spy = subprocess.Popen(
                    [
                        find_pyspy(),
                        "record",
                        "--pid",
                        str(ingest.p.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--threads",
                        "--output",
                        str(profile_to),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            mosq_cpu0 = proc_cpu_seconds(broker.proc.pid)
            engine = create_engine(normalize_url(url))
            target = m * READINGS_PER_MESSAGE
            t_go = time.time()
            pub.send("go")
            done_at, count, last_progress, last_count = None, 0, time.monotonic(), -1
            with engine.connect() as conn:
                while True:
                    count = conn.execute(text("SELECT count(*) FROM reading")).scalar_one()
                    conn.rollback()  # a fresh snapshot for the next poll
                    now = time.time()
                    if count >= target:
                        done_at = now
                        break
                    if count != last_count:
                        last_count, last_progress = count, time.monotonic()
                    elif time.monotonic() - last_progress > a.stall:
                        log(f"  ingest stalled at {count}/{target} rows")
                        break
                    time.sleep(0.02)
            engine.dispose()
            mosq_cpu = (proc_cpu_seconds(broker.proc.pid) or 0) - (mosq_cpu0 or 0)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
            pub_res = pub.result()
            bare_res = bare.result(timeout=a.timeout)
            ingest.send("stop")
            ing_res = ingest.result()
        finally:
            for p in procs:
                p.kill()
            broker.stop()
    first = pub_res["first_publish"]
    bare_rate = bare_res["received"] / (bare_res["last_rx"] - first) if bare_res["last_rx"] else 0.0
    ingest_rate = m / (done_at - first) if done_at else 0.0
    publish_rate = m / (pub_res["last_puback"] - first)
    r = {
        "db": kind,
        "inflight": inflight if inflight is not None else shipped_inflight(),
        "run": run_no,
        "messages": m,
        "devices": a.devices,
        "publish_rate": round(publish_rate),
        "bare_rate": round(bare_rate),
        "bare_received": bare_res["received"],
        "ingest_rate": round(ingest_rate),
        "ratio": round(ingest_rate / bare_rate, 3) if bare_rate else None,
        "rows": count,
        "complete": done_at is not None,
        "ingest_stats": ing_res,
        "cpu_s": {
            "ingest": ing_res.get("cpu_s"),
            "bare": bare_res.get("cpu_s"),
            "publisher": pub_res.get("cpu_s"),
            "mosquitto": mosq_cpu,
        },
        "wall_s": (done_at or time.time()) - first,
        "go_to_first_publish_s": first - t_go,
        "publish_errors": pub_res["errors"],
    }
    log(
        f"  {kind} inflight={r['inflight']} run {run_no}: publish {r['publish_rate']}/s, "
        f"bare {r['bare_rate']}/s, ingest {r['ingest_rate']}/s, ratio {r['ratio']}, cpu {r['cpu_s']}"
    )
    return r


def summarize_profile(path: Path, top: int = 25) -> dict:
    """Own-time and cumulative share per function from py-spy's raw (collapsed) stacks."""
    from collections import Counter

    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            cum[f] += n
    share = lambda c: [(f, round(100 * v / total, 1)) for f, v in c.most_common(top)]  # noqa: E731
    return {"samples": total, "own_pct": share(own), "cumulative_pct": share(cum)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument(
        "--inflight",
        default="100,1000",
        help="broker max_inflight_messages values to compare (1000 = shipped config, 100 = the old one)",
    )
    p.add_argument("--window", type=int, default=16, help="QoS 1 publishes in flight per device connection")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--stall", type=float, default=20, help="give up when no row was added for this long")
    p.add_argument("--profile", action="store_true", help="py-spy the ingest process in the last run")
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    a = p.parse_args()
    if a.quick:
        a.messages, a.devices, a.runs, a.inflight = 400, 4, 1, "1000"
        a.db = "sqlite" if a.db == "both" else a.db
    kinds = ["sqlite", "postgres"] if a.db == "both" else [a.db]
    skipped = []
    if "postgres" in kinds and not postgres_available():
        kinds.remove("postgres")
        skipped.append("postgres (not reachable: set MAILLE_BENCH_POSTGRES_URL)")
        log("postgres not reachable: skipped")
    inflights = [int(x) for x in a.inflight.split(",")]
    runs, profiles = [], {}
    for kind in kinds:
        for inflight in inflights:
            for n in range(a.runs):
                prof = None
                if a.profile and n == a.runs - 1 and find_pyspy():
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    prof = RESULTS / f"ingest-profile-{kind}-{inflight}-{int(time.time())}.txt"
                runs.append(one_run(kind, inflight, a, n + 1, prof))
                if prof is not None and prof.exists():
                    profiles[f"{kind}/inflight={inflight}"] = {"raw": str(prof), **summarize_profile(prof)}
    summary: dict = {
        "messages": runs[0]["messages"] if runs else 0,
        "devices": a.devices,
        "runs": a.runs,
        "cores": machine()["cores"],
        "results": {},
    }
    for kind in kinds:
        for inflight in inflights:
            rs = [r for r in runs if r["db"] == kind and r["inflight"] == inflight]
            summary["results"][f"{kind}/inflight={inflight}"] = {
                "ingest_rate": median([r["ingest_rate"] for r in rs]),
                "bare_rate": median([r["bare_rate"] for r in rs]),
                "publish_rate": median([r["publish_rate"] for r in rs]),
                "ratio": median([r["ratio"] for r in rs]),
                "complete": all(r["complete"] for r in rs),
            }
    sq = summary["results"].get(f"sqlite/inflight={inflights[-1]}")
    if sq:
        summary["sqlite_ingest_rate"] = sq["ingest_rate"]
        summary["sqlite_ratio"] = sq["ratio"]
    summary["target"] = {"sqlite_ingest_rate": 20000, "ratio": 0.5}
    if skipped:
        summary["skipped"] = skipped
    finish(
        "ingest",
        summary,
        {"machine": machine(), "source": source(), "options": vars(a), "runs": runs, "profiles": profiles},
    )
    if not runs or not all(r["complete"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
