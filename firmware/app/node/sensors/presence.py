# Door contact and two-beam people counting from timestamped GPIO edges (node.bus.Edges).
# Level 1 = door open / beam broken.
from node import bus as hw


def _now():
    return hw.ticks_ms()  # looked up at call time, so a simulated clock can stand in


class Debounce:
    """A level counts only once it has held for hold_ms (reed contacts bounce for a few ms)."""

    def __init__(self, hold_ms):
        self.hold_ms = hold_ms
        self.level = 0
        self.raw = 0
        self.raw_t = None

    def edge(self, t, level):
        """Feed a raw edge; returns (t, level) of a settled change, else None."""
        out = self.settle(t)
        self.raw = level
        self.raw_t = t
        return out

    def settle(self, now):
        if self.raw != self.level and self.raw_t is not None and \
                hw.ticks_diff(now, self.raw_t) >= self.hold_ms:
            self.level = self.raw
            return self.raw_t, self.level
        return None


class Door:
    """Counts door openings (closed -> open transitions) per reporting window."""

    def __init__(self, spec, clock, bus=None, now_ms=None):
        self.edges = bus or hw.edges(spec, "pin", "door", clock)
        self.now_ms = now_ms or _now
        self.db = Debounce(spec.get("debounce_ms", 50))
        self.opened = 0

    def setup(self):
        pass

    def _change(self, c):
        if c is not None and c[1] == 1:
            self.opened += 1

    def poll(self):
        e = self.edges.pop()
        while e is not None:
            self._change(self.db.edge(e[0], e[1]))
            e = self.edges.pop()
        self._change(self.db.settle(self.now_ms()))

    def read(self):
        self.poll()
        n = self.opened
        self.opened = 0
        return [("door_open", "count", n)]


IDLE, ONE, BOTH, VOID = 0, 1, 2, 3


class BeamCounter:
    """Direction from the order of two beams: A then B = in, B then A = out.

    A crossing is counted when both beams are clear again, from the first beam broken and the last
    one released: first A, last B = in; first B, last A = out; first == last (someone stepped in
    and turned back, or one beam broken and released alone) counts nothing. Both beams broken
    within simultaneous_ms of each other cannot tell a direction and is ignored too.
    Occupancy = in - out, never below zero, reset in the configured quiet hour (local time).
    """

    def __init__(self, spec, clock, bus_a=None, bus_b=None, now_ms=None):
        self.clock = clock
        self.a = bus_a or hw.edges(spec, "pin_a", "beam", clock)
        self.b = bus_b or hw.edges(spec, "pin_b", "beam", clock)
        self.now_ms = now_ms or _now
        self.simul_ms = spec.get("simultaneous_ms", 20)
        self.blocked_ms = spec.get("blocked_ms", 60000)
        self.quiet_hour = spec.get("quiet_hour", 3)
        self.utc_offset_s = int(spec.get("utc_offset_h", 0) * 3600)
        self.dba = Debounce(spec.get("debounce_ms", 10))
        self.dbb = Debounce(spec.get("debounce_ms", 10))
        self.state = IDLE
        self.first = None
        self.first_t = 0
        self.broken = [0, 0]
        self.broken_t = [0, 0]
        self.last_release = None
        self.n_in = 0
        self.n_out = 0
        self.occupancy = 0
        self.reset_day = None

    def setup(self):
        pass

    def beam(self, which, t, level):
        """A settled change of beam 0 (A) or 1 (B)."""
        self.broken[which] = level
        self.broken_t[which] = t
        s = self.state
        if level:
            if s == IDLE:
                self.state = ONE
                self.first = which
                self.first_t = t
            elif s == ONE and which != self.first:
                self.state = VOID if hw.ticks_diff(t, self.first_t) < self.simul_ms else BOTH
        else:
            self.last_release = which
            if not self.broken[0] and not self.broken[1]:
                if s == BOTH and self.first != which:
                    self._count(self.first == 0)
                self.state = IDLE  # ONE (half crossing), VOID, or a turn-back: nothing counted

    def _count(self, inward):
        if inward:
            self.n_in += 1
            self.occupancy += 1
        else:
            self.n_out += 1
            if self.occupancy > 0:
                self.occupancy -= 1

    def poll(self):
        # Edges of the two beams are interleaved by time: take them in order across both queues.
        ea = self.a.pop()
        eb = self.b.pop()
        while ea is not None or eb is not None:
            if eb is None or (ea is not None and hw.ticks_diff(ea[0], eb[0]) <= 0):
                self._settle(ea[0])  # changes settled before this edge come first
                self.dba.edge(ea[0], ea[1])
                ea = self.a.pop()
            else:
                self._settle(eb[0])
                self.dbb.edge(eb[0], eb[1])
                eb = self.b.pop()
        now = self.now_ms()
        self._settle(now)
        return now

    def _settle(self, t):
        # Apply the settled changes of both beams in time order.
        ca = self.dba.settle(t)
        cb = self.dbb.settle(t)
        if ca is not None and cb is not None and hw.ticks_diff(cb[0], ca[0]) < 0:
            self.beam(1, cb[0], cb[1])
            cb = None
        if ca is not None:
            self.beam(0, ca[0], ca[1])
        if cb is not None:
            self.beam(1, cb[0], cb[1])

    def _quiet_reset(self):
        local = self.clock() + self.utc_offset_s
        day = local // 86400
        if (local % 86400) // 3600 == self.quiet_hour and day != self.reset_day:
            self.occupancy = 0
            self.reset_day = day

    def read(self):
        now = self.poll()
        self._quiet_reset()
        for which in (0, 1):
            if self.broken[which] and hw.ticks_diff(now, self.broken_t[which]) > self.blocked_ms:
                raise hw.SensorFault("beam %s blocked" % "AB"[which])
        out = [("people_in", "count", self.n_in), ("people_out", "count", self.n_out),
               ("occupancy", "count", self.occupancy)]
        self.n_in = 0
        self.n_out = 0
        return out
