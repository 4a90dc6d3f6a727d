"""Rollouts end to end (issue 7, items 7–10, fleet side): `maille release publish`, the API, the fleet
service's rollout engine and bundle server, and virtual boards running the real firmware under the
real `micropython`, taking the offer, downloading, installing, trialling and confirming or rolling back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.broker import free_port
from fleet.registry import register_device
from provisioning import release
from tests.helpers import Observer, node_config, wait_until
from tests.ota.conftest import BASE, Releases, compile_source

MAILLE = Path(sys.executable).with_name("maille")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Releases:
    d = tmp_path_factory.mktemp("rollout-bundles")
    keyfile, pub = release.generate_key(d / "release.pem")
    r = Releases(d, keyfile, pub.read_text().strip())
    r.make(BASE, BASE)
    r.make("1.1.0", "1.1.0")
    files = r.compiled("1.5.0")
    files["node/app.mpy"] = compile_source("raise RuntimeError('broken release')\n", "app.py")
    r.make("1.5.0", "1.5.0", files=files)
    return r


def publish(fleet, bundles: Releases, name: str) -> str:
    env = {
        **os.environ,
        "MAILLE_DATABASE_URL": fleet.settings.database_url,
        "MAILLE_RELEASE_PUBLIC_KEY": bundles.pub,
        "MAILLE_BUNDLE_DIR": str(fleet.settings.bundle_dir),
        "MAILLE_BUNDLE_PORT": str(fleet.settings.bundle_port),
    }
    done = subprocess.run(
        [str(MAILLE), "release", "publish", str(bundles.root / "releases" / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_fleet(fleet_service, bundles, tmp_path):
    return fleet_service(
        bundle_dir=tmp_path / "store",
        bundle_port=free_port(),
        release_public_key=bundles.pub,
        rollout_interval_s=0.5,
        bundle_max_concurrent=3,
    )


def start_nodes(fleet, boards, broker, device_credentials, bundles, tmp_path, n: int, site: str):
    ids = []
    for _ in range(n):
        device, pw = device_credentials()
        with Session(fleet.engine) as s:
            register_device(s, device, site, "1.01", board="sim")
        cfg = node_config(
            device,
            broker,
            site=site,
            ota={"keys": [bundles.pub], "confirm_s": 2, "trial_s": 30},
            sample_interval_s=0.5,
            health_interval_s=5,
        )
        vb = boards(tmp_path / device, cfg, {"user": device, "password": pw})
        release.unpack(bundles.root / "releases" / BASE, vb.root / "app" / "a")
        vb.start()
        ids.append(device)
    return ids


def api(fleet) -> httpx.Client:
    with Session(fleet.engine) as s:
        secret = create_token(s, f"ops-{os.urandom(3).hex()}", Role.operator)[1]
    return httpx.Client(base_url=fleet.api, headers={"Authorization": f"Bearer {secret}"}, timeout=10)


def wait_ready(http, ids, timeout=60):
    """Every node online on the base release with channels the fleet has learned."""

    def ready():
        for d in ids:
            dev = http.get(f"/api/v1/devices/{d}").json()
            if dev["status"] != "online" or dev["fw"] != BASE:
                return False
            chans = http.get(f"/api/v1/devices/{d}/channels").json()
            if not chans or any(c["interval_s"] is None for c in chans):
                return False
        return True

    wait_until(ready, timeout, interval=0.3, what="nodes online with learned channels")


def run_good_rollout(fleet_service, boards, broker, device_credentials, bundles, tmp_path, n):
    fleet = start_fleet(fleet_service, bundles, tmp_path)
    out = publish(fleet, bundles, "1.1.0")
    assert "published: release 1.1.0 for host" in out
    assert publish(fleet, bundles, "1.1.0")  # the same bundle again: fine, nothing new
    site = f"roll-{os.urandom(3).hex()}"
    ids = start_nodes(fleet, boards, broker, device_credentials, bundles, tmp_path, n, site)
    http = api(fleet)
    assert [r["version"] for r in http.get("/api/v1/releases").json()] == ["1.1.0"]
    wait_ready(http, ids)
    body = {
        "release": "1.1.0",
        "targets": {"sites": [site], "versions": [BASE]},
        "canary": 1,
        "waves": [50, 100],
        "site_cap": 4,
        "start_jitter_s": 1,
        "timeout_s": 120,
        "gate_s": 30,
    }
    made = http.post("/api/v1/rollouts", json=body)
    assert made.status_code == 201, made.text
    rollout = made.json()
    assert [w["size"] for w in rollout["waves"]] == [1, n // 2 - 1, n - n // 2]
    url = f"/api/v1/rollouts/{rollout['id']}"
    wait_until(lambda: http.get(url).json()["status"] != "running", 60 + 6 * n, interval=0.5, what="the end")
    done = http.get(url).json()
    assert done["status"] == "completed", done
    assert done["counts"] == {"confirmed": n}
    assert all(w["status"] == "passed" and w["gate"]["problems"] == {} for w in done["waves"])
    assert all(t["running"] == "1.1.0" and t["attempt"] == 1 for t in done["targets"])
    wait_until(
        lambda: all(http.get(f"/api/v1/devices/{d}").json()["fw"] == "1.1.0" for d in ids), 10, what="fw"
    )
    return fleet, http, rollout["id"]


@pytest.mark.postgres_long  # the engine is what is tested; SQLite runs it in `make test`
def test_a_good_release_goes_to_six_nodes_in_three_waves(
    fleet_service, boards, broker, device_credentials, bundles, tmp_path
):
    fleet, http, rollout_id = run_good_rollout(
        fleet_service, boards, broker, device_credentials, bundles, tmp_path, 6
    )
    env = {**os.environ, "MAILLE_API_URL": fleet.api, "MAILLE_TOKEN": http.headers["Authorization"][7:]}
    shown = subprocess.run(
        [str(MAILLE), "rollout", "status", str(rollout_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout and "6/6 confirmed" in shown.stdout
    audit = http.get("/api/v1/audit", params={"entity": "release"}).json()
    assert [a["action"] for a in audit] == ["publish"]


@pytest.mark.long
def test_a_good_release_goes_to_twenty_nodes_in_three_waves(
    fleet_service, boards, broker, device_credentials, bundles, tmp_path
):
    run_good_rollout(fleet_service, boards, broker, device_credentials, bundles, tmp_path, 20)


@pytest.mark.postgres_long  # the engine is what is tested; SQLite runs it in `make test`
def test_a_crashing_release_rolls_back_on_the_canary_and_halts_the_rollout(
    fleet_service, boards, broker, device_credentials, bundles, tmp_path
):
    fleet = start_fleet(fleet_service, bundles, tmp_path)
    publish(fleet, bundles, "1.5.0")
    site = f"crash-{os.urandom(3).hex()}"
    ids = start_nodes(fleet, boards, broker, device_credentials, bundles, tmp_path, 4, site)
    offers = Observer(broker, [f"maille/v1/{d}/ota" for d in ids])
    http = api(fleet)
    wait_ready(http, ids)
    body = {
        "release": "1.5.0",
        "targets": {"sites": [site]},
        "canary": 1,
        "waves": [50, 100],
        "start_jitter_s": 0,
        "timeout_s": 120,
        "failure_threshold": 0.5,
    }
    rollout = http.post("/api/v1/rollouts", json=body).json()
    url = f"/api/v1/rollouts/{rollout['id']}"
    wait_until(lambda: http.get(url).json()["status"] != "running", 90, interval=0.5, what="the halt")
    done = http.get(url).json()
    assert done["status"] == "halted" and done["wave"] == 0, done
    assert "wave 0: 1 of 1 failed" in done["reason"]
    (canary,) = [t for t in done["targets"] if t["wave"] == 0]
    assert canary["state"] == "rolled_back" and canary["running"] == BASE
    assert canary["reason"].startswith("crash loop: 3 trial boots without confirmation")
    assert {t["state"] for t in done["targets"] if t["wave"] > 0} == {"cancelled"}
    assert [w["status"] for w in done["waves"]] == ["failed", "cancelled", "cancelled"]
    # no other node received the offer; the canary's was withdrawn
    got = [(t.split("/")[2], p) for t, p, _ in offers.drain()]
    assert {d for d, p in got if p} == {canary["device"]}
    wait_until(lambda: (canary["device"], b"") in [(t.split("/")[2], p) for t, p, _ in offers.drain()], 5)
    wait_until(lambda: all(http.get(f"/api/v1/devices/{d}").json()["status"] == "online" for d in ids), 30)
    assert http.get(f"/api/v1/devices/{canary['device']}").json()["fw"] == BASE
    offers.close()
