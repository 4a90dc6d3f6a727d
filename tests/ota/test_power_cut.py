"""Power cut (SIGKILL) at every distinct step of an update: the node always comes back working.

Each board gets a `halt-at` file naming one step; the OTA code (through node.port.host.checkpoint)
or the loader freezes exactly there, the test cuts the power and powers the board up again. The
steps cover fetching and checking the release, filling the inactive slot (a file copied from the
running slot, a downloaded one chunk by chunk, inflated, placed), verifying, the switch of the slot
pointer (between its temporary file and the rename, and after), the loader's trial counting and
the trial's confirmation. The boards run in parallel; each must come back on a working version and
finish the update.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.ota.conftest import BASE, Fleet, manifest_url, ota_node

NEW = "1.1.1"
STEPS = [
    # fetch and check
    "offered",
    "checked",
    "prepared",
    # fill the inactive slot: a copy from the running slot, then a download
    "copied:node/app.mpy",
    "placed:node/app.mpy",
    "chunk:1",
    "chunk:3",
    "fetched:node/codec.mpy",
    "inflated:node/codec.mpy",
    "placed:node/codec.mpy",
    # verify and switch
    "verifying",
    "verified",
    "installed",
    "switch-tmp",
    "switched",
    # trial: the loader counts the boot, the app confirms
    "loader:count-tmp",
    "loader:counted",
    "trial:started",
    "trial:healthy",
    "trial:confirm-tmp",
    "trial:confirmed",
]


def run_one(vb, fleet, url, step):
    (vb.root / "halt-at").write_text(step)
    vb.start()
    fleet.wait_online(BASE, timeout=60)
    fleet.offer(NEW, url)
    vb.wait_for(r"halt: " + step.replace(".", r"\."), timeout=90)
    vb.power_cut()
    assert not (vb.root / "halt-at").exists()
    vb.start()
    confirmed = fleet.wait_status("confirmed", NEW, timeout=90)
    assert confirmed["running"] == NEW
    fleet.wait_online(NEW, timeout=30)
    births = [json.loads(p) for t, p, _ in fleet.drain() if t.endswith("/state")]
    births = [b for b in births if b["state"] == "online"]
    assert all(b["fw"] in (BASE, NEW) and b["mode"] == "normal" for b in births), (step, births)
    pointer = json.loads((vb.root / "app" / "active").read_text())
    assert pointer["slot"] == "b" and pointer["trial"] is False, (step, pointer)
    assert fleet.statuses()  # every status matches the contract's schema
    return step


def test_power_cut_at_every_step_of_an_update_never_bricks(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    noise = random.Random(11).randbytes(3000).hex()
    releases.make(NEW, NEW, patch={"node/codec.py": "NOTE = " + repr(noise)})
    url = manifest_url(bundle_server, NEW)
    nodes = []
    for _ in STEPS:
        device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
        nodes.append((vb, Fleet(broker, device)))
    try:
        with ThreadPoolExecutor(len(STEPS)) as pool:
            futures = [
                pool.submit(run_one, vb, fleet, url, step)
                for (vb, fleet), step in zip(nodes, STEPS, strict=True)
            ]
            failures = []
            for (vb, _), step, f in zip(nodes, STEPS, futures, strict=True):
                try:
                    f.result()
                except Exception as e:
                    failures.append(f"{step}: {e!r}\n{vb.tail(30)}")
        assert not failures, "\n\n".join(failures)
    finally:
        for _, fleet in nodes:
            fleet.clear()


ROLLBACK_STEPS = ["loader:rollback-tmp", "loader:rolled-back"]


@pytest.mark.long
def test_power_cut_during_a_rollback_still_ends_on_the_old_version(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    from tests.ota.conftest import compile_source

    files = releases.compiled("1.8.0")
    files["node/app.mpy"] = compile_source("raise RuntimeError('broken release')\n", "app.py")
    releases.make("1.8.0-crash", "1.8.0", files=files)
    url = manifest_url(bundle_server, "1.8.0-crash")
    for step in ROLLBACK_STEPS:
        device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
        fleet = Fleet(broker, device)
        try:
            (vb.root / "halt-at").write_text(step)
            vb.start()
            fleet.wait_online(BASE)
            fleet.offer("1.8.0", url)
            vb.wait_for(r"halt: " + step, timeout=60)
            vb.power_cut()
            vb.start()
            back = fleet.wait_status("rolled_back", "1.8.0", timeout=60)
            assert back["running"] == BASE, (step, back)
            fleet.wait_online(BASE)
        finally:
            fleet.clear()
