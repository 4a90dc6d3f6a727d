"""Trial boots that fail roll back by themselves, and the node says why on ota/status."""

from __future__ import annotations

import json

from tests.ota.conftest import BASE, Fleet, compile_source, manifest_url, ota_node


def test_a_release_that_crashes_at_start_rolls_back_by_itself(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    files = releases.compiled("1.5.0")
    files["node/app.mpy"] = compile_source("raise RuntimeError('broken release')\n", "app.py")
    releases.make("1.5.0-crash", "1.5.0", files=files)
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("1.5.0", manifest_url(bundle_server, "1.5.0-crash"))
        fleet.wait_status("rebooting", "1.5.0", timeout=30)
        back = fleet.wait_status("rolled_back", "1.5.0", timeout=60)
        assert back["running"] == BASE and back["slot"] == "a"
        assert back["reason"].startswith("crash loop: 3 trial boots without confirmation")
        assert "RuntimeError: broken release" in back["reason"]
        birth = fleet.wait_online(BASE)
        assert birth["mode"] == "normal"  # the crash counter was reset: no safe mode on the good slot
        assert vb.console().count("\nRuntimeError: broken release") == 3  # three trial boots crashed
        # the retained offer is not tried again; a new attempt number would
        vb.reboot()
        boot = birth["boot"] + 1
        fleet.wait(lambda t, p: t.endswith("/state") and json.loads(p).get("boot") == boot)
        vb.wait_for(r"mqtt: connected", after=vb.console().index(f"boot {boot} "))
        fleet.wait_status("rolled_back", "1.5.0")  # said again once after the boot
        assert "ota: offered 1.5.0" not in vb.console().split(f"boot {boot} ")[-1]
    finally:
        fleet.clear()


def test_a_trial_that_never_gets_healthy_rolls_back_after_its_window(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    releases.make("1.6.0", "1.6.0")
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path, trial_s=4)
    fleet = Fleet(broker, device)
    fleet.publish(fleet.topic("stored"), b"", retain=True)  # the fleet stores nothing from it
    try:
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("1.6.0", manifest_url(bundle_server, "1.6.0"))
        fleet.wait_status("trial", "1.6.0", timeout=30)
        back = fleet.wait_status("rolled_back", "1.6.0", timeout=30)
        assert back["reason"] == "not online and healthy within 4 s"
        assert back["running"] == BASE
        fleet.wait_online(BASE)
        assert fleet.statuses()  # every status matches the contract's schema
    finally:
        fleet.clear()


def test_a_watchdog_reset_during_the_trial_rolls_back(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    releases.make("1.7.0", "1.7.0")
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        (vb.root / "halt-at").write_text("trial:started")  # the new app hangs in its trial
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("1.7.0", manifest_url(bundle_server, "1.7.0"))
        vb.wait_for(r"halt: trial:started", timeout=30)
        vb.reboot("watchdog")  # what the hardware watchdog does to a hung app
        back = fleet.wait_status("rolled_back", "1.7.0", timeout=30)
        assert back["reason"] == "watchdog reset during trial boot 1"
        fleet.wait_online(BASE)
        assert fleet.statuses()  # every status matches the contract's schema
    finally:
        fleet.clear()
