"""The dashboard over plain HTTP on a real database: login and its cookie, redirects to the login
page, roles and site scopes as the API has them, CSRF refusals, conditions, tiles and charts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from fleet import contract
from fleet.alerts import AlertRules, evaluate
from fleet.api import create_app
from fleet.auth import revoke_token
from fleet.calendar import DAYS
from fleet.ingest import Received, store_batch
from fleet.models import AuditLog, Command, Room, Site
from fleet.registry import register_device
from fleet.web.levels import level, tile_level

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # on the hour: whole 15-min buckets
ORIGIN = {"Origin": "http://testserver"}


def deliver(engine, *messages: tuple[str, dict | bytes]) -> None:
    """Store messages as ingest does (one batch, so a fixture of hundreds of readings stays fast)."""
    batch = []
    for topic, payload in messages:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        batch.append(Received(topic, raw, datetime.now(UTC), contract.parse(topic, raw)))
    with Session(engine) as s:
        store_batch(s, batch)


@pytest.fixture
def world(engine):
    """Two sites. North: a node reporting every minute for two hours (CO2 climbing from 600 to
    1790 ppm), one with a sensor fault, one that reported every second and went silent; south: one
    offline node. Then the alert rules run once, 30 s later."""
    with Session(engine) as s:
        register_device(s, "north-ok", "north", "1.01")
        register_device(s, "north-faulty", "north", "1.02")
        register_device(s, "north-silent", "north", "1.03")
        register_device(s, "south-1", "south", "0.01")
    births = [
        (f"maille/v1/{d}/state", {"state": "online", "fw": "1.0.0"})
        for d in ("north-ok", "north-faulty", "north-silent", "south-1")
    ]
    deliver(engine, *births)
    start = int((NOW - timedelta(hours=2)).timestamp())
    minutes = [
        (
            "maille/v1/north-ok/telemetry",
            {
                "seq": i,
                "bt": start + 60 * i,
                "e": [
                    {"n": "co2", "u": "ppm", "v": 600 + 10 * i},
                    {"n": "temperature", "u": "Cel", "v": 21.5},
                ],
            },
        )
        for i in range(120)
    ]
    seconds = [
        (
            "maille/v1/north-silent/telemetry",
            {"seq": i, "bt": start + i, "e": [{"n": "noise_laeq", "u": "dB", "v": 72}]},
        )
        for i in range(10)
    ]
    deliver(
        engine,
        *minutes,
        *seconds,
        ("maille/v1/north-faulty/health", {"uptime": 60, "heap_free": 50000, "faults": ["scd4x"]}),
        ("maille/v1/south-1/state", {"state": "offline"}),
        ("maille/v1/ghost-9/telemetry", b'{"seq": "x"}'),  # a reject
    )
    with Session(engine) as s:
        evaluate(s, datetime.now(UTC) + timedelta(seconds=30), AlertRules(stale_min_s=1))
    return engine


def client(engine, secret: str | None = None, **kw) -> TestClient:
    c = TestClient(create_app(engine), follow_redirects=False, **kw)
    if secret:
        assert c.post("/login", data={"token": secret}, headers=ORIGIN).status_code == 303
    return c


def test_pages_send_strangers_to_login_and_back(world, token):
    anonymous = client(world)
    for path in ("/fleet", "/sites/north", "/devices/north-ok?range=7d", "/rollouts", "/live?site=north"):
        r = anonymous.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=/"), r.headers["location"]
    assert (
        anonymous.get("/devices/north-ok?range=7d").headers["location"]
        == "/login?next=/devices/north-ok%3Frange%3D7d"
    )
    assert anonymous.get("/api/v1/devices").status_code == 401  # the API still answers as the API

    refused = anonymous.post("/login", data={"token": "mt_nope", "next": "/alerts"}, headers=ORIGIN)
    assert refused.status_code == 401 and "unknown or revoked" in refused.text
    assert "set-cookie" not in refused.headers

    secret = token("viewer", name="kiosk")
    ok = anonymous.post("/login", data={"token": secret, "next": "/alerts"}, headers=ORIGIN)
    assert (ok.status_code, ok.headers["location"]) == (303, "/alerts")
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert anonymous.get("/alerts").status_code == 200

    away = anonymous.post("/login", data={"token": secret, "next": "//evil.example/x"}, headers=ORIGIN)
    assert away.headers["location"] == "/fleet"  # no open redirect

    with Session(world) as s:
        revoke_token(s, "kiosk", "test")
    assert anonymous.get("/alerts").status_code == 303  # a revoked token logs the browser out

    https = client(world, base_url="https://testserver")
    r = https.post("/login", data={"token": token("viewer")}, headers={"Origin": "https://testserver"})
    assert "Secure" in r.headers["set-cookie"]


def test_logout_clears_the_session(world, token):
    c = client(world, token("viewer"))
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', c.get("/fleet").text)[1]
    r = c.post("/logout", data={"csrf": csrf}, headers=ORIGIN)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    assert c.get("/fleet").status_code == 303


def test_fleet_conditions_filters_and_search(world, token):
    c = client(world, token("operator"))
    page = c.get("/fleet").text
    conditions = dict(re.findall(r'data-device="([a-z0-9-]+)">.*?class="badge c-([a-z]+)"', page, re.S))
    assert conditions == {
        "north-faulty": "unhealthy",
        "north-ok": "online",
        "north-silent": "stale",
        "south-1": "offline",
    }
    offline = c.get("/fleet?condition=offline").text
    assert 'data-device="south-1"' in offline and 'data-device="north-ok"' not in offline
    found = c.get("/fleet?q=1.02").text  # a room name
    assert re.findall(r'data-device="([a-z0-9-]+)"', found) == ["north-faulty"]
    bad = c.get("/fleet?condition=sleepy")
    assert bad.status_code == 422 and "one of online, stale" in bad.text
    assert c.get("/fleet?site=west").status_code == 404


def test_a_scoped_token_sees_only_its_sites(world, token):
    c = client(world, token("integrator", "north"))
    page = c.get("/fleet").text
    assert "north-ok" in page and "south-1" not in page and 'href="/sites/south"' not in page
    with Session(world) as s:
        south_room = s.exec(select(Room).where(Room.name == "0.01")).one().id
    for path in (
        "/sites/south",
        "/devices/south-1",
        f"/rooms/{south_room}",
        "/live?site=south",
        "/fleet?site=south",
    ):
        r = c.get(path)
        assert r.status_code == 403, path
        assert "not allowed on this site" in r.text and r.headers["content-type"].startswith("text/html")
    assert c.get("/rejects").status_code == 403  # read:ops only
    assert "ghost-9" in client(world, token("operator")).get("/rejects").text


def test_commands_need_the_role_the_origin_and_the_token(world, token):
    tech = client(world, token("technician", name="tech"))
    page = tech.get("/devices/north-ok").text
    assert 'value="identify"' in page and 'value="reboot"' in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]
    url = "/devices/north-ok/commands"
    attempts = {
        "no origin": ({"cmd": "identify", "csrf": csrf}, {}),
        "another site": ({"cmd": "identify", "csrf": csrf}, {"Origin": "https://evil.example"}),
        "another site's referer": ({"cmd": "identify", "csrf": csrf}, {"Referer": "https://evil.example/x"}),
        "no token": ({"cmd": "identify"}, ORIGIN),
        "a stale token": ({"cmd": "identify", "csrf": "0" * 32}, ORIGIN),
    }
    for what, (form, headers) in attempts.items():
        r = tech.post(url, data=form, headers=headers)
        assert r.status_code == 403, what
    r = tech.post(url, data={"cmd": "selfdestruct", "csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 422 and "cmd" in r.text
    r = tech.post(url, json={"cmd": "identify", "csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 415
    refused = set(tech.get("/metrics").text.splitlines())  # every refusal is counted for operators
    route = 'route="/devices/{device_id}/commands"'
    assert {
        f'maille_http_refused_total{{{route},status="403"}} 5',
        f'maille_http_refused_total{{{route},status="422"}} 1',
        f'maille_http_refused_total{{{route},status="415"}} 1',
    } <= refused

    viewer = client(world, token("viewer"))
    page = viewer.get("/devices/north-ok").text
    assert 'value="identify"' not in page and "/commands" not in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]
    r = viewer.post(url, data={"cmd": "identify", "csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 403 and "may not device:control" in r.text
    r = viewer.post("/rollouts/1/pause", data={"csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 403

    with Session(world) as s:
        assert s.exec(select(func.count()).select_from(Command)).one() == 0
        assert not s.exec(select(AuditLog).where(AuditLog.action == "command")).all()


def test_tiles_and_charts_come_from_the_rollups(world, token):
    c = client(world, token("viewer"))
    site = c.get("/sites/north").text
    levels = {
        room: lvl
        for lvl, room in re.findall(
            r'data-room="\d+" data-level="(\w+)">\s*<span class="room">([0-9.]+)', site
        )
    }
    assert levels == {"1.01": "poor", "1.02": "none", "1.03": "poor"}  # CO2 1790 ppm; no data; 72 dB(A)
    co2 = re.search(
        r'data-metric="co2" data-devices="north-ok"\s+data-level="(\w+)"[^>]*>.*?'
        r'<span class="v">(\d+)</span>',
        site,
        re.S,
    )
    assert co2.groups() == ("poor", "1790")

    six_hours = c.get("/devices/north-ok?range=6h").text
    points = dict(re.findall(r'aria-label="(\w+) from [^"]*" data-points="(\d+)"', six_hours))
    no_health = dict.fromkeys(("heap_free", "heap_min", "rssi", "loop_lag_ms"), "0")  # vitals charts, empty
    assert points == {"co2": "120", "temperature": "120", **no_health}  # one 1-minute bucket per reading
    day = dict(
        re.findall(r'aria-label="(\w+) from [^"]*" data-points="(\d+)"', c.get("/devices/north-ok").text)
    )
    assert day == {"co2": "8", "temperature": "8", **no_health}  # 15-minute buckets over two hours
    assert c.get("/devices/north-ok?range=1y").status_code == 422


@pytest.mark.parametrize(
    "metric, value, expected",
    [
        ("co2", 800, "good"),
        ("co2", 801, "fair"),
        ("co2", 1500, "fair"),
        ("co2", 1501, "poor"),
        ("temperature", 18, "fair"),
        ("temperature", 21, "good"),
        ("temperature", 16.9, "poor"),
        ("temperature", 27.5, "poor"),
        ("noise_laeq", 72, "poor"),
        ("humidity", 50, "plain"),
        ("co2", None, "none"),
    ],
)
def test_levels(metric, value, expected):
    assert level(metric, value) == expected


def test_a_tile_takes_its_worst_level():
    assert tile_level({"co2": 700, "temperature": 21, "noise_laeq": 75}) == "poor"
    assert tile_level({"co2": 900}) == "fair"
    assert tile_level({}) == "none"


def test_the_room_page_shows_its_insight(world, token):
    """CO2 climbs 600 → 1790 ppm a minute at a time for two hours, in a site open around the clock.
    Insight reads it in 10-minute slots (ICONE's step), means 645, 745, … 1745 ppm, the last held for
    the nodes' 15-minute heartbeat (two more slots): 12 slots above 800 ppm, 5 above 1500 (summed
    over the days the two hours fall on). Its meter's 1 kWh shows on the site page."""
    with Session(world) as s:
        site = s.exec(select(Site).where(Site.slug == "north")).one()
        site.calendar = {"tz": "UTC", "week": {d: [{"start": "00:00", "end": "23:59:59"}] for d in DAYS}}
        s.add(site)
        s.commit()
        room = s.exec(select(Room).where(Room.name == "1.01")).one()
    page = client(world, token("viewer")).get(f"/rooms/{room.id}").text
    air = re.search(r'<table data-insight="air">.*?</table>', page, re.S).group(0)
    assert sum(int(m) for m in re.findall(r'data-above="800">(\d+)<', air)) == 120
    assert sum(int(m) for m in re.findall(r'data-above="1500">(\d+)<', air)) == 50
    assert re.search(r'data-icone="[0-5]"', air)
    assert 'data-insight="noise"' not in page  # no noise meter in that room

    start = int((NOW - timedelta(hours=2)).timestamp())
    meter = [
        ("maille/v1/north-ok/telemetry", {"seq": 1000 + i, "bt": start + 900 * i, "e": [e]})
        for i, e in enumerate([{"n": "energy_delta", "u": "Wh", "v": 250.0}] * 4)
    ]
    deliver(world, *meter)
    site_page = client(world, token("viewer")).get("/sites/north").text
    energy = re.search(r'<table data-insight="energy">.*?</table>', site_page, re.S).group(0)
    assert sum(float(k) for k in re.findall(r"<td data-kwh>([0-9.]+)<", energy)) == pytest.approx(1.0)

    co2_only = (
        client(world, token("integrator", "north", metrics=["temperature"])).get(f"/rooms/{room.id}").text
    )
    assert 'data-insight="air"' not in co2_only  # a token without co2 sees no air insight
