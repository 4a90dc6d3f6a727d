"""Ingest benchmark: Maille's ingest rate to committed rows against a bare paho-mqtt subscriber.

In one run, on one private Mosquitto: K device connections (the firmware's MQTTClient, see
fleet/sim.py), shared by P publishing processes (one process alone caps the offered rate), publish M
QoS 1 telemetry messages (2 readings each) as fast as the broker takes them.
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
              [--publishers P] [--profile] [--quick]
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
    shipped_inflight,
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


def one_run(kind: str, inflight: int | None, mode: str, a, run_no: int, profile_to: Path | None) -> dict:
    """One measurement. `live`: ingest and the bare subscriber receive while the publishers publish.
    `backlog`: the publishers first fill both receivers' persistent sessions at the broker, then both
    receivers connect at once and drain it: their rates with the publishers out of the way."""
    from sqlalchemy import create_engine

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

        def start(*args: str) -> Proc:
            procs.append(Proc(list(args)))
            return procs[-1]

        ingest_args = ["ingest", "--db", url, "--mqtt", broker.fleet_url, "--client-id", "bench-ingest"]
        bare_args = ["bare", "--mqtt", broker.fleet_url, "--client-id", "bench-bare", "--persistent"]
        bare_args += ["--timeout", str(a.timeout)]
        spy = None
        try:
            ids = device_ids(a.devices, "bench")
            add_broker_users(broker, ids, PASSWORD)
            register_devices(url, ids, site="bench")
            if mode == "live":
                ingest = start(*ingest_args)
                ingest.wait_ready()
                bare = start(*bare_args, "--expect", str(m))
                bare.wait_ready()
            else:  # leave both sessions subscribed at the broker, and go
                away = start(*ingest_args)
                away.wait_ready()
                away.send("stop")
                away.result()
                start(*bare_args, "--expect", "0").result()
            pubs = [start(*publisher_args(broker, a, per_device, i)) for i in range(a.publishers)]
            for pub in pubs:
                pub.wait_ready()
            mosq_cpu0 = proc_cpu_seconds(broker.proc.pid)
            if mode == "live":
                spy = profile(ingest, profile_to)
                t_go = time.time()
            for pub in pubs:
                pub.send("go")
            pub_res = merge_publishers([pub.result() for pub in pubs])
            if mode == "backlog":  # every message is queued for both sessions: let them drain it
                t_go = time.time()
                ingest = start(*ingest_args)
                bare = start(*bare_args, "--expect", str(m))
                spy = profile(ingest, profile_to)
            engine = create_engine(normalize_url(url))
            done_at, count = wait_for_rows(engine, m * READINGS_PER_MESSAGE, a.stall)
            engine.dispose()
            mosq_cpu = (proc_cpu_seconds(broker.proc.pid) or 0) - (mosq_cpu0 or 0)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
            bare_res = bare.result(timeout=a.timeout)
            ingest.send("stop")
            ing_res = ingest.result()
        finally:
            for p in procs:
                p.kill()
            broker.stop()
    first = pub_res["first_publish"]
    if mode == "live":  # from the first publish, for both
        bare_from, ingest_from = first, first
    else:  # from each one's own (re)connection
        bare_from, ingest_from = bare_res["connected_at"], ing_res["started"]
    bare_rate = bare_res["received"] / (bare_res["last_rx"] - bare_from) if bare_res["last_rx"] else 0.0
    ingest_rate = m / (done_at - ingest_from) if done_at else 0.0
    publish_rate = m / (pub_res["last_puback"] - first)
    r = {
        "db": kind,
        "mode": mode,
        "inflight": inflight if inflight is not None else shipped_inflight(),
        "run": run_no,
        "messages": m,
        "devices": a.devices,
        "publishers": a.publishers,
        "publish_rate": round(publish_rate),
        "bare_rate": round(bare_rate),
        "bare_received": bare_res["received"],
        "ingest_rate": round(ingest_rate),
        "ratio": round(ingest_rate / bare_rate, 3) if bare_rate else None,
        "rows": count,
        "complete": done_at is not None,
        "ingest_stats": ing_res,
        "ingest_cpu_us_per_message": round(ing_res["cpu_s"] / m * 1e6, 1) if ing_res.get("cpu_s") else None,
        "cpu_s": {
            "ingest": ing_res.get("cpu_s"),
            "bare": bare_res.get("cpu_s"),
            "publishers": pub_res.get("cpu_s"),
            "mosquitto": mosq_cpu,
        },
        "wall_s": (done_at or time.time()) - ingest_from,
        "go_to_first_publish_s": first - t_go if mode == "live" else None,
        "publish_errors": pub_res["errors"],
    }
    log(
        f"  {kind} {mode} inflight={r['inflight']} run {run_no}: publish {r['publish_rate']}/s, "
        f"bare {r['bare_rate']}/s, ingest {r['ingest_rate']}/s, ratio {r['ratio']}, "
        f"ingest {r['ingest_cpu_us_per_message']} µs CPU/message, cpu {r['cpu_s']}"
    )
    return r


def publisher_args(broker, a, per_device: int, part: int) -> list[str]:
    return [
        "publish",
        *("--host", broker.host, "--port", str(broker.port), "--password", PASSWORD),
        *("--devices", str(a.devices), "--per-device", str(per_device), "--window", str(a.window)),
        *("--part", str(part), "--parts", str(a.publishers)),
    ]


def profile(proc: Proc, to: Path | None) -> subprocess.Popen | None:
    """py-spy on `proc`, sampling only what holds the GIL (the interpreter is what bounds ingest)."""
    if to is None:
        return None
    spy = subprocess.Popen(
        [find_pyspy(), "record", "--pid", str(proc.p.pid), "--format", "raw", "--rate", "200"]
        + ["--threads", "--gil", "--output", str(to), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return spy


def wait_for_rows(engine, target: int, stall: float) -> tuple[float | None, int]:
    """Poll `SELECT count(*) FROM reading` every 20 ms: (time it reached `target` or None, last count)."""
    from sqlalchemy import text

    count, last_progress, last_count = 0, time.monotonic(), -1
    with engine.connect() as conn:
        while True:
            count = conn.execute(text("SELECT count(*) FROM reading")).scalar_one()
            conn.rollback()  # a fresh snapshot for the next poll
            now = time.time()
            if count >= target:
                return now, count
            if count != last_count:
                last_count, last_progress = count, time.monotonic()
            elif time.monotonic() - last_progress > stall:
                log(f"  ingest stalled at {count}/{target} rows")
                return None, count
            time.sleep(0.02)


def merge_publishers(results: list[dict]) -> dict:
    """The publishers as one: from the first publish of any to the last PUBACK of all."""
    return {
        "first_publish": min(r["first_publish"] for r in results),
        "last_puback": max(r["last_puback"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
    }


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
        default="1000",
        help="broker max_inflight_messages values to compare (1000 = shipped config, 100 = the old one)",
    )
    p.add_argument("--window", type=int, default=16, help="QoS 1 publishes in flight per device connection")
    p.add_argument(
        "--publishers", type=int, default=2, help="publishing processes (one alone caps the offered rate)"
    )
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--stall", type=float, default=20, help="give up when no row was added for this long")
    p.add_argument("--profile", action="store_true", help="py-spy the ingest process in the last run")
    p.add_argument(
        "--mode",
        default="live,backlog",
        help="live: receive while the publishers publish; backlog: drain what they queued first",
    )
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    a = p.parse_args()
    if a.quick:
        a.messages, a.devices, a.runs, a.inflight, a.publishers = 400, 4, 1, "1000", 1
        a.db = "sqlite" if a.db == "both" else a.db
    kinds = ["sqlite", "postgres"] if a.db == "both" else [a.db]
    skipped = []
    if "postgres" in kinds and not postgres_available():
        kinds.remove("postgres")
        skipped.append("postgres (not reachable: set MAILLE_BENCH_POSTGRES_URL)")
        log("postgres not reachable: skipped")
    inflights = [int(x) for x in a.inflight.split(",")]
    modes = a.mode.split(",")
    cases = [(kind, mode, inflight) for kind in kinds for mode in modes for inflight in inflights]
    runs, profiles = [], {}
    for kind, mode, inflight in cases:
        for n in range(a.runs):
            prof = None
            if a.profile and n == a.runs - 1 and find_pyspy():
                RESULTS.mkdir(parents=True, exist_ok=True)
                prof = RESULTS / f"ingest-profile-{kind}-{mode}-{inflight}-{int(time.time())}.txt"
            runs.append(one_run(kind, inflight, mode, a, n + 1, prof))
            if prof is not None and prof.exists():
                profiles[f"{kind}/{mode}/inflight={inflight}"] = {"raw": str(prof), **summarize_profile(prof)}
    summary: dict = {
        "messages": runs[0]["messages"] if runs else 0,
        "devices": a.devices,
        "runs": a.runs,
        "cores": machine()["cores"],
        "results": {},
    }
    for kind, mode, inflight in cases:
        rs = [r for r in runs if (r["db"], r["mode"], r["inflight"]) == (kind, mode, inflight)]
        summary["results"][f"{kind}/{mode}/inflight={inflight}"] = {
            "ingest_rate": median([r["ingest_rate"] for r in rs]),
            "bare_rate": median([r["bare_rate"] for r in rs]),
            "publish_rate": median([r["publish_rate"] for r in rs]),
            "ratio": median([r["ratio"] for r in rs]),
            "ingest_cpu_us_per_message": median([r["ingest_cpu_us_per_message"] for r in rs]),
            "complete": all(r["complete"] for r in rs),
        }
    for mode in modes:  # the headline: SQLite at the shipped broker config, live (else the first mode)
        sq = summary["results"].get(f"sqlite/{mode}/inflight={inflights[-1]}")
        if sq:
            summary[f"sqlite_{mode}_ingest_rate"] = sq["ingest_rate"]
            summary[f"sqlite_{mode}_ratio"] = sq["ratio"]
            if mode == "live" or "sqlite_ratio" not in summary:
                summary["sqlite_ingest_rate"], summary["sqlite_ratio"] = sq["ingest_rate"], sq["ratio"]
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
