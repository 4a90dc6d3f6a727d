"""bench/firmware/run.py --quick runs and prints its JSON summary (no figures are judged here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_firmware_bench_quick_prints_its_summary():
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "firmware" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for key in (
        "heap_peak_kb",
        "heap_peak_live_kb",
        "cycle_us",
        "cycle_vs_empty_loop",
        "noise_16k_realtime_x",
        "noise_48k_realtime_x",
    ):
        assert key in summary, key
