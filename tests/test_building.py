"""A virtual classroom node (real micropython, every sensor of boards/sim-classroom.toml, its
building and chips in its world process) through the broker and the fleet's ingest into its
database, over an accelerated school day (the 128 KB heap run is tests/firmware/sampling/test_heap.py):
the stored CO2 rises in lessons and falls at breaks, people in and out balance by the evening, and the
stored energy matches the load the simulation generated within 1 %."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fleet.registry import register_device
from tests.helpers import node_config, wait_until

BOARDS = Path(__file__).resolve().parent.parent / "boards"
END_H = 16.5  # everyone has left at 15:30; the run goes on a little into the evening
LESSONS = [(8.0, 9.5), (9.8333, 11.5), (12.5, 14.0), (14.3333, 15.5)]  # node/sim/building.py CLASSROOM
BREAKS = [(9.5, 9.8333), (11.5, 12.5), (14.0, 14.3333)]


def board_config(name: str, device: str, broker, **over) -> dict:
    """A node config from a board file: its sensors (named by their keys) and its building."""
    b = tomllib.loads((BOARDS / f"{name}.toml").read_text())
    sensors = [dict(spec, name=key) for key, spec in b["sensors"].items()]
    cfg = node_config(device, broker, board=name, sensors=sensors, building=dict(b["building"]))
    cfg.update(over)
    return cfg


def readings(engine, device: str) -> dict[str, list[tuple[float, float]]]:
    """name -> [(hour of the simulated day, value)] in time order."""
    out: dict[str, list[tuple[float, float]]] = {}
    with engine.connect() as c:
        q = text("SELECT name, value, ts FROM reading WHERE device_id = :d ORDER BY ts, seq")
        for name, value, ts in c.execute(q, {"d": device}):
            if isinstance(ts, str):  # SQLite through a text query
                ts = datetime.fromisoformat(ts)
            out.setdefault(name, []).append((ts.hour + ts.minute / 60 + ts.second / 3600, value))
    return out


def mean(points, lo, hi):
    vals = [v for h, v in points if lo <= h < hi]
    assert vals, f"no readings between {lo:.2f} h and {hi:.2f} h"
    return sum(vals) / len(vals)


def truth(board_root: Path) -> list[tuple[float, float, int, int, int]]:
    """The simulation's log: (hour, true Wh, people in, people out, people present) per minute."""
    rows = []
    for line in (board_root / "building.log").read_text().split("\n"):
        if line.strip():
            t, wh, n_in, n_out, people, _ = line.split()
            rows.append(((int(t) % 86400) / 3600, float(wh), int(n_in), int(n_out), int(people)))
    return rows


@pytest.mark.postgres_long  # the physics is the same on both databases; SQLite runs it in `make test`
def test_classroom_school_day(fleet_service, broker, device_credentials, boards, tmp_path):
    fleet = fleet_service()
    device, pw = device_credentials()
    with Session(fleet.engine) as s:
        register_device(s, device, "test-site", room="2.14", board="sim-classroom")
        s.commit()
    cfg = board_config(
        "sim-classroom", device, broker, sample_interval_s=0.25, report_interval_s=0.5, health_interval_s=2
    )
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}).start()

    def latest_hour():
        co2 = readings(fleet.engine, device).get("co2") or [(0.0, 0.0)]
        return co2[-1][0] >= END_H

    wait_until(latest_hour, 170, interval=1.0, what=f"the simulated day to reach {END_H} h")
    vb.power_cut()
    sent = set(vb.sent_seqs())

    def all_stored():
        with fleet.engine.connect() as c:
            q = text("SELECT DISTINCT seq FROM reading WHERE device_id = :d")
            return {r[0] for r in c.execute(q, {"d": device})} >= sent

    wait_until(all_stored, 20, what="every sent report stored")
    console = vb.console()
    assert "MemoryError" not in console and "Traceback" not in console
    r = readings(fleet.engine, device)

    # CO2: up through each lesson, down through each break, and higher in lessons than at breaks.
    co2 = r["co2"]
    for lo, hi in LESSONS:
        assert mean(co2, hi - 0.25, hi) > mean(co2, lo + 0.1, lo + 0.35) + 150, (lo, hi)
    for lo, hi in BREAKS:
        assert mean(co2, hi - 0.15, hi) < mean(co2, lo - 0.25, lo) - 150, (lo, hi)
    lesson_mean = sum(mean(co2, lo + 0.25, hi) for lo, hi in LESSONS) / len(LESSONS)
    break_mean = sum(mean(co2, lo + 0.1, hi) for lo, hi in BREAKS) / len(BREAKS)
    assert lesson_mean > break_mean + 300

    # People: everyone who came in went out, and the room is empty in the evening.
    t = truth(vb.root)
    n_in = sum(v for _, v in r["people_in"])
    n_out = sum(v for _, v in r["people_out"])
    assert n_in == n_out == t[-1][2] == t[-1][3] > 50
    assert r["occupancy"][-1][1] == 0
    assert max(v for _, v in r["occupancy"]) == 25
    assert sum(v for _, v in r["door_open"]) > 10

    # Energy: the S0 total at the last report against the simulation's true Wh at that time.
    hour, energy = r["energy"][-1]
    true_wh = min(t, key=lambda row: abs(row[0] - hour))[1]
    assert abs(energy - true_wh) <= 0.01 * true_wh, (energy, true_wh)
    deltas = sum(v for _, v in r["energy_delta"])
    assert abs(deltas - (energy - r["energy"][0][1] + r["energy_delta"][0][1])) < 1e-6

    # Noise follows activity: a lesson is louder than the empty room in the evening.
    assert mean(r["noise_laeq"], 8.5, 9.4) > mean(r["noise_laeq"], 15.8, END_H) + 15
