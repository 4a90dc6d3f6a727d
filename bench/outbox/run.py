"""Outbox cost on the node: flash writes per hour (online, slow fleet, offline) and RAM per reading.

Runs the firmware's own Outbox under the unix-port `micropython` with a simulated clock, one
simulated hour per case, against the baseline of a store-and-forward that writes every reading to
flash (what a naive outbox does). Prints one JSON line; details go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisioning.tree import FIRMWARE  # noqa: E402
from provisioning.virtual import micropython_executable  # noqa: E402

SCRIPT = r"""
import sys, gc, json
sys.path.insert(0, %(app)r)
from node.outbox import Outbox
from node import codec

INTERVAL_MS = %(interval_ms)d
HOUR_MS = 3600 * 1000
now = [0]
def clock():
    return now[0]

def payload(seq):
    records = [("temperature", "Cel", 21.37), ("humidity", "%%RH", 48.12), ("co2", "ppm", 612)]
    return codec.telemetry(seq, 1795686126 + seq * 10, records)

def run(case, watermark_every_ms, link_up):
    ob = Outbox(case, clock=clock)
    seq = 0
    next_mark = watermark_every_ms
    t = 0
    while t < HOUR_MS:
        ob.put(seq, payload(seq), link_up)
        if link_up:
            while ob.next_unsent() is not None:
                ob.mark_sent(ob.next_unsent()[0])
        seq += 1
        t += INTERVAL_MS
        now[0] = t
        if link_up and watermark_every_ms and t >= next_mark:
            ob.release(seq - 1)
            next_mark += watermark_every_ms
        ob.maintain()
    return {"readings": seq, "flash_writes": ob.flash_writes, "on_flash": ob.flash_count}

out = {}
out["online"] = run("o1", 1000, True)          # the fleet confirms within a second
out["online_slow_fleet"] = run("o2", 120000, True)  # watermark only every 2 minutes
out["offline"] = run("o3", 0, False)

# RAM per buffered reading: the payload's bytes in the outbox's buffer (allocated once, with the
# outbox) and its entry, with the buffer filled with typical telemetry
N = %(ram_n)d
gc.collect()
ob = Outbox("ram", ram_bytes=N * len(payload(0)) + 64, clock=clock)
gc.collect()
before = gc.mem_alloc()
for s in range(N):
    ob.put(s, payload(s), True)
gc.collect()
out["ram_bytes_per_reading"] = (ob.ram_used + gc.mem_alloc() - before) / N
out["payload_bytes"] = len(payload(1))
print(json.dumps(out))
"""


def measure(interval_s: float, ram_n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        code = SCRIPT % {"app": str(FIRMWARE / "app"), "interval_ms": int(interval_s * 1000), "ram_n": ram_n}
        r = subprocess.run(
            [micropython_executable(), "-c", code], cwd=d, capture_output=True, text=True, check=True
        )
        return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    ap.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    args = ap.parse_args()
    ram_n = 50 if args.quick else 500
    interval = 60.0 if args.quick else args.interval
    m = measure(interval, ram_n)
    per_hour = m["online"]["readings"]  # the baseline writes each reading to flash once
    summary = {
        "bench": "outbox",
        "interval_s": interval,
        "readings_per_hour": per_hour,
        "flash_writes_per_hour_online": m["online"]["flash_writes"],
        "flash_writes_per_hour_online_slow_fleet": m["online_slow_fleet"]["flash_writes"],
        "flash_writes_per_hour_offline": m["offline"]["flash_writes"],
        "baseline_writes_per_hour": per_hour,
        "ratio_online_vs_baseline": m["online"]["flash_writes"] / per_hour,
        "ratio_offline_vs_baseline": m["offline"]["flash_writes"] / per_hour,
        "ram_bytes_per_reading_unix_port": round(m["ram_bytes_per_reading"], 1),
        "payload_bytes": m["payload_bytes"],
        "runtime": "micropython unix port (objects about 2x an ESP32's)",
    }
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"outbox-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"summary": summary, "raw": m})
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
