"""A running node (virtual board, both runtimes) whose sensor disappears or sends bad CRCs mid-run:
the channel drops out of telemetry, health names the fault, the rest keeps being published."""

import json

import pytest

from tests.helpers import Observer, node_config

SENSORS = [
    {"type": "scd4x", "name": "co2", "sim": {}, "channels": ["co2"]},
    {"type": "sht4x", "name": "climate", "sim": {}},
]


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_node_flags_a_failing_sensor_and_keeps_publishing_the_rest(
    runtime, broker, device_credentials, boards, tmp_path
):
    device, pw = device_credentials()
    obs = Observer(broker, [f"maille/v1/{device}/telemetry", f"maille/v1/{device}/health"])
    cfg = node_config(device, broker, sensors=SENSORS, sample_interval_s=0.3, health_interval_s=0.6)
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}, runtime=runtime).start()
    try:

        def telemetry(names):
            def match(topic, payload):
                return topic.endswith("/telemetry") and {e["n"] for e in json.loads(payload)["e"]} == names

            return match

        def health(pred):
            return lambda t, p: t.endswith("/health") and pred(json.loads(p)["faults"])

        def fresh():  # only what the node publishes from now on counts
            obs.drain()
            obs.seen.clear()

        obs.wait(telemetry({"co2", "temperature", "humidity"}), 30)
        fresh()
        (vb.root / "sim-fault-co2").write_text("gone")
        obs.wait(telemetry({"temperature", "humidity"}))
        obs.wait(health(lambda f: f == ["co2: scd4x: no answer at 0x62"]))

        fresh()
        (vb.root / "sim-fault-climate").write_text("crc")
        obs.wait(health(lambda f: "climate: sht4x: crc error" in f))
        fresh()
        (vb.root / "sim-fault-co2").unlink()
        obs.wait(telemetry({"co2"}))  # the CO2 sensor is back, the climate one still failing

        fresh()
        (vb.root / "sim-fault-climate").unlink()
        obs.wait(telemetry({"co2", "temperature", "humidity"}))
        obs.wait(health(lambda f: f == []), 10)
        assert vb.running and "Traceback" not in vb.console()
    finally:
        obs.close()
