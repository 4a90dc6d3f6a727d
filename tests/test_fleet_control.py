"""Remote config and commands end to end (issue 4, items 5 and 6, fleet side): the API and the
`maille device` CLI → Mosquitto → a virtual board running the firmware → its ack → the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.registry import register_device
from tests.helpers import node_config, wait_until

MAILLE = Path(sys.executable).with_name("maille")


def test_config_and_commands_reach_the_board_and_its_acks_reach_the_api(
    fleet_service, broker, device_credentials, boards, tmp_path
):
    fleet = fleet_service()
    device_id, password = device_credentials()
    with Session(fleet.engine) as s:
        register_device(s, device_id, "test-site", "1.01")
        secret = create_token(s, f"tech-{device_id}", Role.technician)[1]
    http = httpx.Client(base_url=fleet.api, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    board = boards(
        tmp_path / device_id, node_config(device_id, broker), {"user": device_id, "password": password}
    )
    board.start()
    wait_until(
        lambda: http.get(f"/api/v1/devices/{device_id}").json()["status"] == "online", 20, what="online"
    )
    config_url = f"/api/v1/devices/{device_id}/config"

    put = http.put(config_url, json={"sample_interval_s": 1.0, "log_level": "debug"})
    assert put.status_code == 202 and put.json()["desired_version"] == 1
    wait_until(lambda: http.get(config_url).json()["in_sync"], 5, what="config 1 applied within 5 s")
    assert http.get(config_url).json()["reported_version"] == 1

    refused = http.put(config_url, json={"sensors": [{"type": "no_such_sensor"}]}).json()
    assert refused["desired_version"] == 2
    wait_until(lambda: http.get(config_url).json()["error"], 5, what="refusal")
    view = http.get(config_url).json()
    assert "unknown sensor type" in view["error"] and view["reported_version"] == 1 and not view["in_sync"]

    sent = http.post(
        f"/api/v1/devices/{device_id}/commands", json={"cmd": "identify", "args": {"seconds": 3}}
    )
    assert sent.status_code == 202 and sent.headers["location"].endswith(sent.json()["id"])
    url = f"/api/v1/devices/{device_id}/commands/{sent.json()['id']}"
    wait_until(lambda: http.get(url).json()["status"] != "sent", 5, what="identify ack")
    assert (http.get(url).json()["status"], http.get(url).json()["result"]) == ("ok", {"seconds": 3})

    bad = http.post(
        f"/api/v1/devices/{device_id}/commands", json={"cmd": "co2_recalibrate", "args": {"ppm": 1}}
    )
    url = f"/api/v1/devices/{device_id}/commands/{bad.json()['id']}"
    wait_until(lambda: http.get(url).json()["status"] != "sent", 5, what="refused ack")
    assert "ppm must be" in http.get(url).json()["error"]

    env = {**os.environ, "MAILLE_API_URL": fleet.api, "MAILLE_TOKEN": secret}
    cli = subprocess.run(
        [str(MAILLE), "device", "cmd", device_id, "log_level", "--arg", "level=warning", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["result"] == {"level": "warning"}
    cli = subprocess.run(
        [str(MAILLE), "device", "config", device_id, "--set", "sensors=[]", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["in_sync"] and shown["reported_version"] == 3 and shown["settings"]["sensors"] == []


def test_every_command_is_acknowledged_through_the_api(
    fleet_service, broker, device_credentials, boards, tmp_path
):
    """Each command of the contract, sent with the API to a board with a (simulated) SCD4x, comes back
    with the node's ack in the API: the result when it worked, the reason when it did not."""
    fleet = fleet_service()
    device_id, password = device_credentials()
    with Session(fleet.engine) as s:
        register_device(s, device_id, "test-site", "1.01")
        secret = create_token(s, f"tech-{device_id}", Role.technician)[1]
    http = httpx.Client(base_url=fleet.api, headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    cfg = node_config(device_id, broker, sensors=[{"type": "scd4x", "sim": {"seed": 1}}])
    board = boards(tmp_path / device_id, cfg, {"user": device_id, "password": password}).start()
    wait_until(
        lambda: http.get(f"/api/v1/devices/{device_id}").json()["status"] == "online", 20, what="online"
    )

    def run(cmd: str, args: dict | None = None) -> dict:
        body = {"cmd": cmd, **({"args": args} if args else {})}
        sent = http.post(f"/api/v1/devices/{device_id}/commands", json=body)
        assert sent.status_code == 202, sent.text
        url = f"/api/v1/devices/{device_id}/commands/{sent.json()['id']}"
        wait_until(lambda: http.get(url).json()["status"] != "sent", 10, what=f"{cmd} ack")
        return http.get(url).json()

    assert run("identify", {"seconds": 2})["result"] == {"seconds": 2}
    assert run("time_sync")["status"] == "ok"
    assert "waiting" in run("flush_outbox")["result"]
    assert run("log_level", {"level": "debug"})["result"] == {"level": "debug"}
    recal = run("co2_recalibrate", {"ppm": 420})
    assert recal["status"] == "ok" and isinstance(recal["result"]["correction_ppm"], int), recal
    boot = board.console().count("--- board start")
    assert run("reboot")["result"] == {"rebooting": True}
    wait_until(lambda: board.console().count("--- board start") == boot + 1, 15, what="the reboot")
    wait_until(
        lambda: http.get(f"/api/v1/devices/{device_id}").json()["status"] == "online", 20, what="back online"
    )
