# Sampling and reporting: each sensor is read at its own interval, each quantity is aggregated over
# the reporting window the way it should be (docs/contract.md, "Aggregation"), a report that moved
# less than its thresholds is held back until the heartbeat, and a sensor that fails loses only its
# own channels (listed in health), never the node.
import math

MEAN, SUM, LAST, LEQ, MAX, TOTAL = 0, 1, 2, 3, 4, 5
# By the driver's name (a renamed channel keeps its kind); anything else is a level: MEAN.
KINDS = {"people_in": SUM, "people_out": SUM, "door_open": SUM, "occupancy": LAST,
         "energy": TOTAL, "noise_laeq": LEQ, "noise_lamax": MAX}
STUCK_NAMES = ("temperature", "humidity", "pressure", "co2")  # noisy physical values never freeze
STUCK_S = 1800
HEARTBEAT_S = 900
SLACK_MS = 5  # a due time this close counts as now: equal intervals land in the same tick


class Slot:
    """One reported channel: the window's running aggregate, reset in place (no allocation)."""

    def __init__(self, name, unit, kind, stuck_s):
        self.name = name
        self.unit = unit
        self.kind = kind
        self.lo_name = name + "_min" if kind == MEAN else None
        self.hi_name = name + "_max" if kind == MEAN else None
        self.delta_name = name + "_delta" if kind == TOTAL else None
        self.stuck_s = stuck_s
        self.n = 0
        self.acc = 0.0
        self.lo = 0.0
        self.hi = 0.0
        self.last = 0.0
        self.carry = 0  # SUM: counts of windows held back by report-on-change
        self.base = None  # TOTAL: the total at the last report sent
        self.sent = None  # value in the last report sent (thresholds)
        self.same_v = None  # stuck detection: the repeated value and since when (ms)
        self.same_t = 0

    def add(self, v):
        k = self.kind
        if self.n == 0:
            self.acc = 0 if k == SUM else 0.0  # counts stay integers on the wire
            self.lo = v
            self.hi = v
        if k == LEQ:
            self.acc += math.pow(10.0, v / 10.0)  # energy mean, not the mean of dB figures
        elif k == SUM:
            self.acc += v
        elif k == MEAN:
            self.acc += v
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        if k == TOTAL and self.base is None:
            self.base = v
        self.last = v
        self.n += 1

    def value(self):
        k = self.kind
        if k == MEAN:
            return round(self.acc / self.n, 2)
        if k == LEQ:
            return round(10.0 * math.log10(self.acc / self.n), 1)
        if k == SUM:
            return self.acc + self.carry
        if k == MAX:
            return self.hi
        return self.last


class Entry:
    """A sensor with its schedule, channel map and fault."""

    def __init__(self, sensor, spec, label, ready):
        self.s = sensor
        self.spec = spec
        self.label = label
        self.ready = ready  # setup() done
        self.due = 0
        ch = spec.get("channels")  # ["co2"] keeps these names; {"energy": "energy_heating"} renames
        self.map = None if ch is None else (ch if isinstance(ch, dict) else {n: n for n in ch})
        self.slots = {}  # driver name -> Slot, or None for a channel left out
        self.fault = None
        self.pressure = hasattr(sensor, "pressure_pa")  # takes ambient pressure (SCD4x)
        self.poll = getattr(sensor, "poll", None)


def reason(label, e):
    msg = str(e) or e.__class__.__name__
    if msg.startswith(label + ": "):
        return msg
    return "%s: %s" % (label, msg)


class Sampler:
    def __init__(self, cfg, entries, now_ms, diff):
        self.cfg = cfg
        self.entries = entries
        self.now_ms = now_ms
        self.diff = diff
        self.slots = []  # in first-seen order: the order of the report
        self.pollers = [e for e in entries if e.poll is not None]
        self.pressure_pa = None
        self.faults = []
        self._fault_key = None
        self.reports = 0
        self.skipped = 0
        now = now_ms()
        self.last_sent = now
        for e in entries:
            e.due = now + self._ms(e.spec.get("interval_s"))
        self.report_due = now + self._ms(cfg.get("report_interval_s"))

    def _ms(self, seconds):
        if seconds is None:
            seconds = self.cfg["sample_interval_s"]
        return int(seconds * 1000)

    # --- reading ----------------------------------------------------------------------------
    def _slot(self, e, n, u):
        out = n if e.map is None else e.map.get(n)
        slot = None
        if out is not None:
            for s in self.slots:
                if s.name == out:
                    slot = s
            if slot is None:
                stuck = e.spec.get("stuck_s", STUCK_S) if n in STUCK_NAMES else 0
                slot = Slot(out, u, KINDS.get(n, MEAN), stuck)
                self.slots.append(slot)
        e.slots[n] = slot
        return slot

    def read(self, e, now):
        try:
            if not e.ready:
                e.s.setup()  # a device missing at boot is retried at its interval
                e.ready = True
            if e.pressure and self.pressure_pa is not None:
                e.s.pressure_pa = self.pressure_pa
            recs = e.s.read()
        except MemoryError:  # the node's, not the sensor's: it must not pass for a sensor fault
            raise
        except Exception as ex:  # SensorFault, or a driver bug: this sensor only
            e.fault = reason(e.label, ex)
            return
        cal = self.cfg.get("calibration")
        fault = None
        for n, u, v in recs:
            slot = e.slots.get(n, 0)
            if slot == 0:
                slot = self._slot(e, n, u)
            if slot is None:
                continue
            if cal and slot.name in cal:
                v = v + cal[slot.name]
            if slot.stuck_s:
                if v != slot.same_v:
                    slot.same_v = v
                    slot.same_t = now
                elif self.diff(now, slot.same_t) > slot.stuck_s * 1000:
                    fault = "%s: %s stuck at %s" % (e.label, slot.name, v)
                    continue  # a frozen value is not a measurement
            if n == "pressure":
                self.pressure_pa = v
            slot.add(v)
        e.fault = fault

    def poll(self):
        """Drain streaming sensors (microphone DMA, edge rings); call about every 100 ms."""
        for e in self.pollers:
            if e.ready:
                try:
                    e.poll()
                except MemoryError:
                    raise
                except Exception as ex:
                    e.fault = reason(e.label, ex)

    def _update_faults(self):
        key = 0
        for i, e in enumerate(self.entries):
            if e.fault is not None:
                key += 1 << i
        if key != self._fault_key or key:
            # Rebuilt only while something is wrong: the usual path allocates nothing.
            self._fault_key = key
            self.faults = [e.fault for e in self.entries if e.fault is not None]

    # --- schedule ---------------------------------------------------------------------------
    def tick(self):
        """Read the sensors that are due; returns the report's records when one is due, else None."""
        now = self.now_ms()
        for e in self.entries:
            if self.diff(e.due, now) <= SLACK_MS:
                self.read(e, now)
                e.due += self._ms(e.spec.get("interval_s"))
                if self.diff(e.due, now) < 0:  # fell behind (a slow bus): no burst of catch-up reads
                    e.due = now + self._ms(e.spec.get("interval_s"))
        self._update_faults()
        if self.diff(self.report_due, now) > SLACK_MS:
            return None
        self.report_due += self._ms(self.cfg.get("report_interval_s"))
        if self.diff(self.report_due, now) < 0:
            self.report_due = now + self._ms(self.cfg.get("report_interval_s"))
        return self.close(now)

    def wait_ms(self, cap=1000):
        now = self.now_ms()
        w = self.diff(self.report_due, now)
        for e in self.entries:
            d = self.diff(e.due, now)
            if d < w:
                w = d
        return 0 if w < 0 else cap if w > cap else w

    # --- reporting --------------------------------------------------------------------------
    def close(self, now):
        """End the window: the records to send, or None if report-on-change holds them back."""
        thresholds = self.cfg.get("thresholds")
        send = not thresholds or self.diff(now, self.last_sent) >= self.cfg.get("heartbeat_s", HEARTBEAT_S) * 1000
        records = []
        for s in self.slots:
            if s.n == 0:
                if s.sent is not None:
                    send = True  # a channel dropped out (fault): say so now
                    s.sent = None
                continue
            v = s.value()
            if not send:
                th = thresholds.get(s.name)
                if s.kind == SUM:
                    send = v >= th if th is not None else v != 0
                elif s.kind == TOTAL:
                    d = v - (s.base if s.base is not None else v)
                    send = d >= th if th is not None else d != 0
                else:
                    send = s.sent is None or (abs(v - s.sent) >= th if th is not None else v != s.sent)
            records.append((s.name, s.unit, v))
            if s.kind == MEAN and s.n > 1:
                records.append((s.lo_name, s.unit, round(s.lo, 2)))
                records.append((s.hi_name, s.unit, round(s.hi, 2)))
            elif s.kind == TOTAL:
                records.append((s.delta_name, s.unit, round(v - s.base, 3)))
        for s in self.slots:
            if send:
                s.carry = 0
                if s.n:
                    s.sent = s.value() if s.kind != SUM else 0
                    if s.kind == TOTAL:
                        s.base = s.last
            elif s.kind == SUM and s.n:
                s.carry += s.acc  # counts held back are not lost: they join the next report
            s.n = 0
        if not send or not records:
            self.skipped += 1 if records else 0
            return None
        self.last_sent = now
        self.reports += 1
        return records


def build(cfg, sensors_mod, clock, now_ms, diff):
    """Sensors from cfg["sensors"], each on its own: a bad spec or a missing device is a fault."""
    entries = []
    for i, spec in enumerate(cfg["sensors"]):
        label = spec.get("name") or spec.get("type") or "sensor%d" % i
        try:
            s = sensors_mod.build([spec], clock)[0]
        except Exception as ex:
            e = Entry(None, spec, label, False)
            e.fault = reason(label, ex)
            e.s = _Broken(e.fault)
            entries.append(e)
            continue
        e = Entry(s, spec, label, False)
        try:
            s.setup()
            e.ready = True
        except Exception as ex:
            e.fault = reason(label, ex)
        entries.append(e)
    return Sampler(cfg, entries, now_ms, diff)


class _Broken:
    """Stands in for a sensor whose spec could not be built: its fault stays in health."""

    def __init__(self, why):
        self.why = why

    def setup(self):
        raise ValueError(self.why)

    def read(self):
        raise ValueError(self.why)
