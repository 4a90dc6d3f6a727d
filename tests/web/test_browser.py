"""The dashboard in a real headless Chromium against the real fleet service, its private Mosquitto and
a node speaking MQTT with its own credentials (issue 8's acceptance): log in, open the fleet, drill
down to a room, watch a live value change when the node publishes, send an identify command that
reaches the node's cmd topic, pause (and abort) a rollout; a viewer gets no buttons and a 403.
Screenshots of every main page, desktop and phone, go to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlmodel import Session, select

from fleet.auth import Role, create_token
from fleet.models import AuditLog, Release
from fleet.registry import register_device
from tests.fleet.conftest import Node, bearer, clear_retained
from tests.helpers import Observer, wait_until
from tests.web.conftest import shoot

pytestmark = pytest.mark.postgres_long  # the browser adds nothing on PostgreSQL: the page tests run there
RELEASE = "9.9.0"


@pytest.fixture
def site(fleet_service, broker, device_credentials):
    """A fleet service with one online node in room 2.14 of a site, tokens, and a published release."""
    fleet = fleet_service()
    device_id, password = device_credentials()
    slug = f"site-{device_id}"
    with Session(fleet.engine) as s:
        register_device(s, device_id, slug, "2.14")
        tokens = {
            role: create_token(s, f"{role}-{device_id}", role)[1] for role in (Role.operator, Role.viewer)
        }
        s.add(
            Release(
                version=RELEASE,
                arch="host",
                manifest_sha256="0" * 64,
                key_id="k",
                path=f"{RELEASE}-host",
                created_by="test",
            )
        )
        s.commit()
    node = Node(broker, device_id, password)
    node.send("state", {"state": "online", "fw": "1.0.0", "boot": 1}, retain=True)
    api = httpx.Client(base_url=fleet.api, headers=bearer(tokens[Role.operator]), timeout=10)
    wait_until(
        lambda: api.get(f"/api/v1/devices/{device_id}").json()["status"] == "online", 10, what="online"
    )
    yield fleet, node, slug, tokens, api
    node.close()
    clear_retained(broker, device_id)


def telemetry(node: Node, seq: int, **values: float) -> None:
    e = [{"n": name, "v": value} for name, value in values.items()]
    node.send("telemetry", {"seq": seq, "bt": int(time.time()), "e": e})


def log_in(page, base: str, secret: str, path: str = "/fleet") -> None:
    page.goto(base + path)
    assert page.url.startswith(base + "/login")
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(base + path)


def create_rollout(api: httpx.Client, device: str, slug: str) -> int:
    spec = {
        "release": RELEASE,
        "name": "browser",
        "targets": {"devices": [device]},
        "waves": [100],
        # open on another weekday only: no offer goes out while the test runs
        "windows": {
            slug: [{"start": "00:00", "end": "23:59", "days": [(datetime.now(UTC).weekday() + 3) % 7]}]
        },
    }
    created = api.post("/api/v1/rollouts", json=spec)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_operator_drills_down_sees_live_values_identifies_and_pauses(site, browse, broker):
    fleet, node, slug, tokens, api = site
    device = node.device_id
    telemetry(node, 1, co2=650, temperature=21.0, noise_laeq=48)
    wait_until(lambda: api.get(f"/api/v1/devices/{device}/readings").json(), 10, what="first readings")
    base = fleet.api
    page = browse()

    page.goto(base + "/fleet")
    shoot(page, "desktop-login")
    log_in(page, base, tokens[Role.operator])
    row = page.locator(f'li[data-device="{device}"]')
    assert row.locator(".badge").inner_text() == "online"
    page.fill("input[name=q]", device)
    page.click(".filters button")
    assert page.locator("ul.devices li").count() == 1
    shoot(page, "desktop-fleet")

    page.click(f'a[href="/sites/{slug}"]')
    tile = page.locator(".tile", has_text="2.14")
    assert tile.locator('[data-metric="co2"] .v').inner_text() == "650"
    assert tile.get_attribute("data-level") == "good"
    shoot(page, "desktop-site")

    tile.click()
    page.wait_for_url(f"{base}/rooms/*")
    room_path = page.url.removeprefix(base)
    page.wait_for_selector('body[data-live="on"]')  # the hub has subscribed this page
    page.evaluate("window.notReloaded = true")
    co2 = page.locator('.tile.big [data-metric="co2"]')
    assert co2.locator(".v").inner_text() == "650"
    telemetry(node, 2, co2=1720, noise_laeq=63)
    page.wait_for_function(
        "document.querySelector('.tile.big [data-metric=co2] .v').textContent === '1720'", timeout=10_000
    )
    assert co2.get_attribute("data-level") == "poor"
    assert page.locator(".tile.big").get_attribute("data-level") == "poor"
    assert page.locator('.tile.big [data-metric="noise_laeq"] .v').inner_text() == "63.0"
    assert page.evaluate("window.notReloaded") is True
    shoot(page, "desktop-room")

    cmds = Observer(broker, [f"maille/v1/{device}/cmd"])
    try:
        page.click(f'a[href="/devices/{device}"]')
        page.wait_for_selector('body[data-live="on"]')
        shoot(page, "desktop-device")
        page.click('button[value="identify"]')
        page.wait_for_selector(".notice")
        assert "identify" in page.locator(".notice").inner_text()
        _, payload, _ = cmds.wait(lambda t, p: json.loads(p)["cmd"] == "identify", 10)
    finally:
        cmds.close()
    command_id = json.loads(payload)["id"]
    assert page.locator(f'tr[data-command="{command_id}"]').count() == 1

    rollout = create_rollout(api, device, slug)
    page.click('nav a[href="/rollouts"]')
    assert page.locator(f'li[data-rollout="{rollout}"] .badge').inner_text() == "running"
    shoot(page, "desktop-rollouts")
    page.click(f'li[data-rollout="{rollout}"] a')
    page.click('button:text("Pause")')
    page.wait_for_selector('[data-status="paused"]')
    assert api.get(f"/api/v1/rollouts/{rollout}").json()["status"] == "paused"
    assert page.locator('button:text("Resume")').count() == 1
    shoot(page, "desktop-rollout")
    page.click('button:text("Abort")')
    page.wait_for_selector('[data-status="aborted"]')

    node.send("telemetry", b'{"seq": -1}')  # refused by ingest: shows on the rejects page
    page.click('nav a[href="/alerts"]')
    shoot(page, "desktop-alerts")
    page.click('nav a[href="/rejects"]')
    wait_until(
        lambda: any(device in r["topic"] for r in api.get("/api/v1/rejects").json()), 10, what="the reject"
    )
    page.reload()
    assert device in page.locator("table").inner_text()
    shoot(page, "desktop-rejects")

    with Session(fleet.engine) as s:
        trail = [(a.action, a.entity, a.who) for a in s.exec(select(AuditLog).order_by(AuditLog.id))]
    who = f"operator-{device}"
    assert ("command", "device", who) in trail
    assert ("pause", "rollout", who) in trail and ("abort", "rollout", who) in trail

    phone = browse(phone=True)
    log_in(phone, base, tokens[Role.operator])
    for name, path in (
        ("fleet", "/fleet"),
        ("site", f"/sites/{slug}"),
        ("room", room_path),
        ("device", f"/devices/{device}"),
        ("rollouts", "/rollouts"),
        ("rollout", f"/rollouts/{rollout}"),
        ("alerts", "/alerts"),
        ("rejects", "/rejects"),
    ):
        phone.goto(base + path)
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a 360px phone"
        shoot(phone, f"phone-{name}")


def test_a_viewer_sees_no_buttons_and_cannot_post(site, browse, broker):
    fleet, node, slug, tokens, api = site
    device = node.device_id
    rollout = create_rollout(api, device, slug)
    page = browse()
    log_in(page, fleet.api, tokens[Role.viewer], f"/devices/{device}")
    assert page.locator('button[value="identify"]').count() == 0
    page.goto(f"{fleet.api}/rollouts/{rollout}")
    assert page.locator('[data-status="running"]').count() == 1
    assert page.locator(".actions button").count() == 0
    assert page.locator('nav a[href="/rejects"]').count() == 0  # read:ops only
    # The page's own token, from the page's own origin: refused for the role, not for forgery.
    statuses = page.evaluate(
        """async ([device, rollout]) => {
            const csrf = document.querySelector('input[name=csrf]').value;
            const post = async (url, fields) => {
                const r = await fetch(url, {method: 'POST', body: new URLSearchParams(fields)});
                return [r.status, (await r.text()).includes('role viewer may not device:control')];
            };
            return [
                await post(`/devices/${device}/commands`, {cmd: 'identify', csrf}),
                await post(`/rollouts/${rollout}/pause`, {csrf}),
            ];
        }""",
        [device, rollout],
    )
    assert statuses == [[403, True], [403, True]]
    assert api.get(f"/api/v1/rollouts/{rollout}").json()["status"] == "running"
    assert api.get(f"/api/v1/devices/{device}/commands").json() == []
    api.post(f"/api/v1/rollouts/{rollout}/abort").raise_for_status()

    # A dashboard left open on a live page does not keep the service from stopping.
    page.goto(f"{fleet.api}/devices/{device}")
    page.wait_for_selector('body[data-live="on"]')
    fleet.stop()
    assert not fleet._thread.is_alive(), "the service still runs: a live stream held it"
