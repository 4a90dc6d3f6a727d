# Simulated buildings on an accelerated clock, deterministic from a seed: a classroom, an office, a
# corridor and a plant room. One model per board drives the simulated devices (climate and CO2
# registers, the SDM's registers, S0 pulses, door and beam edges, the microphone's level), so the
# real drivers read it through the simulated buses. The truth (energy, people in and out) is
# appended to `building.log` in the board folder each simulated minute, for tests to compare.
#
# cfg: {"kind": "classroom", "seed": 3, "speed": 120, "start_h": 7.0, ...overrides of PARAMS}
import math
import time

from node import bus
from node.sim import Rand

# Activities: (noise dB(A), air changes per hour, windows open)
LESSON, BREAK, EMPTY, WORK, MOVE, PLANT = 0, 1, 2, 3, 4, 5
ACTIVITY = {LESSON: (60.0, 1.5), BREAK: (46.0, 6.0), EMPTY: (30.0, 0.5), WORK: (52.0, 2.0),
            MOVE: (68.0, 3.0), PLANT: (75.0, 1.0)}

# Timetables: (hour, people from then on, activity). People move over `spread_min` after the hour.
CLASSROOM = ((7.75, 25, MOVE), (8.0, 25, LESSON), (9.5, 2, BREAK), (9.8333, 25, LESSON),
             (11.5, 0, BREAK), (12.5, 25, LESSON), (14.0, 3, BREAK), (14.3333, 25, LESSON),
             (15.5, 0, EMPTY))
OFFICE = ((8.0, 8, WORK), (12.0, 3, WORK), (13.0, 8, WORK), (17.0, 0, EMPTY))
PLANTROOM = ((0.0, 0, PLANT),)
# A corridor sees the classrooms' breaks: people pass through (in, then out again).
CORRIDOR_PASSES = ((7.75, 60), (9.5, 80), (9.8333, 80), (11.5, 90), (12.5, 90), (14.0, 80),
                   (14.3333, 80), (15.5, 70))

PARAMS = {
    "classroom": {"volume_m3": 180.0, "co2_lph": 20.0, "base_w": 60.0, "w_per_person": 12.0,
                  "lights_w": 720.0, "timetable": CLASSROOM, "spread_min": 4.0},
    "office": {"volume_m3": 120.0, "co2_lph": 20.0, "base_w": 150.0, "w_per_person": 120.0,
               "lights_w": 300.0, "timetable": OFFICE, "spread_min": 40.0},
    "corridor": {"volume_m3": 300.0, "co2_lph": 20.0, "base_w": 40.0, "w_per_person": 0.0,
                 "lights_w": 200.0, "timetable": ((7.0, 0, EMPTY), (16.0, 0, EMPTY)), "spread_min": 4.0},
    "plantroom": {"volume_m3": 200.0, "co2_lph": 0.0, "base_w": 1800.0, "w_per_person": 0.0,
                  "lights_w": 0.0, "timetable": PLANTROOM, "spread_min": 1.0},
}
OUTDOOR_CO2 = 420.0
OUTDOOR_C = 6.0
STEP_MS = 2000  # model step (simulated): the state is exact for piecewise-constant inputs
LOG_MS = 60000

_current = None


def current():
    return _current


def install(cfg):
    """Make this board's world the building (once): bus time, node clock, simulated devices."""
    global _current
    if _current is None:
        _current = Building(cfg)
        _current.start()
    return _current


def load_w(kind, h, people, rand_x):
    """The load profile (W) at hour h of the day."""
    if kind == "plantroom":
        # Night baseload; pumps and ventilation from 6:00, kitchen peak at noon, off after 19:00.
        p = 1800.0
        if 6.0 <= h < 19.0:
            p += 7000.0 * min(1.0, h - 6.0) * min(1.0, 19.0 - h)
        if 11.0 <= h < 13.5:
            p += 5000.0 * math.sin(math.pi * (h - 11.0) / 2.5)
        return p * (1.0 + 0.03 * rand_x)
    return 0.0  # rooms: computed from their parameters in Building._power


class Building:
    def __init__(self, cfg):
        self.kind = cfg.get("kind", "classroom")
        if self.kind not in PARAMS:
            raise ValueError("unknown building kind %r" % self.kind)
        self.p = dict(PARAMS[self.kind])
        for k in cfg:
            if k in self.p:
                self.p[k] = cfg[k]
        self.seed = cfg.get("seed", 1)
        self.speed = cfg.get("speed", 1)
        self.start_ms = int(cfg.get("start_h", 7.0) * 3600000)
        self.log_path = cfg.get("log", "building.log")
        self.wall0 = bus.wall_ms()
        now = int(time.time())
        self.midnight = now - now % 86400  # simulated day 0 is today (UTC)
        # State, advanced by advance(): time, people, CO2, temperature, humidity, energy.
        self.t = self.start_ms
        self.people = 0
        self.co2 = OUTDOOR_CO2 + 30.0
        self.temp = 17.0
        self.rh = 40.0
        self.wh = 0.0
        self.n_in = 0
        self.n_out = 0
        self.power = 0.0
        self.values = {"temperature": 0.0, "humidity": 0.0, "pressure": 101325.0, "co2": 0,
                       "voltage": 230.0, "current": 0.0, "power": 0.0}
        self.next_log = self.start_ms
        self.ppk = 1000
        self.pulse_acc = 0.0  # Wh since the last S0 pulse
        # Edge sources (made by the devices' factories) and their pending edges.
        self.beam_a = _Src(self)
        self.beam_b = _Src(self)
        self.door = _Src(self)
        self.s0 = _Src(self)
        self.day = None
        self.cross_t = []  # this day's crossings: start ms and direction (1 in, 0 out, 2 turn-back)
        self.cross_d = []
        self.cross_i = 0
        self.doors = []  # (open ms, close ms)
        self.door_i = 0
        self.rand = Rand(self.seed)

    # --- clocks -----------------------------------------------------------------------------
    def ms(self):
        """Simulated ms since day 0's midnight (fits ticks_ms for about 12 simulated days)."""
        return self.start_ms + int(bus.wall_diff(bus.wall_ms(), self.wall0) * self.speed)

    def sleep(self, ms):
        time.sleep(ms / 1000 / self.speed)

    def epoch(self):
        return self.midnight + self.ms() // 1000

    def start(self):
        bus.ticks_ms = self.ms
        bus.ticks_diff = _diff
        bus.sleep_ms = self.sleep
        from node.port import port

        if hasattr(port, "set_clock"):
            port.set_clock(self.epoch)
        self._plan(self.t // 86400000)
        self.advance(self.t)

    # --- the day's plan -----------------------------------------------------------------------
    def _plan(self, day):
        """Crossings and door openings of a day, from the timetable (so in and out balance)."""
        r = Rand(self.seed * 1000 + day)
        base = day * 86400000
        spread = int(self.p["spread_min"] * 60000)
        ct = []
        if self.kind == "corridor":
            for h, n in CORRIDOR_PASSES:
                for k in range(n):  # in, then out again 5-60 s later
                    t = base + int(h * 3600000) + k * spread // n + r.next() % 1000
                    ct.append((t, 1))
                    ct.append((t + 5000 + r.next() % 55000, 0))
        else:
            prev = 0
            for h, n, _ in self.p["timetable"]:
                moves = n - prev
                k = abs(moves)
                for i in range(k):
                    ct.append((base + int(h * 3600000) + i * spread // k + r.next() % 1000, 1 if moves > 0 else 0))
                prev = n
        ct.sort()
        # Two people never share the gate: at least 1.5 s apart, so each crossing is seen alone.
        last = -10000
        out_t = []
        out_d = []
        for t, d in ct:
            if t < last + 1500:
                t = last + 1500
            out_t.append(t)
            out_d.append(d)
            if r.next() % 12 == 0:  # now and then someone turns back in the gate: counts nothing
                out_t.append(t + 700)
                out_d.append(2)
                t += 1400
            last = t
        self.cross_t = out_t
        self.cross_d = out_d
        self.cross_i = 0
        # The door opens for each group of crossings less than 8 s apart.
        doors = []
        for t in out_t:
            if doors and t - doors[-1][1] < 8000:
                doors[-1][1] = t + 3000
            else:
                doors.append([t - 1000, t + 3000])
        self.doors = doors
        self.door_i = 0
        self.day = day

    # --- advancing ------------------------------------------------------------------------------
    def _activity(self, h):
        act = EMPTY
        for th, _, a in self.p["timetable"]:
            if h >= th:
                act = a
        return act

    def _power(self, h):
        if self.kind == "plantroom":
            return load_w(self.kind, h, 0, Rand(self.seed + self.t // 60000).uniform(-1, 1))
        p = self.p["base_w"] + self.p["w_per_person"] * self.people
        if self.people or (self.kind == "corridor" and 7.0 <= h < 16.5):
            p += self.p["lights_w"]
        return p

    def advance(self, now):
        """Step the state up to simulated ms `now` on a fixed grid of STEP_MS, so the day does not
        depend on when the devices happen to look (calls with an earlier time change nothing)."""
        while self.t + STEP_MS <= now:
            if (self.t + 1) // 86400000 != self.day:
                self._plan((self.t + 1) // 86400000)
            dt = STEP_MS
            self._emit(self.t + dt)
            h = (self.t % 86400000) / 3600000.0
            act = self._activity(h)
            ach = ACTIVITY[act][1]
            dt_h = dt / 3600000.0
            # CO2: well-mixed box, exact for constant people and ventilation over the step.
            # ~20 L/h of CO2 per seated child, into the room's volume: ppm per hour.
            gen = self.people * self.p["co2_lph"] / 1000.0 / self.p["volume_m3"] * 1e6
            css = OUTDOOR_CO2 + gen / ach
            self.co2 = css + (self.co2 - css) * math.exp(-ach * dt_h)
            # Temperature: heating to the setpoint in school hours, people's heat, ventilation loss.
            setp = 21.0 if 6.0 <= h < 16.0 else 16.0
            k = 3.0 + 0.15 * ach
            teq = (3.0 * setp + 0.15 * ach * OUTDOOR_C + 0.03 * self.people) / k
            self.temp = teq + (self.temp - teq) * math.exp(-k * dt_h)
            rheq = 35.0 + 1.2 * self.people / ach
            self.rh = rheq + (self.rh - rheq) * math.exp(-ach * dt_h)
            # Energy: the load is constant over the step; S0 pulses at each 1/ppk kWh crossed.
            p = self._power(h)
            self.power = p
            self._pulses(self.t, dt, p)
            self.wh += p * dt_h
            self.t += dt
            if self.t >= self.next_log:
                self._log()
                self.next_log += LOG_MS

    def _pulses(self, t, left, p):
        per = 1000.0 / self.ppk  # Wh per pulse
        rate = p / 3600000.0  # Wh per ms
        while rate > 0:
            ms = (per - self.pulse_acc) / rate
            if ms > left:
                self.pulse_acc += rate * left
                return
            t += ms
            left -= ms
            self.pulse_acc = 0.0
            ti = int(t)
            if self.rand.next() % 4 == 0:  # a bouncing contact now and then
                self.s0.add(ti, 1)
                self.s0.add(ti + 1, 0)
            self.s0.add(ti + 3, 1)
            self.s0.add(ti + 50, 0)

    def _emit(self, upto):
        """Move people (and their edges) whose crossing starts before `upto`."""
        ct = self.cross_t
        while self.cross_i < len(ct) and ct[self.cross_i] < upto:
            t = ct[self.cross_i]
            d = self.cross_d[self.cross_i]
            if d == 1:  # in: A (outside) then B
                self._cross(t, self.beam_a, self.beam_b)
                self.people += 1
                self.n_in += 1
            elif d == 0:
                self._cross(t, self.beam_b, self.beam_a)
                if self.people:
                    self.people -= 1
                self.n_out += 1
            else:
                self.beam_a.add(t, 1)
                self.beam_a.add(t + 300, 0)
            self.cross_i += 1
        ds = self.doors
        while self.door_i < len(ds) and ds[self.door_i][0] < upto:
            o, c = ds[self.door_i]
            self.door.add(o, 1)
            self.door.add(o + 2, 0)  # the reed contact bounces
            self.door.add(o + 5, 1)
            self.door.add(c, 0)
            self.door_i += 1

    @staticmethod
    def _cross(t, first, second):
        first.add(t, 1)
        second.add(t + 150, 1)
        first.add(t + 400, 0)
        second.add(t + 550, 0)

    def _log(self):
        try:
            with open(self.log_path, "a") as f:
                f.write("%d %.3f %d %d %d %d\n" % (self.midnight + self.t // 1000, self.wh, self.n_in,
                                                  self.n_out, self.people, int(self.co2)))
        except OSError:
            pass

    # --- what the devices see -------------------------------------------------------------------
    def model(self):
        """The physical values now, in one dict reused by every device (no allocation per read)."""
        now = self.ms()
        self.advance(now)
        v = self.values
        r = Rand(self.seed + now // 5000)  # sensor noise, new every 5 s as an SCD4x frame
        v["co2"] = int(self.co2 + r.uniform(-8, 8))
        v["temperature"] = self.temp + r.uniform(-0.05, 0.05)
        v["humidity"] = self.rh + r.uniform(-0.3, 0.3)
        v["pressure"] = 101325.0 + 300.0 * math.sin(now / 86400000.0) + r.uniform(-10, 10)
        v["power"] = self.power
        v["voltage"] = 230.0 + r.uniform(-2, 2)
        phases = 3 if self.kind == "plantroom" else 1
        v["current"] = self.power / phases / v["voltage"] / 0.95
        if phases == 3:
            v["power"] = self.power / 3  # SDM630 phase registers; total = 3 x
        return v

    def spl(self):
        """Sound level (dB SPL) now: the activity, people moving, a little variation per minute."""
        now = self.ms()
        self.advance(now)
        h = (now % 86400000) / 3600000.0
        level = ACTIVITY[self._activity(h)][0]
        if self.kind == "corridor" and self.cross_i and now - self.cross_t[self.cross_i - 1] < 60000:
            level = 68.0
        return level + Rand(self.seed + now // 60000).uniform(-3, 3)


def _diff(a, b):
    return a - b  # the simulated clock does not wrap within a test's days


class _Src(bus.Edges):
    """An edge ring filled by the building up to the current simulated time."""

    def __init__(self, b):
        bus.Edges.__init__(self, 256)
        self.b = b
        self.pending = []
        self.attached = False  # only a source a driver reads collects edges (bounded memory)

    def attach(self):
        self.attached = True
        return self

    def add(self, t, v):
        if self.attached:
            self.pending.append((t, v))

    def fill(self, now):
        if self.pending:
            self.pending.sort()
            while self.pending and self.pending[0][0] <= now:
                t, v = self.pending.pop(0)
                self.push(t, v)

    def pop(self):
        # Every source is filled to the same instant, as IRQs would: two beams' rings never
        # disagree about what has happened, so a driver can merge them by time.
        now = bus.ticks_ms()
        b = self.b
        b.advance(now)
        for src in (b.beam_a, b.beam_b, b.door, b.s0):
            src.fill(now)
        return bus.Edges.pop(self)


def sdm(b, slave=1):
    """The SDM's registers with the building's load and its true imported energy (a plant room's
    meter; node.sim.devices is loaded only for a board that has one)."""
    from node.sim import devices

    class SDM(devices.SDM):
        def registers(self):
            regs = devices.SDM.registers(self)
            regs[0x48] = b.wh / 1000.0
            return regs

    return SDM(b.model, slave)


class Microphone:
    """machine.I2S stand-in at the building's level now (a 1 kHz tone in 32-bit slots). Audio runs in
    real time (it is sound, not the building's clock) and, as the I2S DMA ring, holds at most
    `ring_ms`: older samples are lost."""

    def __init__(self, b, rate, sensitivity_dbfs=-26.0, ring_ms=300):
        self.b = b
        self.rate = rate
        self.n = 0
        self.gone = False
        self.t0 = bus.wall_ms()
        self.sens = sensitivity_dbfs
        self.ring = rate * ring_ms // 1000
        self.overruns = 0
        period = rate // 1000  # a 1 kHz tone: A-weighting is 0 dB there, so LAeq = SPL
        self.table = [math.sin(2 * math.pi * j / period) for j in range(period)]
        self.period = period

    def readinto(self, buf):
        if self.gone:
            return 0
        due = bus.wall_diff(bus.wall_ms(), self.t0) * self.rate // 1000 - self.n
        if due > self.ring:
            self.overruns += 1
            self.n += due - self.ring
            due = self.ring
        k = len(buf) // 2
        if due < k:
            k = due if due > 0 else 0
        if k == 0:
            return 0
        amp = 32768 * 10 ** ((self.sens + self.b.spl() - 94) / 20)
        tab = self.table
        per = self.period
        j = self.n % per
        for i in range(k):
            v = int(amp * tab[j])
            buf[2 * i] = 0
            buf[2 * i + 1] = -32768 if v < -32768 else 32767 if v > 32767 else v
            j += 1
            if j == per:
                j = 0
        self.n += k
        return 4 * k
