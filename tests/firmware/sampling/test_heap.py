"""The whole node app, every sensor of the classroom board, through an accelerated day in the heap
the issue allows (micropython -X heapsize=128k, about 64 KB on an ESP32): no MemoryError, no
reboot, and the day's reports made in order and kept in flash with every channel.

The board runs as an ESP32 would hold it: its app slot executed in place from a ROMFS image
(provisioning/romfs.py; bytecode stays in flash, out of the heap) and its sensor chips and building
outside the MCU (provisioning/world.py). From .py or .mpy files on the filesystem the same app needs
more heap: bench/firmware measures every configuration."""

import json

from tests.test_building import board_config, truth

CHANNELS = {"co2", "temperature", "humidity", "pressure", "noise_laeq", "noise_lamax", "door_open",
            "people_in", "people_out", "occupancy", "energy", "energy_delta", "power"}


def test_classroom_node_runs_a_day_in_128k(broker, device_credentials, boards, tmp_path):
    device, pw = device_credentials()
    cfg = board_config(
        "sim-classroom", device, broker, sample_interval_s=0.25, report_interval_s=0.5, health_interval_s=2
    )
    cfg["building"]["speed"] = 1800  # from 07:00 to 19:00 in 24 s
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}, heapsize="128k", rom=True).start()
    vb.wait_for(r"sent seq=5\b", timeout=30)

    def simulated_hour():
        rows = truth(vb.root) if (vb.root / "building.log").exists() else []
        return rows[-1][0] if rows else 0.0

    import time

    deadline = time.monotonic() + 90
    while simulated_hour() < 19.0:
        assert time.monotonic() < deadline, f"the simulated day stopped at {simulated_hour():.2f} h"
        time.sleep(0.5)
    vb.power_cut()

    console = vb.console()
    assert "loader: starting app slot a from ROM" in console
    assert "MemoryError" not in console and "Traceback" not in console
    assert "sensors: " not in console  # no sensor fault, not even one that came and went
    assert console.count("--- board start") == 1  # never reset
    sent = vb.sent_seqs()
    assert sent == list(range(len(sent))) and len(sent) > 40  # every report, in order
    reports = {seq: json.loads(p) for seq, p in vb.flash_outbox().items()}
    # No fleet confirms them, so they went to flash: all but the last few, still in RAM at the cut.
    assert sorted(reports) == sent[: len(reports)] and len(sent) - len(reports) <= 8
    last = reports[max(reports)]
    assert CHANNELS <= {e["n"] for e in last["e"]}  # every sensor still reporting at the end
    lessons = [r for r in reports.values() if any(e["n"] == "occupancy" and e["v"] > 0 for e in r["e"])]
    assert lessons  # the school day happened on this board's sensors
