# Bus interfaces shared by the sensor drivers: the fault type, CRC helpers, Sensirion word framing,
# a ring buffer of timestamped edges, blocking time helpers, and the one place that opens real
# buses (machine.I2C/UART/I2S/Pin) or, when a sensor spec has "sim", the simulated devices (in the
# board's world process, node.simlink, or in this one, node.sim).
import time

try:
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    sleep_ms = time.sleep_ms
except AttributeError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


# The real clock, for measurements of this CPU (a simulated clock may replace ticks_ms above).
wall_ms = ticks_ms
wall_diff = ticks_diff


class SensorFault(Exception):
    """A channel cannot give a trustworthy value; str(e) is a short reason ("no answer", "crc")."""

    @property
    def reason(self):
        return self.args[0] if self.args else ""


def crc8(buf, start=0, end=None):
    """Sensirion CRC-8: poly 0x31, init 0xFF, no reflection, no final xor (0xBEEF -> 0x92)."""
    crc = 0xFF
    for i in range(start, len(buf) if end is None else end):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc16_modbus(buf, n=None):
    """CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF; sent low byte first."""
    crc = 0xFFFF
    for i in range(len(buf) if n is None else n):
        crc ^= buf[i]
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class SensirionI2C:
    """Sensirion command framing: 16-bit commands, 16-bit words each followed by its CRC-8."""

    def __init__(self, i2c, addr, name):
        self.i2c = i2c
        self.addr = addr
        self.name = name
        self._cmd = bytearray(2)
        self._arg = bytearray(5)

    def command(self, cmd, arg=None):
        try:
            if arg is None:
                self._cmd[0] = cmd >> 8
                self._cmd[1] = cmd & 0xFF
                self.i2c.writeto(self.addr, self._cmd)
            else:
                b = self._arg
                b[0] = cmd >> 8
                b[1] = cmd & 0xFF
                b[2] = (arg >> 8) & 0xFF
                b[3] = arg & 0xFF
                b[4] = crc8(b, 2, 4)
                self.i2c.writeto(self.addr, b)
        except OSError:
            raise SensorFault("%s: no answer at 0x%02x" % (self.name, self.addr))

    def read_words(self, buf, out):
        """Read len(buf) bytes (3 per word) into buf, check every CRC, fill list `out` with words."""
        try:
            self.i2c.readfrom_into(self.addr, buf)
        except OSError:
            raise SensorFault("%s: no answer at 0x%02x" % (self.name, self.addr))
        for k in range(len(buf) // 3):
            i = 3 * k
            if crc8(buf, i, i + 2) != buf[i + 2]:
                raise SensorFault("%s: crc error" % self.name)
            out[k] = (buf[i] << 8) | buf[i + 1]
        return out


class Edges:
    """Ring buffer of (ticks_ms, level) edges, filled from a pin IRQ, drained by a driver's poll().

    Preallocated so the IRQ handler never allocates; on overflow the oldest edges are dropped and
    counted (a driver may report that as a fault).
    """

    def __init__(self, size=64):
        import array

        self.t = array.array("i", [0] * size)
        self.v = bytearray(size)
        self.size = size
        self.head = 0  # next write
        self.count = 0
        self.dropped = 0

    def push(self, t_ms, level):
        self.t[self.head] = t_ms
        self.v[self.head] = 1 if level else 0
        self.head = (self.head + 1) % self.size
        if self.count == self.size:
            self.dropped += 1
        else:
            self.count += 1

    def pop(self):
        """Oldest edge as (t_ms, level), or None."""
        if not self.count:
            return None
        i = (self.head - self.count) % self.size
        self.count -= 1
        return self.t[i], self.v[i]


# --- opening buses -------------------------------------------------------------------------------
# A spec with "sim" gets a simulated device; otherwise the port opens the real bus on the pins named
# in the spec. Buses are shared between sensors by their id.
_buses = {}
world = False  # a virtual board's simulated devices live in its world process (node.simlink.connect)


def _port():
    from node.port import port

    return port


def _sim(what, kind, spec, clock, pin=None, rate=0):
    # From the world process on a virtual board that has one, else from node.sim in this process
    # (the driver tests, which build sensors without a board).
    if world:
        from node import simlink

        return simlink.device(what, kind, spec, pin, rate)
    from node import sim

    return sim.device(what, kind, spec, clock, pin, rate)


def i2c(spec, kind, clock=None):
    if "sim" in spec:
        return _sim("i2c", kind, spec, clock)
    c = spec.get("i2c") or {}
    key = ("i2c", c.get("id", 0))
    if key not in _buses:
        _buses[key] = _port().open_i2c(c)
    return _buses[key]


def uart(spec, kind, clock=None, baud=9600):
    if "sim" in spec:
        return _sim("uart", kind, spec, clock)
    c = spec.get("uart") or {}
    key = ("uart", c.get("id", 2))
    if key not in _buses:
        _buses[key] = _port().open_uart(c, baud)
    return _buses[key]


def i2s(spec, rate, clock=None):
    if "sim" in spec:
        return _sim("i2s", "i2s", spec, clock, rate=rate)
    return _port().open_i2s(spec.get("i2s") or {}, rate)


def edges(spec, name, kind, clock=None):
    """Edges of the GPIO spec[name] (a pin number); level 1 = active (pulse on, beam broken, open)."""
    if "sim" in spec:
        return _sim("edges", kind, spec, clock, pin=name)
    q = Edges(spec.get("edge_buffer", 64))
    _port().watch_edges(spec[name], spec.get("active_low", True), q)
    return q
