"""S0 pulse meter, door contact and two-beam people counter, fed timestamped edges."""

S0 = """
import os
from node.sensors import pulse
q = bus.Edges(64)
def meter():
    m = pulse.S0Meter({"ppk": 1000, "persist_wh": 5, "path": PATH}, None, q)
    m.setup()
    return m
def pulse_at(t, width=50):
    q.push(t, 1)
    q.push(t + width, 0)
"""


def test_s0_counts_filters_and_power(fwrun, tmp_path):
    path = str(tmp_path / "energy")
    res = fwrun(setup=f"PATH = {path!r}\n" + S0, code="""
        m = meter()
        pulse_at(1000)
        q.push(2000, 1); q.push(2002, 0); q.push(2004, 1); q.push(2060, 0)   # bounce at closing
        q.push(2500, 1); q.push(2510, 0)                                     # 10 ms spike: rejected
        pulse_at(3004)
        clk.ms = 3100
        out(m.read())                      # 3 pulses = 3 Wh; 2004 (after the bounce) -> 3004: 3600 W
        clk.ms = 13504                     # no pulse for 10.5 s: at most 1000 Wh/h / 10.5 s
        out(m.read())
        clk.ms = 3004 + 3600 * 1000 + 1    # longer than one pulse takes at 1 W: power is 0
        out(m.read())
        out(os.path.exists(PATH) if hasattr(os, "path") else None)
    """)
    first, decayed, idle, _ = res
    assert first == [["energy", "Wh", 3.0], ["power", "W", 3600.0]]
    assert decayed[1][2] < 3600 and abs(decayed[1][2] - 3.6e6 / 10500) < 0.1
    assert idle == [["energy", "Wh", 3.0], ["power", "W", 0.0]]


def test_s0_energy_survives_reboot_with_bounded_writes(fwrun, tmp_path):
    path = str(tmp_path / "energy")
    res = fwrun(setup=f"PATH = {path!r}\n" + S0, code="""
        m = meter()
        for k in range(12):
            pulse_at(1000 + 1000 * k)
        clk.ms = 20000
        m.read()
        out([m.uwh, open(PATH).read()])      # 12 Wh counted: >= 5 Wh since the last write
        for k in range(3):
            pulse_at(21000 + 1000 * k)
        clk.ms = 30000
        m.read()
        out([m.uwh, open(PATH).read()])      # 3 Wh more: not worth a flash write yet
        out(meter().read()[0])               # "reboot": loses less than persist_wh
        m.flush()                            # on request (clean shutdown)
        out(meter().read()[0])
    """)
    assert res[0] == [12000000, "12000000"]
    assert res[1] == [15000000, "12000000"]
    assert res[2] == ["energy", "Wh", 12.0]
    assert res[3] == ["energy", "Wh", 15.0]


DOOR = """
from node.sensors import presence
q = bus.Edges(64)
d = presence.Door({"debounce_ms": 50}, None, q)
"""


def test_door_debounced_openings(fwrun):
    (res,) = fwrun(setup=DOOR, code="""
        for t, v in ((1000, 1), (1003, 0), (1005, 1), (4000, 0), (4010, 1), (4012, 0),
                     (9000, 1), (9020, 0)):        # one bouncing opening, a blip, a 20 ms glitch
            q.push(t, v)
        clk.ms = 10000
        a = d.read()
        q.push(11000, 1)
        clk.ms = 11060
        out([a, d.read(), d.read()])
    """)
    assert res == [[["door_open", "count", 1]], [["door_open", "count", 1]], [["door_open", "count", 0]]]


BEAMS = """
from node.sensors import presence
from node.sim.signals import People
qa = bus.Edges(128)
qb = bus.Edges(128)
DAY = 1795686126 - 1795686126 % 86400
now_s = [DAY + 9 * 3600]   # 09:00 UTC
c = presence.BeamCounter({"quiet_hour": 3, "utc_offset_h": 1}, lambda: now_s[0], qa, qb)
def feed(edges):
    for t, which, v in sorted(edges):
        (qa if which == 0 else qb).push(t, v)
"""


def test_beam_directions_and_rejections(fwrun):
    (res,) = fwrun(setup=BEAMS, code="""
        feed(People.crossing(1000, 0))                      # A then B: in
        feed(People.crossing(3000, 0))                      # in
        feed(People.crossing(5000, 1))                      # B then A: out
        feed([(7000, 0, 1), (7300, 0, 0)])                  # half crossing on A
        feed([(8000, 1, 1), (8200, 1, 0)])                  # half crossing on B
        feed([(9000, 0, 1), (9005, 1, 1), (9400, 0, 0), (9410, 1, 0)])  # simultaneous: ambiguous
        feed([(10000, 0, 1), (10150, 1, 1), (10300, 1, 0), (10500, 0, 0)])  # turned back: nothing
        feed([(12000, 0, 1), (12001, 0, 0), (12002, 0, 1), (12150, 1, 1), (12400, 0, 0),
              (12550, 1, 0)])                                # bouncing beam, still one in
        clk.ms = 20000
        out(c.read())
    """)
    assert res == [["people_in", "count", 3], ["people_out", "count", 1], ["occupancy", "count", 2]]


def test_occupancy_floor_quiet_reset_and_blocked_beam(fwrun):
    (floor, after, reset, blocked) = fwrun(setup=BEAMS, code="""
        feed(People.crossing(1000, 1) + People.crossing(2000, 1) + People.crossing(3000, 0))
        clk.ms = 5000
        out(c.read())                                   # out, out (floor at 0), then in
        feed(People.crossing(6000, 0))
        clk.ms = 8000
        out(c.read()[2])
        now_s[0] = DAY + 86400 + 2 * 3600 + 60   # next day 03:01 local (UTC+1): quiet hour
        out(c.read()[2])
        qa.push(9000, 1)
        clk.ms = 9000 + 60001
        out(fault(c.read))
    """)
    assert floor == [["people_in", "count", 1], ["people_out", "count", 2], ["occupancy", "count", 1]]
    assert after == ["occupancy", "count", 2]
    assert reset == ["occupancy", "count", 0]
    assert blocked == "beam A blocked"


def test_simulated_sources_drive_the_drivers(fwrun, tmp_path):
    (res,) = fwrun(code="""
        from node import sensors
        specs = [{"type": "s0", "ppk": 1000, "path": %r, "sim": {"power": 1800.0, "seed": 4}},
                 {"type": "beams", "sim": {"every_s": 20, "seed": 5}},
                 {"type": "door", "sim": {"every_s": 30, "seed": 6}}]
        s0, beams, door = sensors.build(specs, lambda: 1795686126 + clk.ms // 1000)
        for s in (s0, beams, door):
            s.setup()
        tot = [0, 0, 0]
        for k in range(10):
            clk.sleep(60000)
            s0.read()
            r = beams.read()
            tot[0] += r[0][2]
            tot[1] += r[1][2]
            tot[2] += door.read()[0][2]
        out([s0.read(), tot])
    """ % str(tmp_path / "e"))  # noqa: UP031
    (energy, power), (n_in, n_out, opened) = res
    # 1.8 kW for the 9 min after the first pulse: 270 Wh, bounces ignored
    assert abs(energy[2] - 1800 * 540 / 3600) <= 2
    assert abs(power[2] - 1800) < 5
    assert n_in > 5 and n_out > 5 and opened > 5
