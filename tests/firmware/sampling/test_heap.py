"""The whole node app, every sensor of the classroom board, through an accelerated day in the heap
the issue allows (micropython -X heapsize=128k, about 64 KB on an ESP32): no MemoryError, and
readings keep flowing."""

import pytest

from tests.test_building import board_config


# In `make test-long` only: it spends 30 s showing a known, measured shortfall (see the reason).
@pytest.mark.long
@pytest.mark.xfail(
    strict=True,
    reason="not met: bench/firmware (200 cycles, no link) needs 168 KB from source / 176 KB as .mpy; "
    "loaded 129 KB, of which the simulated world (node.sim code 22-29 KB + building 2.8 + fakes ~2) is "
    "27-34 KB and the node proper ~86 KB + the interpreter; live peak 139 KB, and 30-40 KB of "
    "fragmentation margin. Without the world the probe would still need ~134-149 KB, + ~7 KB of link. "
    "At 128k the board dies importing node.sim.building in build_sensors. See bench/README.md, firmware",
)
def test_classroom_node_runs_a_day_in_128k(broker, device_credentials, boards, tmp_path):
    device, pw = device_credentials()
    cfg = board_config(
        "sim-classroom",
        device,
        broker,
        sample_interval_s=0.25,
        report_interval_s=0.5,
        health_interval_s=2,
        outbox_ram=10,
    )
    cfg["building"]["speed"] = 1800  # a whole day in 48 s
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}, heapsize="128k").start()
    vb.wait_for(r"sent seq=5\b", timeout=30)
    n = len(vb.sent_seqs())
    vb.wait_for(rf"sent seq={n + 80}\b", timeout=60)  # still flowing after a good part of the day
    assert "MemoryError" not in vb.console()
