"""Building insight against hand-computed figures: ICONE worked examples from the formula, and a fixed
simulated school day (Tuesday 10 March 2026, Europe/Paris) plus a Saturday, stored through the real
ingest path (`store_batch`: readings and their rollups), read back per room and building, over the
API as JSON and CSV, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet import contract, insight
from fleet.api import create_app
from fleet.auth import Role, create_token
from fleet.calendar import Calendar
from fleet.ingest import Received, store_batch
from fleet.insight import data, indices
from fleet.insight.indices import Category
from fleet.models import Building, Room, Site
from fleet.registry import register_device
from tests.fleet.conftest import bearer

PARIS = ZoneInfo("Europe/Paris")
TUESDAY, SATURDAY = date(2026, 3, 10), date(2026, 3, 14)
WEEK = (date(2026, 3, 9), date(2026, 3, 15))
SCHOOL = {"mon", "tue", "wed", "thu", "fri"}
CALENDAR = Calendar.model_validate(
    {
        "tz": "Europe/Paris",
        "week": {d: [{"start": "08:30", "end": "11:30"}, {"start": "13:30", "end": "16:30"}] for d in SCHOOL},
    }
)


# --- ICONE worked examples (hand-computed from 2.5/log10(2)·log10(1 + f1 + 3·f2)) ----------------


def official(f1: float, f2: float) -> float:
    """The formula as the texts write it, to check our log2 form against."""
    return 2.5 / math.log10(2) * math.log10(1 + f1 + 3 * f2)


@pytest.mark.parametrize(
    ("values", "index", "value", "level"),
    [
        ([420, 800, 1000, 1000], 0, 0.0, "nul"),  # 1000 is not above 1000: f1 = 0
        ([1000.5, 1200, 1700], 3, 2.5, "élevé"),  # all in ]1000, 1700]: 2.5, a half, rounds up
        ([1700.5, 2500], 5, 5.0, "extrême"),  # all above 1700: f2 = 1
        ([500, 1100], 1, 2.5 * math.log2(1.5), "faible"),  # f1 = 1/2: 1.462
        ([500, 500, 1800], 3, 2.5, "élevé"),  # f2 = 1/3: log2(2) exactly, 2.5 rounds up
        ([500, 500, 1500], 1, 2.5 * math.log2(4 / 3), "faible"),  # f1 = 1/3: 1.038
        ([500, 1800], 3, 2.5 * math.log2(2.5), "élevé"),  # f2 = 1/2: 3.305
        ([500, 1200, 1800], 3, 2.5 * math.log2(7 / 3), "élevé"),  # f1 = f2 = 1/3: 3.056
        ([500, 1800, 1800], 4, 2.5 * math.log2(3), "très élevé"),  # f2 = 2/3: 3.962
        ([1200, 1800, 1800, 1800], 5, 2.5 * math.log2(3.5), "extrême"),  # f1 1/4, f2 3/4: 4.518
        ([500] * 3 + [1700] * 1, 1, 2.5 * math.log2(1.25), "faible"),  # 1700 counts in f1: 0.805
    ],
)
def test_icone_worked_examples(values, index, value, level):
    found = indices.icone(values)
    assert (found.index, found.level, found.values) == (index, level, len(values))
    assert found.value == pytest.approx(value, abs=1e-12)
    assert found.value == pytest.approx(official(found.f1, found.f2), abs=1e-12)


def test_icone_edges():
    assert indices.icone([]) is None
    assert [indices.round_half_up(x) for x in (0.49, 0.5, 1.5, 2.5, 4.4999)] == [0, 1, 2, 3, 4]
    assert indices.icone_of_shares(1, 0) == 2.5 and indices.icone_of_shares(0, 1) == 5.0
    with pytest.raises(ValueError, match="f1 \\+ f2 ≤ 1"):
        indices.icone_of_shares(0.7, 0.5)


def test_en16798_categories():
    co2 = [indices.co2_category(v) for v in (950, 950.1, 1200, 1750, 1750.1)]
    assert co2 == [Category.I, Category.II, Category.II, Category.III, Category.IV]
    assert indices.co2_category(1000, outdoor_ppm=450) == Category.I  # 550 above outdoors
    heating = [indices.temperature_category(t, True) for t in (21, 23, 23.5, 19, 18.9, 25.1)]
    assert heating == [Category.I, Category.I, Category.II, Category.III, Category.IV, Category.IV]
    cooling = [indices.temperature_category(t, False) for t in (24, 23.2, 26.5, 27.5)]
    assert cooling == [Category.I, Category.II, Category.III, Category.IV]
    assert indices.heating_season(date(2026, 3, 10)) and not indices.heating_season(date(2026, 6, 1))


def test_laeq_is_an_energy_mean():
    assert indices.laeq([]) is None
    assert indices.laeq([60, 60]) == pytest.approx(60)
    assert indices.laeq([50, 70]) == pytest.approx(10 * math.log10((1e5 + 1e7) / 2))  # 67.03, not 60


def test_slots_hold_a_level_for_a_heartbeat_only():
    slots = data.Slots(600)
    t0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    slots.add(t0, 2, 1800.0, 950.0, 950.0, t0.replace(minute=5))  # slot 08:00, last at 08:05
    starts = [data.epoch(t0) + 600 * i for i in range(4)]  # 08:00, 08:10, 08:20, 08:30
    assert [v for _, v in slots.levels(starts)] == [900.0, 950.0, 950.0, None]  # 08:20 is 15 min on


# --- the fixed simulated day ------------------------------------------------------------------------


def at(day: date, hh: int, mm: int) -> datetime:
    return datetime.combine(day, time(hh, mm), PARIS)


def co2_of(hm: tuple[int, int]) -> float:
    """The classroom's CO2: constant over each 10-minute slot of the occupied spans."""
    spans = [
        ((8, 30), (9, 30), 800),
        ((9, 30), (10, 30), 1200),
        ((10, 30), (11, 30), 1800),
        ((11, 30), (13, 30), 2500),  # lunch, not occupied: must not count
        ((13, 30), (15, 30), 900),
        ((15, 30), (16, 0), 1000),  # on the boundary: not in f1
        ((16, 0), (16, 30), 1700),  # on the boundary: in f1, not f2
    ]
    return next((v for a, b, v in spans if a <= hm < b), 420)


def noise_of(hm: tuple[int, int]) -> float:
    if hm == (8, 29) or hm[0] == 18:
        return 90.0  # just before the span, and an evening event: not occupied
    if hm[0] == 9:
        return 50.0 if hm[1] < 30 else 70.0
    return 45.0


DOORS = {  # (room device, (hh, mm)) → (people in, people out)
    ("room-a", (8, 25)): (20, 0),
    ("room-a", (10, 0)): (5, 0),
    ("room-a", (11, 35)): (0, 25),
    ("room-a", (13, 25)): (22, 0),
    ("room-a", (16, 35)): (0, 22),
    ("room-a", (17, 0)): (0, 1),  # one more out than in: presence stays at 0
    ("room-b", (10, 0)): (10, 0),
    ("room-b", (10, 30)): (0, 10),
}


def occupied(hm: tuple[int, int]) -> bool:
    return (8, 30) <= hm < (11, 30) or (13, 30) <= hm < (16, 30)


def simulated_messages() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    seq: dict[str, int] = {}

    def send(device: str, when: datetime, records: list[dict]) -> None:
        seq[device] = seq.get(device, 0) + 1
        out.append(
            (f"maille/v1/{device}/telemetry", {"seq": seq[device], "bt": when.timestamp(), "e": records})
        )

    for minute in range(7 * 60, 19 * 60):  # the classroom's node, 07:00–19:00, every minute
        hm = divmod(minute, 60)
        when = at(TUESDAY, *hm)
        records = []
        if hm not in [(14, m) for m in range(10)]:  # 14:00–14:09 missing: 13:59's 900 ppm holds
            records.append({"n": "co2", "u": "ppm", "v": co2_of(hm)})
        temperature = 22.0 if hm < (12, 0) else 24.5 if occupied(hm) else 18.0
        records.append({"n": "temperature", "u": "Cel", "v": temperature})
        records.append({"n": "noise_laeq", "u": "dB", "v": noise_of(hm)})
        for device in ("room-a", "room-b"):
            if (device, hm) in DOORS:
                came, left = DOORS[device, hm]
                counts = [
                    {"n": "people_in", "u": "count", "v": came},
                    {"n": "people_out", "u": "count", "v": left},
                ]
                if device == "room-a":
                    records += counts
                else:
                    send("room-b", when, counts)
        send("room-a", when, records)
    for minute in range(0, 24 * 60, 5):  # the meter, every 5 minutes: 12 kW occupied, 3 kW not; 1.8 kW
        hm = divmod(minute, 60)
        send(
            "meter", at(TUESDAY, *hm), [{"n": "energy_delta", "u": "Wh", "v": 1000 if occupied(hm) else 250}]
        )
        send("meter", at(SATURDAY, *hm), [{"n": "energy_delta", "u": "Wh", "v": 150}])
    return out


@functools.cache
def simulated_batch() -> list[Received]:
    """The simulated messages as ingest receives them, decoded once for every test."""
    batch = []
    for topic, payload in simulated_messages():
        raw = json.dumps(payload).encode()
        batch.append(Received(topic, raw, datetime.now(UTC), contract.parse(topic, raw)))
    return batch


@pytest.fixture
def building(engine) -> int:
    """The school's building id: three rooms with a node each, and the school's calendar."""
    with Session(engine) as s:
        for device, room in (("room-a", "2.14"), ("room-b", "2.15"), ("meter", "tgbt")):
            register_device(s, device, "ecole", room)
        site = s.exec(select(Site).where(Site.slug == "ecole")).one()
        site.calendar = CALENDAR.model_dump(mode="json")
        s.add(site)
        s.commit()
        return s.exec(select(Building.id).where(Building.site_id == site.id)).one()


@pytest.fixture
def school(engine, building) -> int:
    """The building with its simulated Tuesday and Saturday stored through ingest."""
    batch = simulated_batch()
    with Session(engine) as s:
        result = store_batch(s, batch, events=False)
    assert result.stored_messages == len(batch) and not result.rejected
    return building


def rooms(engine) -> dict[str, int]:
    with Session(engine) as s:
        return {r.name: r.id for r in s.exec(select(Room))}


def minutes(day: insight.AirDay, what: str) -> list[int]:
    """Minutes in EN 16798-1 categories I–IV."""
    return [getattr(day, f"{what}_cat_{c}_min") for c in ("i", "ii", "iii", "iv")]


def test_air_and_noise_on_the_simulated_day(engine, school):
    with Session(engine) as s:
        found = insight.place(s, school)
        days = insight.air_days(s, found, *WEEK)
        period = insight.icone_period(s, found, *WEEK)
        rows = insight.noise_hours(s, found, *WEEK)
    assert len(days) == 1  # one room with CO2, one day with data
    day = days[0]
    assert (day.room, day.day, day.calendar, day.occupied_min) == ("2.14", TUESDAY, "site", 360)
    # 36 slots: 6×800, 6×1200, 6×1800, 12×900 (one held over its gap), 3×1000, 3×1700
    assert (day.co2_values, day.icone, day.icone_level) == (36, 2, "moyen")
    assert (day.f1, day.f2) == (pytest.approx(9 / 36), pytest.approx(6 / 36))
    assert day.icone_value == pytest.approx(2.5 * math.log2(1 + 0.25 + 3 / 6))  # 2.018
    assert day.co2_mean == pytest.approx(41700 / 36) and day.co2_max == 1800
    assert (day.min_above_800, day.min_above_1500) == (300, 90)
    assert minutes(day, "co2") == [180, 90, 30, 60]
    assert (day.season, day.temperature_values, day.temperature_mean) == ("heating", 36, pytest.approx(23.25))
    assert minutes(day, "temp") == [180, 0, 180, 0]
    [p] = period
    assert (p.room, p.school_days, p.values, p.icone, p.icone_value) == ("2.14", 1, 36, 2, day.icone_value)
    got = {r.hour.astimezone(PARIS).hour: (r.occupied_min, r.readings, r.laeq, r.min_above_65) for r in rows}
    assert sorted(got) == [8, 9, 10, 11, 13, 14, 15, 16]  # lunch and the evening are not occupied
    assert got[8] == (30, 30, pytest.approx(45), 0)  # 08:29's 90 dB(A) is before the span
    assert got[9] == (60, 60, pytest.approx(10 * math.log10((1e5 + 1e7) / 2)), 30)  # 67.03 dB(A)
    assert got[16] == (30, 30, pytest.approx(45), 0)
    assert all(r.min_above_80 == 0 for r in rows)


def test_occupancy_from_door_counts(engine, school):
    with Session(engine) as s:
        rows = insight.occupancy_days(s, insight.place(s, school), *WEEK)
    got = {r.room: (r.day, r.people_in, r.people_out, r.peak, r.peak_at, r.occupied_hours) for r in rows}
    ten = at(TUESDAY, 10, 0).astimezone(UTC)
    assert got == {
        # 08:25–11:35 and 13:25–16:35: 380 minutes with someone in; the 17:00 extra exit is clamped
        "2.14": (TUESDAY, 47, 48, 25, ten, pytest.approx(380 / 60)),
        "2.15": (TUESDAY, 10, 10, 10, ten, pytest.approx(0.5)),
        None: (TUESDAY, 57, 58, 35, ten, pytest.approx(380 / 60)),  # the building: 25 + 10 at 10:00
    }


def test_energy_per_day_month_and_operat_year(engine, school):
    with Session(engine) as s:
        found = insight.place(s, school)
        by_day = {r.start: r for r in insight.energy_periods(s, found, *WEEK)}
        [month] = insight.energy_periods(s, found, *WEEK, period="month")
        year = insight.operat(s, found, 2026)
    tue, sat, mon = by_day[TUESDAY], by_day[SATURDAY], by_day[WEEK[0]]
    # Tuesday: 6 occupied hours at 12 kW (72 kWh), 18 hours at 3 kW (54 kWh)
    assert (tue.kwh, tue.occupied_kwh, tue.unoccupied_kwh) == (
        pytest.approx(126),
        pytest.approx(72),
        pytest.approx(54),
    )
    assert (tue.occupied_hours, tue.kwh_per_occupied_hour) == (6, pytest.approx(21))
    assert (tue.night_baseload_w, tue.weekend_baseload_w) == (pytest.approx(3000), None)
    # Saturday: 1.8 kW all day, no occupied hours
    assert (sat.kwh, sat.occupied_hours, sat.kwh_per_occupied_hour) == (pytest.approx(43.2), 0, None)
    assert (sat.night_baseload_w, sat.weekend_baseload_w) == (pytest.approx(1800), pytest.approx(1800))
    assert (mon.days_with_data, mon.kwh, mon.occupied_hours) == (0, None, 6)
    assert (month.start, month.days_with_data, month.kwh, month.occupied_hours) == (
        WEEK[0],
        2,
        pytest.approx(169.2),
        30,
    )
    assert month.kwh_per_occupied_hour == pytest.approx(169.2 / 6)  # over the metered days' hours
    assert month.night_baseload_w == pytest.approx(24_000 / 10)
    assert month.weekend_baseload_w == pytest.approx(1800)
    # 2026 has 261 weekdays of 6 occupied hours
    assert (year.annee, year.batiment, year.consommation, year.unite) == (2026, "main", 169.2, "kWh EF")
    assert (year.jours_mesures, year.jours_annee, year.compteurs, year.heures_occupation) == (2, 365, 1, 1566)


def test_a_site_without_calendar_falls_back_to_weekdays_8_to_18(engine, school):
    with Session(engine) as s:
        site = s.exec(select(Site).where(Site.slug == "ecole")).one()
        site.calendar = None
        s.add(site)
        s.commit()
        found = insight.place(s, school)
        [day] = insight.air_days(s, found, *WEEK)
        tue = {r.start: r for r in insight.energy_periods(s, found, *WEEK)}[TUESDAY]
    assert day.calendar.startswith("default: Mon–Fri 08:00–18:00") and day.occupied_min == 600
    assert day.co2_values == 60  # 08:00–18:00, lunch included now
    assert tue.occupied_kwh == pytest.approx((360 * 200 + 240 * 50) / 1000)


# --- the API ------------------------------------------------------------------------------------------


@pytest.fixture
def api(engine, token):
    return TestClient(create_app(engine), headers=bearer(token("viewer")))


def test_api_reports_as_json_and_csv(api, school, engine):
    base = f"/api/v1/insight/buildings/{school}"
    week = {"start": "2026-03-09", "end": "2026-03-15"}
    air = api.get(f"{base}/air", params=week).json()
    assert [(r["room"], r["day"], r["icone"], r["icone_level"]) for r in air] == [
        ("2.14", "2026-03-10", 2, "moyen")
    ]
    text = api.get(f"{base}/air", params=week | {"format": "csv"})
    assert text.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(text.text)))
    assert (row["room"], row["icone"], row["min_above_1500"]) == ("2.14", "2", "90")
    assert api.get(f"{base}/icone", params=week).json()[0]["icone"] == 2
    rooms_b = api.get(f"{base}/occupancy", params=week | {"room": rooms(engine)["2.15"]}).json()
    assert [(r["room"], r["peak"]) for r in rooms_b] == [("2.15", 10), (None, 10)]
    energy_csv = api.get(f"{base}/energy", params=week | {"period": "month"}, headers={"Accept": "text/csv"})
    [month] = list(csv.DictReader(io.StringIO(energy_csv.text)))
    assert (month["period"], float(month["kwh"])) == ("month", pytest.approx(169.2))
    noise = api.get(f"{base}/noise", params=week).json()
    assert len(noise) == 8 and noise[1]["laeq"] == pytest.approx(67.03, abs=0.01)
    operat = api.get(f"{base}/operat", params={"year": 2026, "format": "csv"})
    [declared] = list(csv.DictReader(io.StringIO(operat.text)))
    assert (declared["type_energie"], declared["consommation"], declared["compteurs"]) == (
        "Électricité",
        "169.2",
        "1",
    )


def assert_problem(response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_api_refuses_what_it_should(building, engine, token):
    api = TestClient(create_app(engine), headers=bearer(token("viewer")))
    base = f"/api/v1/insight/buildings/{building}"
    with Session(engine) as s:
        register_device(s, "other-1", "elsewhere", "1.01")
    elsewhere = bearer(token("viewer", "elsewhere"))
    assert_problem(api.get(f"{base}/air", headers=elsewhere), 403, "not allowed on this site")
    assert_problem(api.get("/api/v1/insight/buildings/999/energy"), 404, "no building 999")
    assert_problem(
        api.get(f"{base}/air", params={"start": "2026-03-10", "end": "2026-03-09"}), 422, "before it starts"
    )
    assert_problem(
        api.get(f"{base}/energy", params={"start": "2024-01-01", "end": "2026-01-01"}), 422, "at most 366"
    )
    assert_problem(
        api.get(f"{base}/noise", params={"start": "2026-01-01", "end": "2026-06-30"}), 422, "at most 92 days"
    )
    assert_problem(api.get(f"{base}/energy", params={"period": "week"}), 422, "period")
    assert_problem(api.get(f"{base}/operat"), 422, "year")
    assert api.get(f"{base}/air", params={"start": "2026-03-09", "end": "2026-03-09"}).json() == []
    with Session(engine) as s:
        co2_only = bearer(create_token(s, "co2-only", Role.integrator, ["ecole"], metrics=["co2"])[1])
    assert_problem(api.get(f"{base}/energy", headers=co2_only), 403, "only these metrics: co2")
    assert api.get(f"{base}/icone", headers=co2_only).status_code == 200
