# S0 pulse energy meter (DIN 43864 / IEC 62053-31): one pulse per 1/ppk kWh, pulse on-time and
# off-time >= 30 ms. Edges come timestamped from an IRQ ring buffer (node.bus.Edges); a level must
# hold min_pulse_ms to count, so contact bounce and spikes are ignored. Energy survives reboots in a
# small file written atomically at most every persist_wh (bounded flash wear, bounded loss).
from node import store
from node import bus as hw


def _now():
    return hw.ticks_ms()  # looked up at call time, so a simulated clock can stand in

DEFAULTS = {"ppk": 1000, "min_pulse_ms": 30, "persist_wh": 10, "min_power_w": 1.0,
            "path": "data/energy"}


class S0Meter:
    def __init__(self, spec, clock, bus=None, now_ms=None):
        self.cfg = dict(DEFAULTS)
        self.cfg.update(spec)
        self.edges = bus or hw.edges(spec, "pin", "s0", clock)
        self.now_ms = now_ms or _now
        self.uwh_per_pulse = 1000000000 // self.cfg["ppk"]  # µWh: exact for usual constants
        self.min_ms = self.cfg["min_pulse_ms"]
        # No pulse for as long as one pulse takes at the minimum power means the power is ~0.
        self.timeout_ms = int(3.6e9 / (self.cfg["ppk"] * self.cfg["min_power_w"]))
        self.path = self.cfg["path"]
        self.acc = 0  # accepted level
        self.raw = 0
        self.raw_t = None
        self.last = None  # ticks of the last counted pulse
        self.interval = None  # ms between the last two pulses
        self.uwh = 0
        self.saved_uwh = 0
        self.pulses = 0

    def setup(self):
        if "/" in self.path:
            store.ensure_dir(self.path.rsplit("/", 1)[0])
        self.uwh = store.read_int(self.path, 0)
        self.saved_uwh = self.uwh

    def _accept(self, t):
        # The raw level has held min_ms since raw_t: it is real.
        self.acc = self.raw
        if self.acc:  # pulse start
            self.pulses += 1
            self.uwh += self.uwh_per_pulse
            if self.last is not None:
                self.interval = hw.ticks_diff(self.raw_t, self.last)
            self.last = self.raw_t

    def edge(self, t, level):
        if self.raw != self.acc and self.raw_t is not None and hw.ticks_diff(t, self.raw_t) >= self.min_ms:
            self._accept(t)
        self.raw = level
        self.raw_t = t

    def poll(self):
        e = self.edges.pop()
        while e is not None:
            self.edge(e[0], e[1])
            e = self.edges.pop()
        now = self.now_ms()
        if self.raw != self.acc and self.raw_t is not None and hw.ticks_diff(now, self.raw_t) >= self.min_ms:
            self._accept(now)
        if self.uwh - self.saved_uwh >= self.cfg["persist_wh"] * 1000000:
            self.flush()
        return now

    def flush(self):
        store.write_atomic(self.path, str(self.uwh))
        self.saved_uwh = self.uwh

    def power_w(self, now):
        if self.interval is None or self.last is None:
            return 0.0
        since = hw.ticks_diff(now, self.last)
        if since > self.timeout_ms:
            return 0.0
        # Between pulses the power is at most what a pulse right now would give.
        dt = since if since > self.interval else self.interval
        return 3.6e9 / (self.cfg["ppk"] * dt)

    def read(self):
        now = self.poll()
        lost = getattr(self.edges, "dropped", 0)
        if lost:  # flagged once; the count goes on from here
            self.edges.dropped = 0
            raise hw.SensorFault("s0: %d edges lost (buffer overflow)" % lost)
        return [("energy", "Wh", self.uwh // 1000 / 1000), ("power", "W", round(self.power_w(now), 1))]
