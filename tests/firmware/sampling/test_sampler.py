"""Per-sensor intervals, per-window aggregation, report-on-change and sensor faults (node/sampler.py)."""

import math


def test_one_read_per_window_by_default_gives_todays_payload(fwrun):
    (reps,) = fwrun("""
        s = make({"sample_interval_s": 1, "sensors": [{"type": "series", "series": [
            ["temperature", "Cel", [20.0, 21.0, 22.0]], ["humidity", "%RH", [40.0, 41.0]]]}]})
        out(run_to(s, 3000))
    """)
    assert reps == [
        {"temperature": 20.0, "humidity": 40.0},
        {"temperature": 21.0, "humidity": 41.0},
        {"temperature": 22.0, "humidity": 40.0},
    ]


def test_aggregation_per_quantity(fwrun):
    (reps,) = fwrun("""
        s = make({"sample_interval_s": 1, "report_interval_s": 4, "sensors": [
            {"type": "series", "series": [
                ["temperature", "Cel", [20.0, 22.0, 21.0, 25.0]],
                ["noise_laeq", "dB", [60.0, 70.0, 60.0, 70.0]],
                ["noise_lamax", "dB", [66.0, 80.0, 71.0, 72.0]],
                ["people_in", "count", [1, 0, 2, 3]],
                ["occupancy", "count", [1, 1, 3, 6]],
                ["energy", "Wh", [100.0, 101.5, 103.0, 104.0, 105.0, 106.0, 107.0, 110.0]]]},
            {"type": "series", "interval_s": 2, "series": [["co2", "ppm", [500, 700]]]}]})
        out(run_to(s, 8000))
    """)
    first, second = reps
    laeq = round(10 * math.log10((10**6 + 10**7) / 2), 1)  # energy mean, not 65
    assert first == {
        "temperature": 22.0,
        "temperature_min": 20.0,
        "temperature_max": 25.0,
        "noise_laeq": laeq,
        "noise_lamax": 80.0,
        "people_in": 6,
        "occupancy": 6,
        "energy": 104.0,
        "energy_delta": 4.0,  # from the first reading after boot
        "co2": 600.0,
        "co2_min": 500,
        "co2_max": 700,
    }
    assert second["energy"] == 110.0 and second["energy_delta"] == 6.0  # since the last report
    assert second["people_in"] == 6 and second["co2"] == 600.0


def test_report_on_change_holds_back_small_moves_but_not_counts(fwrun):
    (reps, skipped) = fwrun("""
        s = make({"sample_interval_s": 1, "heartbeat_s": 6, "thresholds": {"temperature": 0.5},
                  "sensors": [{"type": "series", "series": [
                      ["temperature", "Cel", [20.0, 20.1, 20.2, 20.1, 21.0, 21.1, 21.0, 21.1, 21.2, 21.1,
                                              21.0, 21.1, 21.0, 21.1, 21.0, 21.1]],
                      ["people_in", "count", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]]},
                      {"type": "series", "series": [["door_open", "count", [0, 0, 0, 0, 0, 0, 0, 0,
                                                                           0, 0, 0, 0, 2, 0, 0, 0]]]}]})
        out(run_to(s, 16000))
        out(s.skipped)
    """)
    temps = [r["temperature"] for r in reps]
    # 20.0 (first), 21.0 (moved 1.0), the heartbeat 6 s after it, the door openings at once.
    assert temps[:2] == [20.0, 21.0]
    assert {"temperature": 21.0, "people_in": 0, "door_open": 2} in reps
    assert any(r["door_open"] == 0 and r["temperature"] in (21.0, 21.1) for r in reps[2:])  # heartbeat
    assert len(reps) == 4 and skipped == 12


def test_counts_held_back_are_carried_into_the_next_report(fwrun):
    (reps,) = fwrun("""
        s = make({"sample_interval_s": 1, "thresholds": {"people_in": 5, "temperature": 1},
                  "sensors": [{"type": "series", "series": [["temperature", "Cel", [20.0]],
                                                            ["people_in", "count", [0, 2, 2, 2, 0]]]}]})
        out(run_to(s, 5000))
    """)
    assert [r["people_in"] for r in reps] == [0, 6]  # 2 + 2 held back, sent with the third 2


SIM = """
def board():
    return make({"sample_interval_s": 1, "sensors": [
        {"type": "scd4x", "name": "co2", "sim": {}, "channels": ["co2"]},
        {"type": "sht4x", "name": "climate", "sim": {}},
        {"type": "bme280", "name": "baro", "sim": {}, "channels": ["pressure"]}]})
def dev(s, name):
    e = [e for e in s.entries if e.label == name][0]
    i2c = e.s.dev.i2c if hasattr(e.s, "dev") else e.s.i2c
    return list(i2c.devices.values())[0]
"""


def test_a_sensor_that_disappears_or_sends_bad_crcs_loses_only_its_channels(fwrun):
    res = fwrun(
        setup=SIM,
        code="""
        s = board()
        out([sorted(run_to(s, 6000)[-1]), s.faults])
        dev(s, "co2").gone = True                   # unplugged mid-run
        out([sorted(run_to(s, 8000)[-1]), s.faults])
        dev(s, "climate").bad_crc = 1000            # a noisy bus: every answer corrupt
        out([sorted(run_to(s, 10000)[-1]), s.faults])
        dev(s, "co2").gone = False                  # plugged back, and the bus is clean again
        dev(s, "climate").bad_crc = 0
        out([sorted(run_to(s, 12000)[-1]), s.faults])
    """,
    )
    assert res[0] == [["co2", "humidity", "pressure", "temperature"], []]
    assert res[1] == [["humidity", "pressure", "temperature"], ["co2: scd4x: no answer at 0x62"]]
    assert res[2] == [["pressure"], ["co2: scd4x: no answer at 0x62", "climate: sht4x: crc error"]]
    assert res[3] == [["co2", "humidity", "pressure", "temperature"], []]


def test_a_device_missing_at_boot_is_retried_and_a_bad_spec_is_a_fault(fwrun):
    (first, later) = fwrun(
        setup=SIM,
        code="""
        from node.sim import I2C
        import node.sim as simmod
        real = simmod.i2c_for
        simmod.i2c_for = lambda kind, spec, clock: I2C()      # nothing on the bus at power-up
        s = make({"sample_interval_s": 1, "sensors": [
            {"type": "sht4x", "name": "climate", "sim": {}},
            {"type": "nonesuch", "name": "ghost"},
            {"type": "series", "series": [["co2", "ppm", [500]]]}]})
        out([run_to(s, 1000), s.faults])
        e = s.entries[0]
        e.s.dev.i2c = real("sht4x", {"sim": {}}, None)       # the sensor is connected
        out([sorted(run_to(s, 3000)[-1]), s.faults])
    """,
    )
    assert first == [
        [{"co2": 500}],
        ["climate: sht4x: no answer at 0x44", "ghost: unknown sensor type 'nonesuch'"],
    ]
    assert later == [["co2", "humidity", "temperature"], ["ghost: unknown sensor type 'nonesuch'"]]


def test_a_stuck_value_is_dropped_and_flagged(fwrun):
    (before, stuck) = fwrun("""
        s = make({"sample_interval_s": 1, "sensors": [{"type": "series", "stuck_s": 5, "series": [
            ["co2", "ppm", [812]], ["noise_laeq", "dB", [40.0]]]}]})
        out(run_to(s, 5000)[-1])
        out([run_to(s, 8000)[-1], s.faults])
    """)
    assert before == {"co2": 812, "noise_laeq": 40.0}
    assert stuck == [{"noise_laeq": 40.0}, ["series: co2 stuck at 812"]]
