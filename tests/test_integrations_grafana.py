"""The Grafana query of docs/integrators.md runs as written on the fleet's PostgreSQL database, once
Grafana's macros are expanded the way its PostgreSQL data source expands them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fleet.db import make_engine, upgrade
from fleet.models import Rollup
from fleet.registry import register_device
from tests.conftest import POSTGRES_URL

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrators.md"


def grafana_query(start: datetime, end: datetime) -> str:
    query = re.search(r"query \(Code mode\)[^`]*```sql\n(.*?)```", DOC.read_text(), re.S).group(1)
    iso = {"from": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    query = query.replace("$__timeFrom()", f"'{iso['from']}'").replace("$__timeTo()", f"'{iso['to']}'")
    return re.sub(
        r"\$__timeFilter\(([\w.]+)\)", lambda m: f"{m[1]} BETWEEN '{iso['from']}' AND '{iso['to']}'", query
    )


def _rollup(device: str, bucket: datetime, count: int, total: float, resolution: str = "15m") -> Rollup:
    return Rollup(
        device_id=device,
        name="co2",
        resolution=resolution,
        bucket=bucket,
        count=count,
        sum=total,
        min=0,
        max=0,
        last=0,
        last_ts=bucket,
    )


@pytest.mark.skipif(not POSTGRES_URL, reason="MAILLE_TEST_POSTGRES_URL not set (.ci/run sets it)")
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_documented_grafana_query_plots_one_mean_per_room_and_bucket(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    t0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    with Session(engine) as s:
        for device, room in (("bliiida-a", "2.14"), ("bliiida-b", "2.14"), ("bliiida-c", "2.15")):
            register_device(s, device, "bliiida", room)
        register_device(s, "other-a", "ecole", "2.14")
        rows = [  # device, bucket offset (min), count, sum
            ("bliiida-a", 0, 2, 1600.0),
            ("bliiida-b", 0, 1, 1000.0),
            ("bliiida-c", 0, 1, 500.0),
            ("bliiida-a", 15, 1, 900.0),
            ("other-a", 0, 1, 5000.0),
        ]
        for device, minutes, count, total in rows:
            s.add(_rollup(device, t0 + timedelta(minutes=minutes), count, total))
        s.add(_rollup("bliiida-a", t0, 9, 9.0, "1h"))  # another resolution: not in the 15m plot
        s.commit()
        found = s.connection().execute(text(grafana_query(t0, t0 + timedelta(hours=1)))).all()
    engine.dispose()
    assert [(r[0], r[1], r[2]) for r in found] == [
        (t0, "2.14", 2600.0 / 3),  # two devices in one room: one mean over their readings
        (t0, "2.15", 500.0),
        (t0 + timedelta(minutes=15), "2.14", 900.0),
    ]
