"""The benchmarks run: each one, on tiny inputs (--quick), exits 0 and prints its JSON summary line.

Never a time assertion here (see ../shared/testing.md): figures come from `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "ingest": {"bench", "messages", "devices", "results", "sqlite_ingest_rate", "sqlite_ratio", "details"},
    "scale": {
        "bench",
        "nodes",
        "connected",
        "connect_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "sim_rss_mb",
        "mosquitto_rss_mb",
        "details",
    },
    "query": {"bench", "rows", "results", "details"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bench_runs_quick(name):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name / "run.py"), "--quick", "--db", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one summary line on stdout, got: {proc.stdout[-2000:]}"
    summary = json.loads(lines[0])
    assert EXPECTED[name] <= summary.keys(), sorted(EXPECTED[name] - summary.keys())
    assert summary["bench"] == name
    details = ROOT / summary["details"]
    assert details.exists()
    assert json.loads(details.read_text())["summary"] == summary
    details.unlink()  # results of a smoke run are not figures


def test_sim_api_runs_firmware_nodes(tmp_path):
    """`maille sim` drives the firmware's Node and MQTTClient; the fleet stores what they send."""
    import asyncio

    from fleet.sim import run_sim_command

    report = asyncio.run(
        run_sim_command(5, None, 0.5, 2.0, None, True, None, 200.0, "smoke", tmp_path / "work")
    )
    assert report["connected"] == 5
    assert report["stored_messages"] > 0
    node_mod = sys.modules["node.app"]
    assert Path(node_mod.__file__).resolve().is_relative_to(ROOT / "firmware" / "app")


@pytest.mark.long  # ≈30 s: 3 MicroPython nodes, the fleet service, a release built twice
def test_ota_bench_rolls_out_to_virtual_nodes_quick():
    """bench/ota --quick: the verify and bytes figures, then a rollout to 3 real `micropython` nodes
    through `maille serve` with its reboot baseline, all in the one summary line."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ota" / "run.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = json.loads(line)
    assert summary["bench"] == "ota" and summary["verify_ms"] > 0 and summary["delta_one_file_bytes"] > 0
    assert (summary["rollout_status"], summary["rollout_confirmed"], summary["rollout_nodes"]) == (
        "completed",
        3,
        3,
    )
    assert summary["bundle_bytes_served"] > 3 * summary["delta_one_file_bytes"]
    assert summary["fleet_peak_rss_mb"] > 0 and summary["baseline_reboot_wall_s"] > 0
    assert len(summary["rollout_wave_s"]) == len(summary["rollout_wave_sizes"]) == 2
    details = ROOT / summary["details"]
    assert json.loads(details.read_text())["summary"] == summary
    details.unlink()
