"""A virtual board's world process (provisioning/world.py): the simulated building and sensor chips
run beside the node, which keeps only its real drivers and node.simlink's proxies in its heap."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from provisioning.virtual import VirtualBoard, micropython_executable
from provisioning.world import PORT_FILE
from tests.helpers import Observer, wait_until
from tests.test_building import board_config

CHANNELS = {"co2", "temperature", "humidity", "pressure", "noise_laeq", "door_open", "people_in", "energy"}

# The node's own build_sensors() and sampler for 3 s, then what it read and what it has loaded.
NODE = """
import json, sys, time
sys.path.insert(0, "app/a")
from node import config, simlink
from node.app import Node
simlink.WAIT_MS = %d
n = Node(config.load())
n.build_sensors()
seen = set()
end = time.time() + 3
while time.time() < end:
    n.sampler.poll()
    r = n.sampler.tick()
    if r:
        seen.update([name for name, u, v in r])
    time.sleep(0.05)
print(json.dumps({"channels": sorted(seen), "faults": n.sampler.faults,
                  "modules": sorted([m for m in sys.modules if m.startswith("node.")])}))
"""


def classroom(tmp_path, broker) -> VirtualBoard:
    cfg = board_config("sim-classroom", "node-world", broker, sample_interval_s=0.25, report_interval_s=0.5)
    return VirtualBoard.create(tmp_path / "board", cfg, {"user": "node-world", "password": "x"})


def run_node(vb: VirtualBoard, runtime: str = "micropython", wait_ms: int = 10000) -> dict:
    exe = micropython_executable() if runtime == "micropython" else sys.executable
    r = subprocess.run([exe, "-c", NODE % wait_ms], cwd=vb.root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture
def world():
    """Start the world process of a board folder (as VirtualBoard.start does); ended after the test."""
    procs = []

    def start(vb: VirtualBoard) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "provisioning.world", str(vb.root)])
        procs.append(p)
        wait_until(lambda: (vb.root / PORT_FILE).exists(), 10, what="world.port")
        return p

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_the_node_reads_every_classroom_sensor_from_the_world_and_loads_no_simulation(
    runtime, broker, world, tmp_path
):
    vb = classroom(tmp_path, broker)
    assert json.loads((vb.root / "config.json").read_text())["world"] is True
    world(vb)
    out = run_node(vb, runtime)
    assert CHANNELS <= set(out["channels"]) and out["faults"] == [], out
    assert "node.simlink" in out["modules"], out["modules"]
    assert not [m for m in out["modules"] if m == "node.sim" or m.startswith("node.sim.")], out["modules"]
    assert (vb.root / "building.log").read_text().strip()  # the building's truth, kept by the world


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_without_its_world_a_node_keeps_running_and_its_simulated_sensors_are_gone(runtime, broker, tmp_path):
    vb = classroom(tmp_path, broker)
    out = run_node(vb, runtime, wait_ms=300)
    # As with a cut cable: the I2C chips NACK, the microphone is silent, the GPIO inputs see no edge.
    assert out["faults"] == [
        "co2: scd4x: no answer at 0x62",
        "climate: sht4x: no answer at 0x44",
        "baro: bme280: no answer at 0x76",
        "noise: no audio samples",
    ], out
    assert not [m for m in out["modules"] if m == "node.sim" or m.startswith("node.sim.")], out["modules"]


def truth(vb: VirtualBoard) -> list[tuple[int, float]]:
    """building.log: (Unix s, true Wh) per simulated minute."""
    rows = [line.split() for line in (vb.root / "building.log").read_text().splitlines() if line.strip()]
    return [(int(r[0]), float(r[1])) for r in rows]


def test_the_building_goes_on_through_a_power_cut_of_the_node(broker, device_credentials, boards, tmp_path):
    device, pw = device_credentials()
    obs = Observer(broker, [f"maille/v1/{device}/telemetry"])
    cfg = board_config("sim-classroom", device, broker, sample_interval_s=0.25, report_interval_s=0.5)
    cfg["building"]["start_h"] = 6.0  # before school: a steady 60 W, one S0 pulse a simulated minute
    for spec in cfg["sensors"]:
        if spec["type"] == "s0":
            spec["persist_wh"] = 1
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}).start()
    energy: dict[int, tuple[int, float]] = {}  # seq -> (bt, Wh)

    def reports(n: int, above: int = -1) -> None:
        def enough() -> bool:
            for _, payload, _ in obs.drain():
                m = json.loads(payload)
                for e in m["e"]:
                    if e["n"] == "energy":
                        energy[m["seq"]] = (m["bt"], e["v"])
            return len([s for s in energy if s > above]) >= n

        wait_until(enough, 30, interval=0.2, what=f"{n} energy reports")

    try:
        reports(8)
        world_pid = vb.world.pid
        vb.power_cut()
        time.sleep(3)  # 18 simulated minutes without the node: the building goes on
        reports(0)
        before = max(energy)  # the last report before the cut (a reboot re-sends unconfirmed ones)
        vb.start()
        reports(8, above=before)
        assert vb.world.pid == world_pid  # the same world: it is the building, not the board
    finally:
        obs.close()

    rows = truth(vb)
    assert all(0 < b - a <= 60 for (a, _), (b, _) in zip(rows, rows[1:], strict=False))  # one day, no gap
    assert rows[-1][0] - rows[0][0] > 20 * 60
    after = [energy[s] for s in sorted(energy) if s > before]
    assert after[0][1] >= energy[before][1] - 1  # the total goes on from where it was
    bt, wh = after[-1]
    true_wh = max(w for t, w in rows if t <= bt)
    assert abs(wh - true_wh) <= 4, (wh, true_wh)  # no pulse of the 18 minutes was lost

    vb.close()
    assert vb.world is None and not (vb.root / PORT_FILE).exists()
