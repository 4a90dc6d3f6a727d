# Simulated hardware behind the same bus interfaces as machine.I2C / UART / I2S / pin IRQs, so the
# real drivers run against byte-level fakes. Values come from a model (a callable of time), noise
# and events from a seed; every device can be made to disappear (OSError / silence) or to send a
# bad CRC, to exercise the drivers' fault paths.
from node import bus


class Clock:
    """A virtual millisecond clock: install() makes node.bus sleep by advancing it, instantly."""

    def __init__(self, start_ms=0):
        self.ms = start_ms

    def ticks(self):
        return self.ms

    def sleep(self, ms):
        self.ms += int(ms)

    def install(self):
        bus.ticks_ms = self.ticks
        bus.sleep_ms = self.sleep
        return self


class Rand:
    """A small LCG so runs are repeatable on every runtime (no dependence on `random`)."""

    def __init__(self, seed):
        self.x = (seed * 2654435761 + 1) & 0x7FFFFFFF

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x

    def uniform(self, lo, hi):
        return lo + (hi - lo) * (self.next() % 100000) / 100000.0


class Device:
    """Fault switches shared by every simulated device."""

    gone = False  # no answer: OSError on I2C, silence on UART
    bad_crc = 0  # corrupt the CRC of the next N answers
    switch = None  # a file in the board folder that, while present, says "gone" or "crc"
    switched = ""

    def check(self):
        # Lets a test break a running virtual board's sensor from outside the process.
        if self.switch is None:
            return
        try:
            with open(self.switch) as f:
                what = f.read().strip()
        except OSError:
            what = ""
        if what != self.switched:  # only changes of the file act: tests may set gone themselves
            self.switched = what
            self.gone = what == "gone"
            self.bad_crc = 0
        if what == "crc":
            self.bad_crc = 1

    def note(self, what):
        # The commands seen, for tests; only the latest, so a day-long run does not fill the heap.
        if len(self.log) >= 32:
            self.log.pop(0)
        self.log.append(what)

    def corrupt(self):
        if self.bad_crc:
            self.bad_crc -= 1
            return True
        return False


class I2C:
    """machine.I2C stand-in: devices by address; an absent or `gone` device NACKs (OSError 19)."""

    def __init__(self):
        self.devices = {}

    def attach(self, addr, dev):
        self.devices[addr] = dev
        return dev

    def _dev(self, addr):
        d = self.devices.get(addr)
        if d is not None:
            d.check()
        if d is None or d.gone:
            raise OSError(19)  # ENODEV, what machine.I2C raises on a NACK
        return d

    def writeto(self, addr, buf, stop=True):
        self._dev(addr).write(bytes(buf))
        return len(buf)

    def readfrom_into(self, addr, buf):
        data = self._dev(addr).read(len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]


class UART:
    """machine.UART stand-in (timeout=0): write() hands a frame to the device, read() its answer."""

    def __init__(self, dev):
        self.dev = dev
        self.rx = b""

    def write(self, buf):
        self.dev.check()
        if not self.dev.gone:
            self.rx += self.dev.frame(bytes(buf))
        return len(buf)

    def read(self, n=None):
        if not self.rx:
            return None
        n = len(self.rx) if n is None else n
        out, self.rx = self.rx[:n], self.rx[n:]
        return out


def _building():
    # A board in a simulated building (node.sim.building) feeds every simulated device from it.
    import sys

    m = sys.modules.get("node.sim.building")
    return m.current() if m else None


def values(spec, clock):
    """() -> the physical quantities now: the building's, or without a building a day-shaped indoor
    climate on the sensor's clock (s), deterministic by seed (node.sim.signals.climate)."""
    b = _building()
    if b is not None:
        return b.model
    from node.sim import signals

    model = signals.climate(spec)
    t = clock if clock is not None else (lambda: bus.ticks_ms() / 1000)
    return lambda: model(t())


def device(what, kind, spec, clock, pin=None, rate=0):
    """The simulated device node.bus opens for a spec with "sim" (what: i2c, uart, i2s or edges of
    input `pin`), in the node's process or in a virtual board's world (provisioning/world.py)."""
    if what == "i2c":
        return i2c_for(kind, spec, clock)
    if what == "uart":
        return uart_for(kind, spec, clock)
    if what == "i2s":
        return i2s_for(spec, rate)
    return edges_for(kind, pin, spec, clock)


# Each simulated device is imported only when a board uses it: RAM on the ESP32 is scarce.
def i2c_for(kind, spec, clock):
    bus_ = I2C()
    now = values(spec, clock)
    if kind == "scd4x":
        from node.sim.sensirion import SCD4x

        bus_.attach(0x62, SCD4x(now))
    elif kind == "sht4x":
        from node.sim.sensirion import SHT4x

        bus_.attach(0x44, SHT4x(now))
    elif kind == "bme280":
        from node.sim.bme280 import BME280

        bus_.attach(spec.get("address", 0x76), BME280(now))
    else:
        raise ValueError("no simulated I2C device %r" % kind)
    for d in bus_.devices.values():
        d.switch = "sim-fault-" + spec.get("name", kind)
    return bus_


def uart_for(kind, spec, clock):
    from node.sim import devices

    b = _building()
    if kind == "mhz19":
        dev = devices.MHZ19(values(spec, clock))
    elif kind == "sdm" and b is not None:
        from node.sim.building import sdm

        dev = sdm(b, spec.get("slave", 1))
    elif kind == "sdm":
        dev = devices.SDM(values(spec, clock), spec.get("slave", 1))
    else:
        raise ValueError("no simulated UART device %r" % kind)
    dev.switch = "sim-fault-" + spec.get("name", kind)
    return UART(dev)


def i2s_for(spec, rate):
    b = _building()
    if b is not None:
        from node.sim.building import Microphone

        return Microphone(b, rate, spec.get("sensitivity_dbfs", -26.0))
    from node.sim import signals

    cfg = spec.get("sim") or {}
    return signals.Microphone(rate, cfg.get("spl", 45.0), cfg.get("freq", 1000.0),
                              spec.get("sensitivity_dbfs", -26.0), cfg.get("seed", 1))


_beams = {}


def edges_for(kind, name, spec, clock):
    b = _building()
    if b is not None:
        if kind == "s0":
            b.ppk = spec.get("ppk", 1000)
            return b.s0.attach()
        if kind == "door":
            return b.door.attach()
        if kind == "beam":
            return (b.beam_a if name == "pin_a" else b.beam_b).attach()
    from node.sim import signals

    cfg = spec.get("sim") or {}
    seed = cfg.get("seed", 1)
    if kind == "s0":
        return signals.Pulses(lambda t: cfg.get("power", 450.0), spec.get("ppk", 1000), seed)
    if kind == "door":
        return signals.Door(cfg.get("every_s", 120), seed)
    if kind == "beam":
        key = id(spec)
        if key not in _beams:
            _beams[key] = signals.People(cfg.get("every_s", 60), seed)
        return _beams[key].a if name == "pin_a" else _beams[key].b
    raise ValueError("no simulated edge source %r" % kind)
