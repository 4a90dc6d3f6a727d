"""Firmware bench on the unix port: the node app's heap high-water mark under -X heapsize, CPU time
per reporting cycle against an empty loop on the same interpreter, and the noise pipeline's
throughput against the real-time rates it must sustain. One JSON line on stdout; details in
bench/results/firmware-<time>.json.

    python bench/firmware/run.py [--quick] [--heapsize 256k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from provisioning.tree import FIRMWARE  # noqa: E402
from provisioning.virtual import micropython_executable  # noqa: E402

PROBE = Path(__file__).with_name("probe.py")


def classroom_config() -> dict:
    b = tomllib.loads((ROOT / "boards" / "sim-classroom.toml").read_text())
    return {
        "device_id": "bench-node",
        "mqtt": {"host": "127.0.0.1", "port": 1, "keepalive": 30},
        "sample_interval_s": 1,
        "health_interval_s": 60,
        "board": "sim-classroom",
        "outbox_ram": 10,
        "sensors": [dict(spec, name=key) for key, spec in b["sensors"].items()],
        "building": dict(b["building"]),
    }


def probe(heapsize: str, cycles: int, noise_s: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "config.json"
        cfg.write_text(json.dumps(classroom_config()))
        prelude = f"import sys\nsys.path.insert(0, {str(FIRMWARE / 'app')!r})\n"
        code = prelude + f"ARGS = {['probe', str(cfg), str(cycles), str(noise_s)]!r}\n"
        code += PROBE.read_text()
        cmd = [micropython_executable(), "-X", f"heapsize={heapsize}", "-c", code]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"probe failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few cycles, short noise runs (smoke test)")
    ap.add_argument("--heapsize", default="1024k")
    args = ap.parse_args()
    cycles, noise_s = (5, 0.2) if args.quick else (200, 2.0)
    p = probe(args.heapsize, cycles, noise_s)
    summary = {
        "bench": "firmware",
        "runtime": "micropython-unix",
        "heapsize": args.heapsize,
        "heap_app_kb": round(p["heap_app_bytes"] / 1024, 1),
        "heap_peak_kb": round(p["heap_peak_bytes"] / 1024, 1),
        "heap_loaded_kb": round(p["heap_loaded_bytes"] / 1024, 1),  # absolute: base + app
        "heap_peak_live_kb": round(p["heap_peak_live_bytes"] / 1024, 1),  # absolute
        "heap_growth_kb": round((p["heap_peak_live_bytes"] - p["heap_loaded_bytes"]) / 1024, 1),
        "cycle_us": p["cycle_us"],
        "cycle_vs_empty_loop": p["cycle_vs_empty_loop"],
        "noise_16k_realtime_x": round(p["noise_samples_per_s"]["16000"] / 16000, 2),
        "noise_48k_realtime_x": round(p["noise_samples_per_s"]["48000"] / 48000, 2),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    details = out / f"firmware-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary["details"] = str(details.relative_to(ROOT))
    details.write_text(
        json.dumps({"summary": summary, "probe": p, "cycles": cycles, "noise_s": noise_s}, indent=1)
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
