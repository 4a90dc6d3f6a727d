# Simulated edge sources (S0 pulses, door contact, light beams) and an I2S microphone. Edge sources
# are node.bus.Edges rings that fill themselves up to the current time when a driver pops them.
import math

from node import bus
from node.sim import Rand


def climate(spec):
    """Without a building: a day-shaped indoor climate at time t (s), deterministic by seed."""
    cfg = spec.get("sim") or {}
    seed = cfg.get("seed", 1) if isinstance(cfg, dict) else 1

    def model(t):
        day = 2 * math.pi * (t % 86400) / 86400
        r = Rand(seed + int(t) // 10)
        return {
            "temperature": cfg.get("temperature", 21.0) + 2.0 * math.sin(day - 2.0) + r.uniform(-0.05, 0.05),
            "humidity": cfg.get("humidity", 45.0) - 5.0 * math.sin(day - 2.0) + r.uniform(-0.3, 0.3),
            "pressure": cfg.get("pressure", 101325.0) + r.uniform(-20, 20),
            "co2": int(cfg.get("co2", 600) + 300 * max(0.0, math.sin(day - 2.5)) + r.uniform(-5, 5)),
            "voltage": 230.0 + r.uniform(-2, 2),
            "current": 2.0 + r.uniform(-0.1, 0.1),
            "power": cfg.get("power", 450.0),
        }

    return model


class _Timed(bus.Edges):
    def __init__(self):
        bus.Edges.__init__(self, 256)
        self.pending = []  # (t_ms, level) in time order, generated ahead

    def pop(self):
        now = bus.ticks_ms()
        while True:
            self._extend(now)
            if not self.pending or self.pending[0][0] > now:
                break
            t, v = self.pending.pop(0)
            self.push(t, v)
        return bus.Edges.pop(self)

    def _extend(self, now):
        pass


class Pulses(_Timed):
    """S0 output: a 50 ms pulse per 1/ppk kWh at power(t_s) W, with contact bounce at some edges."""

    def __init__(self, power, ppk=1000, seed=1, width_ms=50, bounce=True):
        _Timed.__init__(self)
        self.power = power
        self.ppk = ppk
        self.width = width_ms
        self.rand = Rand(seed)
        self.bounce = bounce
        self.next_t = None

    def _extend(self, now):
        if self.next_t is None:
            self.next_t = now
        while self.next_t <= now:
            t = self.next_t
            p = self.power(t / 1000)
            if p <= 0:
                self.next_t = t + 1000
                continue
            if self.bounce and self.rand.next() % 3 == 0:
                self.pending += [(t, 1), (t + 1, 0), (t + 3, 1)]  # a bounce at the closing edge
            else:
                self.pending.append((t, 1))
            self.pending.append((t + self.width, 0))
            self.next_t = t + max(int(3.6e9 / (self.ppk * p)), 2 * self.width)


class Door(_Timed):
    """A door opened every ~every_s seconds for a few seconds, with a bouncing reed contact."""

    def __init__(self, every_s=120, seed=1):
        _Timed.__init__(self)
        self.every = every_s * 1000
        self.rand = Rand(seed)
        self.next_t = None

    def _extend(self, now):
        if self.next_t is None:
            self.next_t = now + self.every // 2
        while self.next_t <= now:
            t = self.next_t
            held = 2000 + self.rand.next() % 5000
            self.pending += [(t, 1), (t + 2, 0), (t + 4, 1), (t + held, 0)]
            self.next_t = t + held + self.every // 2 + self.rand.next() % self.every


class _Beam(bus.Edges):
    def __init__(self, people, which):
        bus.Edges.__init__(self, 256)
        self.people = people
        self.which = which

    def pop(self):
        self.people.advance(bus.ticks_ms())
        return bus.Edges.pop(self)


class People:
    """People crossing a two-beam gate (beam A outside, B inside): in, out, and turn-backs."""

    def __init__(self, every_s=60, seed=1):
        self.every = every_s * 1000
        self.rand = Rand(seed)
        self.a = _Beam(self, 0)
        self.b = _Beam(self, 1)
        self.pending = []  # (t, beam, level)
        self.next_t = None
        self.sent_in = 0
        self.sent_out = 0

    @staticmethod
    def crossing(t, first, dt=150, hold=400):
        """Edges of one person crossing from beam `first` to the other."""
        second = 1 - first
        return [(t, first, 1), (t + dt, second, 1), (t + hold, first, 0), (t + hold + dt, second, 0)]

    def advance(self, now):
        if self.next_t is None:
            self.next_t = now + self.every // 2
        while self.next_t <= now + 2000:
            r = self.rand.next() % 10
            if r < 5:
                self.pending += self.crossing(self.next_t, 0)
                self.sent_in += 1
            elif r < 9:
                self.pending += self.crossing(self.next_t, 1)
                self.sent_out += 1
            else:  # a half crossing: A broken and released alone
                self.pending += [(self.next_t, 0, 1), (self.next_t + 300, 0, 0)]
            self.next_t += self.every // 2 + self.rand.next() % self.every
        self.pending.sort()
        while self.pending and self.pending[0][0] <= now:
            t, which, v = self.pending.pop(0)
            (self.a if which == 0 else self.b).push(t, v)


class Microphone:
    """machine.I2S stand-in: a tone at spl dB SPL (plus a little noise) in 32-bit slots, as an
    INMP441 with the given sensitivity would deliver; no more samples than real time allows."""

    def __init__(self, rate, spl, freq=1000.0, sensitivity_dbfs=-26.0, seed=1):
        self.rate = rate
        self.amp = 32768 * 10 ** ((sensitivity_dbfs + spl - 94) / 20)  # peak, in int16 steps
        self.w = 2 * math.pi * freq / rate
        self.n = 0
        self.t0 = bus.ticks_ms()  # samples accrue from power-up, as from a running I2S DMA
        self.rand = Rand(seed)
        self.gone = False

    def readinto(self, buf):
        """buf is an int16 array seen as int32 slots (high half at odd indices)."""
        if self.gone:
            return 0
        now = bus.ticks_ms()
        due = (now - self.t0) * self.rate // 1000 - self.n
        k = min(len(buf) // 2, max(0, due))
        for i in range(k):
            v = int(self.amp * math.sin(self.w * (self.n + i))) + self.rand.next() % 3 - 1
            buf[2 * i] = 0
            buf[2 * i + 1] = -32768 if v < -32768 else 32767 if v > 32767 else v
        self.n += k
        return 4 * k
