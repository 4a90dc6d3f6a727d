"""Remote configuration, commands and safe mode on a real `micropython` node, seen over MQTT.

The fleet's side of this (API, stored acks) is tested in tests/fleet; here the test plays the fleet
with the fleet's broker account, so the node's behaviour is checked on the wire.
"""

from __future__ import annotations

import json
import time

from tests.helpers import Observer, node_config


def json_of(payload: bytes) -> dict:
    return json.loads(payload)


def start_node(boards, broker, device_credentials, tmp_path, **cfg):
    device, pw = device_credentials()
    topics = [f"maille/v1/{device}/{ch}" for ch in ("ack", "state", "telemetry", "health")]
    obs = Observer(broker, topics)
    vb = boards(tmp_path / device, node_config(device, broker, **cfg), {"user": device, "password": pw})
    vb.start()
    obs.wait(lambda t, p: t.endswith("/state") and json_of(p)["state"] == "online")
    return device, vb, obs


def test_config_is_applied_within_5s_persisted_and_a_bad_one_refused(
    boards, broker, device_credentials, tmp_path
):
    device, vb, obs = start_node(boards, broker, device_credentials, tmp_path, sample_interval_s=1)
    try:
        obs.wait(lambda t, p: t.endswith("/telemetry"))
        good = {"version": 1, "settings": {"sample_interval_s": 0.2, "calibration": {"temperature": 100}}}
        obs.publish(f"maille/v1/{device}/config", json.dumps(good), retain=True)
        _, ack, _ = obs.wait(lambda t, p: t.endswith("/ack") and json_of(p)["id"] == "config-1", timeout=5)
        assert json_of(ack) == {"id": "config-1", "cmd": "config", "ok": True, "result": {"version": 1}}
        mark = len(obs.drain())
        obs.wait(lambda t, p: t.endswith("/telemetry") and temperature(p) > 100, timeout=5)

        bad = {"version": 2, "settings": {"sample_interval_s": -1}}
        obs.publish(f"maille/v1/{device}/config", json.dumps(bad), retain=True)
        _, ack, _ = obs.wait(lambda t, p: t.endswith("/ack") and not json_of(p)["ok"], timeout=5)
        assert json_of(ack)["error"] == "sample_interval_s must be a number > 0 and <= 86400"
        # the old configuration stays: readings keep coming at 0.2 s with the calibration offset
        time.sleep(1.5)
        recent = [temperature(p) for t, p, _ in obs.drain()[mark:] if t.endswith("/telemetry")]
        assert len(recent) >= 5 and all(v > 100 for v in recent)

        vb.reboot()  # the applied version survives a reboot and is reported in the birth message
        _, birth, _ = obs.wait(
            lambda t, p: (
                t.endswith("/state") and json_of(p).get("boot") == 2 and json_of(p)["state"] == "online"
            )
        )
        assert json_of(birth)["config"] == 1
    finally:
        obs.publish(f"maille/v1/{device}/config", b"", retain=True)
        obs.close()


def temperature(payload: bytes) -> float:
    return next(e["v"] for e in json_of(payload)["e"] if e["n"] == "temperature")


def command(obs: Observer, device: str, ident: str, cmd: str, args: dict | None = None, timeout=5) -> dict:
    msg = {"id": ident, "cmd": cmd, **({"args": args} if args is not None else {})}
    obs.publish(f"maille/v1/{device}/cmd", json.dumps(msg))
    _, ack, _ = obs.wait(lambda t, p: t.endswith("/ack") and json_of(p)["id"] == ident, timeout=timeout)
    return json_of(ack)


def test_each_command_is_acknowledged_with_its_result(boards, broker, device_credentials, tmp_path):
    device, vb, obs = start_node(boards, broker, device_credentials, tmp_path)
    try:
        assert command(obs, device, "c1", "identify", {"seconds": 3}) == {
            "id": "c1",
            "cmd": "identify",
            "ok": True,
            "result": {"seconds": 3},
        }
        vb.wait_for(r"identify: LED blinking for 3 s")
        assert command(obs, device, "c2", "log_level", {"level": "warning"})["result"] == {"level": "warning"}
        assert command(obs, device, "c3", "log_level", {"level": "loud"})["error"].startswith("level must be")
        assert command(obs, device, "c4", "time_sync")["ok"] is True
        assert "waiting" in command(obs, device, "c5", "flush_outbox")["result"]
        ack = command(obs, device, "c6", "co2_recalibrate", {"ppm": 420})
        assert ack["ok"] is False and ack["error"] == "no CO2 sensor on this node"
        ack = command(obs, device, "c7", "co2_recalibrate", {"ppm": 12})
        assert ack["error"] == "ppm must be an integer between 300 and 5000"
        obs.publish(f"maille/v1/{device}/cmd", json.dumps({"id": "c8", "cmd": "self_destruct"}))
        _, ack, _ = obs.wait(
            lambda t, p: t.endswith("/ack") and "self_destruct" in json_of(p).get("error", "")
        )
        assert json_of(ack)["ok"] is False

        assert command(obs, device, "c9", "reboot") == {
            "id": "c9",
            "cmd": "reboot",
            "ok": True,
            "result": {"rebooting": True},
        }
        _, birth, _ = obs.wait(
            lambda t, p: (
                t.endswith("/state") and json_of(p).get("boot") == 2 and json_of(p)["state"] == "online"
            ),
            timeout=15,
        )
        assert json_of(birth)["reset"] == "soft"
    finally:
        obs.close()


def test_crash_loop_ends_in_safe_mode_and_a_fix_brings_it_back(boards, broker, device_credentials, tmp_path):
    device, pw = device_credentials()
    obs = Observer(broker, [f"maille/v1/{device}/{ch}" for ch in ("ack", "state", "health", "telemetry")])
    try:
        vb = boards(tmp_path / device, node_config(device, broker), {"user": device, "password": pw})
        sensors = vb.root / "app" / "a" / "node" / "sensors" / "__init__.py"
        good = sensors.read_text()
        sensors.write_text(good + "\nraise RuntimeError('broken sensor package')\n")
        vb.start()
        _, birth, _ = obs.wait(
            lambda t, p: t.endswith("/state") and json_of(p).get("mode") == "safe", timeout=30
        )
        assert json_of(birth)["boot"] == 4  # three crashes, then safe mode
        assert vb.console().count("RuntimeError: broken sensor package") == 3
        vb.wait_for(r"SAFE MODE after 3 crashes")
        _, health, _ = obs.wait(lambda t, p: t.endswith("/health"), timeout=10)
        assert json_of(health)["mode"] == "safe"
        assert not [m for m in obs.drain() if m[0].endswith("/telemetry")]

        sensors.write_text(good)  # the fix (an OTA install does this through a new slot)
        obs.publish(f"maille/v1/{device}/config", json.dumps({"version": 1, "settings": {}}), retain=True)
        obs.wait(lambda t, p: t.endswith("/ack") and json_of(p)["id"] == "config-1" and json_of(p)["ok"])
        _, birth, _ = obs.wait(
            lambda t, p: t.endswith("/state") and json_of(p).get("mode") == "normal", timeout=20
        )
        obs.wait(lambda t, p: t.endswith("/telemetry"), timeout=10)
    finally:
        obs.publish(f"maille/v1/{device}/config", b"", retain=True)
        obs.close()


def test_power_cuts_while_offline_are_not_crashes(boards, tmp_path):
    """A building losing power and network together must not switch its nodes' sensors off."""
    cfg = {
        "device_id": "dev-powercut",
        "mqtt": {"host": "127.0.0.1", "port": 1, "keepalive": 5},
        "sample_interval_s": 0.1,
    }
    vb = boards(tmp_path / "vb", cfg, {"user": "x", "password": "y"}).start()
    for boot in range(2, 7):
        vb.wait_for(r"cannot reach broker", 10, after=len(vb.console()))
        vb.reboot("power_on")
        vb.wait_for(rf"node dev-powercut fw \S+ boot {boot} ", 10)
    assert "SAFE MODE" not in vb.console()
