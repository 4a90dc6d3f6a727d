# Simulated buildings on an accelerated clock, deterministic from a seed: a classroom, an office, a
# corridor and a plant room. One model per board drives the simulated devices (climate and CO2
# registers, the SDM's registers, S0 pulses, door and beam edges, the microphone's level), so the
# real drivers read it through the simulated buses. The truth (energy, people in and out) is
# appended to `building.log` in the board folder each simulated minute, for tests to compare.
#
# cfg: {"kind": "classroom", "seed": 3, "speed": 120, "start_h": 7.0, ...overrides of PARAM_NAMES}
#
# This is the physical world of a virtual board. It runs in the board's world process
# (provisioning/world.py), outside the node's heap; driver tests may still run it in their own
# process, so it stays compact: its tables are bytes and small ints, the day's plan is an int array,
# edges wait as ints (t << 1 | level).
import array
import math
import time

from node import bus
from node.sim import Rand

# Activities, by index: noise dB(A) and twice the air changes per hour.
LESSON, BREAK, EMPTY, WORK, MOVE, PLANT = 0, 1, 2, 3, 4, 5
NOISE_DB = b"\x3c\x2e\x1e\x34\x44\x4b"  # 60 46 30 52 68 75
ACH_X2 = b"\x03\x0c\x01\x04\x06\x02"  # 1.5 6 0.5 2 3 1

# Timetables: (minute of the day / 5, people from then on, activity) triples. People move over
# `spread_min` after that time.
CLASSROOM = bytes((93, 25, MOVE, 96, 25, LESSON, 114, 2, BREAK, 118, 25, LESSON, 138, 0, BREAK,
                   150, 25, LESSON, 168, 3, BREAK, 172, 25, LESSON, 186, 0, EMPTY))
OFFICE = bytes((96, 8, WORK, 144, 3, WORK, 156, 8, WORK, 204, 0, EMPTY))
CORRIDOR = bytes((84, 0, EMPTY, 192, 0, EMPTY))
PLANTROOM = bytes((0, 0, PLANT))
# A corridor sees the classrooms' breaks: (minute / 5, people passing through: in, then out again).
CORRIDOR_PASSES = bytes((93, 60, 114, 80, 118, 80, 138, 90, 150, 90, 168, 80, 172, 80, 186, 70))

PARAM_NAMES = ("volume_m3", "co2_lph", "base_w", "w_per_person", "lights_w", "spread_min")
KINDS = ("classroom", "office", "corridor", "plantroom")
PARAMS = ((180, 20, 60, 12, 720, 4), (120, 20, 150, 120, 300, 40), (300, 20, 40, 0, 200, 4),
          (200, 0, 1800, 0, 0, 1))
TIMETABLES = (CLASSROOM, OFFICE, CORRIDOR, PLANTROOM)
OUTDOOR_CO2 = 420
OUTDOOR_C = 6
STEP_MS = 2000  # model step (simulated): the state is exact for piecewise-constant inputs
LOG_MS = 60000
DAY_MS = 86400000
H_MS = 3600000
RING = 256  # edges an input holds between two reads, as node.bus.Edges on a board

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


class Building:
    def __init__(self, cfg):
        self.kind = cfg.get("kind", "classroom")
        if self.kind not in KINDS:
            raise ValueError("unknown building kind %r" % self.kind)
        k = KINDS.index(self.kind)
        self.volume, self.co2_lph, self.base_w, self.w_pp, self.lights_w, spread = \
            [cfg.get(n, v) for n, v in zip(PARAM_NAMES, PARAMS[k])]
        self.spread_ms = int(spread * 60000)
        self.timetable = TIMETABLES[k]
        self.seed = cfg.get("seed", 1)
        self.speed = cfg.get("speed", 1)
        self.start_ms = int(cfg.get("start_h", 7.0) * H_MS)
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
        # Edge sources (handed to the drivers by node.sim.edges_for).
        self.beam_a = _Src(self)
        self.beam_b = _Src(self)
        self.door = _Src(self)
        self.s0 = _Src(self)
        self.day = None
        self.base = 0  # the plan's day start (ms)
        self.cross = None  # the day's crossings: ms into it << 2 | direction (1 in, 0 out, 2 turn back)
        self.cross_i = 0
        self.last_cross = None  # ms of the latest crossing emitted
        self.doors = None  # open, close, open, close ... ms into the day
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
        self._plan(self.t // DAY_MS)
        self.advance(self.t)

    # --- the day's plan -----------------------------------------------------------------------
    def _plan(self, day):
        """Crossings and door openings of a day, from the timetable (so in and out balance)."""
        r = Rand(self.seed * 1000 + day)
        spread = self.spread_ms
        ct = []  # ms into the day << 1 | direction (1 in, 0 out)
        tt = CORRIDOR_PASSES if self.kind == "corridor" else self.timetable
        step = 2 if self.kind == "corridor" else 3
        prev = 0
        for i in range(0, len(tt), step):
            at = tt[i] * 300000
            if step == 2:
                n = tt[i + 1]
                for j in range(n):  # in, then out again 5-60 s later
                    t = at + j * spread // n + r.next() % 1000
                    ct.append(t << 1 | 1)
                    ct.append((t + 5000 + r.next() % 55000) << 1)
                continue
            moves = tt[i + 1] - prev
            k = abs(moves)
            for j in range(k):
                ct.append((at + j * spread // k + r.next() % 1000) << 1 | (1 if moves > 0 else 0))
            prev = tt[i + 1]
        ct.sort()
        # Two people never share the gate: at least 1.5 s apart, so each crossing is seen alone.
        last = -10000
        cross = array.array("i")
        for c in ct:
            t = c >> 1
            if t < last + 1500:
                t = last + 1500
            cross.append(t << 2 | c & 1)
            if r.next() % 12 == 0:  # now and then someone turns back in the gate: counts nothing
                cross.append((t + 700) << 2 | 2)
                t += 1400
            last = t
        ct = None
        # The door opens for each group of crossings less than 8 s apart.
        doors = array.array("i")
        for c in cross:
            t = c >> 2
            if doors and t - doors[-1] < 8000:
                doors[-1] = t + 3000
            else:
                doors.append(t - 1000)
                doors.append(t + 3000)
        self.cross = cross
        self.cross_i = 0
        self.doors = doors
        self.door_i = 0
        self.day = day
        self.base = day * DAY_MS

    # --- advancing ------------------------------------------------------------------------------
    def _activity(self, h):
        tt = self.timetable
        act = EMPTY
        for i in range(0, len(tt), 3):
            if h * 12 >= tt[i]:
                act = tt[i + 2]
        return act

    def _power(self, h):
        if self.kind == "plantroom":
            # Night baseload; pumps and ventilation from 6:00, kitchen peak at noon, off after 19:00.
            p = 1800.0
            if 6 <= h < 19:
                p += 7000 * min(1, h - 6) * min(1, 19 - h)
            if 11 <= h < 13.5:
                p += 5000 * math.sin(math.pi * (h - 11) / 2.5)
            return p * (1 + 0.03 * Rand(self.seed + self.t // 60000).uniform(-1, 1))
        p = self.base_w + self.w_pp * self.people
        if self.people or (self.kind == "corridor" and 7 <= h < 16.5):
            p += self.lights_w
        return p

    def advance(self, now):
        """Step the state up to simulated ms `now` on a fixed grid of STEP_MS, so the day does not
        depend on when the devices happen to look (calls with an earlier time change nothing)."""
        while self.t + STEP_MS <= now:
            if (self.t + 1) // DAY_MS != self.day:
                self._plan((self.t + 1) // DAY_MS)
            dt = STEP_MS
            self._emit(self.t + dt)
            h = (self.t % DAY_MS) / H_MS
            ach = ACH_X2[self._activity(h)] / 2
            dt_h = dt / H_MS
            # CO2: well-mixed box, exact for constant people and ventilation over the step.
            # ~20 L/h of CO2 per seated child, into the room's volume: ppm per hour.
            gen = self.people * self.co2_lph / 1000 / self.volume * 1e6
            css = OUTDOOR_CO2 + gen / ach
            self.co2 = css + (self.co2 - css) * math.exp(-ach * dt_h)
            # Temperature: heating to the setpoint in school hours, people's heat, ventilation loss.
            setp = 21 if 6 <= h < 16 else 16
            k = 3 + 0.15 * ach
            teq = (3 * setp + 0.15 * ach * OUTDOOR_C + 0.03 * self.people) / k
            self.temp = teq + (self.temp - teq) * math.exp(-k * dt_h)
            rheq = 35 + 1.2 * self.people / ach
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
        per = 1000 / self.ppk  # Wh per pulse
        rate = p / H_MS  # Wh per ms
        s0 = self.s0
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
                s0.add(ti, 1)
                s0.add(ti + 1, 0)
            s0.add(ti + 3, 1)
            s0.add(ti + 50, 0)

    def _emit(self, upto):
        """Move people (and their edges) whose crossing starts before `upto`."""
        cross = self.cross
        base = self.base
        a = self.beam_a
        b = self.beam_b
        while self.cross_i < len(cross) and base + (cross[self.cross_i] >> 2) < upto:
            c = cross[self.cross_i]
            t = base + (c >> 2)
            d = c & 3
            if d == 2:  # turned back: beam A only
                a.add(t, 1)
                a.add(t + 300, 0)
            else:  # in: A (outside) then B; out: B then A
                first, second = (a, b) if d == 1 else (b, a)
                first.add(t, 1)
                second.add(t + 150, 1)
                first.add(t + 400, 0)
                second.add(t + 550, 0)
                if d == 1:
                    self.people += 1
                    self.n_in += 1
                else:
                    if self.people:
                        self.people -= 1
                    self.n_out += 1
            self.last_cross = t
            self.cross_i += 1
        ds = self.doors
        door = self.door
        while self.door_i < len(ds) and base + ds[self.door_i] < upto:
            o = base + ds[self.door_i]
            door.add(o, 1)
            door.add(o + 2, 0)  # the reed contact bounces
            door.add(o + 5, 1)
            door.add(base + ds[self.door_i + 1], 0)
            self.door_i += 2

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
        v["pressure"] = 101325 + 300 * math.sin(now / DAY_MS) + r.uniform(-10, 10)
        v["power"] = self.power
        v["voltage"] = 230 + r.uniform(-2, 2)
        phases = 3 if self.kind == "plantroom" else 1
        v["current"] = self.power / phases / v["voltage"] / 0.95
        if phases == 3:
            v["power"] = self.power / 3  # SDM630 phase registers; total = 3 x
        return v

    def spl(self):
        """Sound level (dB SPL) now: the activity, people moving, a little variation per minute."""
        now = self.ms()
        self.advance(now)
        level = NOISE_DB[self._activity((now % DAY_MS) / H_MS)]
        if self.kind == "corridor" and self.last_cross is not None and now - self.last_cross < 60000:
            level = 68
        return level + Rand(self.seed + now // 60000).uniform(-3, 3)


def _diff(a, b):
    return a - b  # the simulated clock does not wrap within a test's days


class _Src:
    """Edges of one input (a beam, the door contact, the S0 output) as a driver pops them from an
    IRQ ring of RING edges: the building adds them up to the current simulated time, as ints
    t << 1 | level. When the driver falls behind (a stalled board on a fast clock), the oldest are
    lost and counted, as a real ring would."""

    def __init__(self, b):
        self.b = b
        self.pending = []
        self.dropped = 0
        self.attached = False  # only a source a driver reads collects edges (bounded memory)

    def attach(self):
        self.attached = True
        return self

    def add(self, t, v):
        if self.attached:
            p = self.pending
            if len(p) >= RING:
                p.pop(0)
                self.dropped += 1
            e = t << 1 | v
            p.append(e)
            if len(p) > 1 and e < p[-2]:
                p.sort()

    def pop(self):
        # Every source is advanced to the same instant, as IRQs would: two beams never disagree
        # about what has happened, so a driver can merge them by time.
        now = bus.ticks_ms()
        self.b.advance(now)
        p = self.pending
        if p and p[0] >> 1 <= now:
            e = p.pop(0)
            return e >> 1, e & 1
        return None


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
        self.table = array.array("f", [math.sin(2 * math.pi * j / period) for j in range(period)])
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
