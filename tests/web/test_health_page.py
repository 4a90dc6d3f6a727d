"""The device page's health history over plain HTTP (issue 8): vitals charts over the chosen range
and the table of reboots, reset causes and fault changes, from health stored by ingest."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from fleet.registry import register_device
from tests.fleet.test_health_history import deliver, vitals
from tests.web.test_pages import client

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # on the hour: whole 15-min buckets
FAULT = "co2: scd4x: no answer at 0x62"


def test_device_page_charts_vitals_and_lists_reboots_and_fault_changes(engine, token):
    with Session(engine) as s:
        register_device(s, "north-1", "north", "1.01")
    start = NOW - timedelta(hours=2)
    history = [(start + timedelta(minutes=i), vitals(60 * i)) for i in range(60)]
    history += [
        (start + timedelta(minutes=61), vitals(60, boot=4, reset="watchdog", faults=[FAULT])),  # both
        (start + timedelta(minutes=62), vitals(120, boot=4, reset="watchdog")),  # fault cleared
        (NOW - timedelta(days=2), vitals(5, boot=1)),  # outside 24h: neither charted nor listed
    ]
    deliver(engine, "north-1", *history)
    viewer = client(engine, token("viewer"))

    page = viewer.get("/devices/north-1", params={"range": "6h"}).text
    charted = dict(re.findall(r'<figure data-vital="(\w+)">.*?data-points="(\d+)"', page, re.S))
    assert charted == {
        "heap_free": "62",
        "heap_min": "62",
        "rssi": "62",
        "loop_lag_ms": "62",
    }  # 1-min buckets
    rows = re.findall(r'<tr data-change="(\w+)"><td>[^<]*</td><td>\w+</td><td>([^<]*)</td>', page)
    assert rows == [
        ("faults", "cleared"),
        ("reboot", "boot 4, reset watchdog"),
        ("faults", FAULT),
    ]  # newest first

    day = viewer.get("/devices/north-1", params={"range": "24h"}).text
    assert re.search(r'data-vital="rssi">.*?data-points="5"', day, re.S)  # 15-min buckets over 62 minutes
    assert "boot 1" not in day

    with Session(engine) as s:
        register_device(s, "north-2", "north", "1.02")
    empty = viewer.get("/devices/north-2").text
    assert empty.count("no data in this range") >= 4 and "No reboot, reset or fault change" in empty
