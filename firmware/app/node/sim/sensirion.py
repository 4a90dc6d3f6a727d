# Simulated Sensirion chips (SCD4x, SHT4x): byte-level answers as the datasheets describe.
from node import bus
from node.sim import Device


def _words(values, corrupt=False):
    """Sensirion framing: each 16-bit word followed by its CRC-8."""
    out = bytearray()
    for w in values:
        b = bytes(((w >> 8) & 0xFF, w & 0xFF))
        out += b
        out.append(bus.crc8(b) ^ (0x5A if corrupt else 0))
    return bytes(out)


def _clamp16(x):
    x = int(x + 0.5)
    return 0 if x < 0 else 0xFFFF if x > 0xFFFF else x


class SCD4x(Device):
    """SCD4x: periodic mode gives a frame every 5 s; settings only when idle, as on the chip."""

    def __init__(self, model, now_ms=None):
        self.model = model
        self.now_ms = now_ms or (lambda: bus.ticks_ms())
        self.periodic = False
        self.t0 = 0
        self.taken = 0
        self.single_at = None
        self.answer = b""
        self.offset_word = 0
        self.pressure_hpa = None
        self.asc = 1
        self.frc_fails = False
        self.frc_correction = 0
        self.log = []

    def _frames(self):
        if self.periodic:
            return (self.now_ms() - self.t0) // 5000
        if self.single_at is not None and self.now_ms() - self.single_at >= 5000:
            return self.taken + 1
        return self.taken

    def write(self, data):
        cmd = (data[0] << 8) | data[1]
        arg = None
        if len(data) == 5:
            if bus.crc8(data, 2, 4) != data[4]:
                raise OSError(5)  # the chip NACKs a word with a wrong CRC
            arg = (data[2] << 8) | data[3]
        self.note((cmd, arg))
        self.answer = b""
        if cmd == 0x21B1:
            self.periodic = True
            self.t0 = self.now_ms()
            self.taken = 0
        elif cmd == 0x3F86:
            self.periodic = False
        elif cmd == 0xE4B8:
            self.answer = _words([0x8006 if self._frames() > self.taken else 0x8000])
        elif cmd == 0xEC05:
            m = self.model()
            self.taken = self._frames()
            self.single_at = None
            self.answer = _words([int(m["co2"]), _clamp16((m["temperature"] + 45) * 65535 / 175),
                                  _clamp16(m["humidity"] * 65535 / 100)], self.corrupt())
        elif cmd == 0x219D:
            self.single_at = self.now_ms()
        elif self.periodic and cmd != 0xE000:
            raise OSError(5)  # other commands are refused while measuring
        elif cmd == 0x241D:
            self.offset_word = arg
        elif cmd == 0xE000:
            self.pressure_hpa = arg
        elif cmd == 0x2416:
            self.asc = arg
        elif cmd == 0x362F:
            self.answer = _words([0xFFFF if self.frc_fails else 0x8000 + self.frc_correction])

    def read(self, n):
        if len(self.answer) < n:
            raise OSError(5)  # nothing to read: NACK
        return self.answer[:n]


class SHT4x(Device):
    MODES = (0xFD, 0xF6, 0xE0)

    def __init__(self, model, serial=0x12345678):
        self.model = model
        self.serial = serial
        self.answer = b""
        self.log = []

    def write(self, data):
        cmd = data[0]
        self.note(cmd)
        self.answer = b""
        if cmd in self.MODES:
            m = self.model()
            self.answer = _words([_clamp16((m["temperature"] + 45) * 65535 / 175),
                                  _clamp16((m["humidity"] + 6) * 65535 / 125)], self.corrupt())
        elif cmd == 0x89:
            self.answer = _words([self.serial >> 16, self.serial & 0xFFFF])

    def read(self, n):
        if len(self.answer) < n:
            raise OSError(5)
        return self.answer[:n]
