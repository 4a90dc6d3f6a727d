"""bench/firmware/run.py --quick runs and prints its JSON summary (no figures are judged here, only that
the heap's parts account for the whole app, and that the ROMFS configuration executes code in place).
The whole-node bisection on virtual boards runs only without --quick."""

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
    # The parts add up to the app's heap (the simulated world runs in its own process: none of it).
    parts = summary["heap_parts_kb"]
    assert all(parts[k] > 0 for k in ("node_core", "sensing")), parts
    assert abs(parts["node_core"] + parts["sensing"] - summary["mpy"]["app"]) < 2, (parts, summary["mpy"])
    # ROMFS: the app was imported from the image, whose bytecode stays out of the heap (a 20 KB
    # function costs its size when loaded from a file, next to nothing from the image).
    rom = summary["romfs"]
    assert rom["app_file"].startswith("/rom/"), rom
    check = rom["in_place_check"]
    assert check["heap_from_file_bytes"] > check["mpy_bytes"] * 0.9, check
    assert check["heap_from_rom_bytes"] < check["mpy_bytes"] * 0.05, check
    assert 0 < rom["app"] < summary["mpy"]["app"], (rom, summary["mpy"])
    assert rom["smallest_heap_kb"] > 0, rom
