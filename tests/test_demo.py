"""`maille demo` as a newcomer runs it: 3 virtual boards online in the API during the run, then a summary."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleet.broker import free_port


def test_demo_brings_three_nodes_online_and_stores_their_readings(tmp_path):
    port = free_port()
    summary_file = tmp_path / "s.json"
    maille = str(Path(sys.executable).with_name("maille"))
    cmd = [
        maille,
        "demo",
        "--nodes",
        "3",
        "--duration",
        "25",
        "--port",
        str(port),
        "--summary-json",
        summary_file,
    ]
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin:/usr/sbin", "HOME": str(tmp_path)},
    )
    try:
        token = None
        for line in proc.stdout:
            m = re.search(r"admin API token: (mt_\S+)", line)
            if m:
                token = m.group(1)
                break
        assert token, "the demo prints an admin token"
        headers = {"Authorization": f"Bearer {token}"}
        online = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(online) < 3:
            devices = httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", headers=headers).json()
            online = [d["id"] for d in devices if d["status"] == "online"]
            time.sleep(0.5)
        assert len(online) == 3, devices
        rest, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    summary = json.loads(summary_file.read_text())
    assert summary["nodes"] == 3 and summary["online"] == 3
    assert summary["readings_stored"] > 0
    assert summary["api"] == f"http://127.0.0.1:{port}" and summary["token"] == token
