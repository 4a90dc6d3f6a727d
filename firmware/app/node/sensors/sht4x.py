# Sensirion SHT40/41/45 on I2C 0x44 (datasheet "SHT4x", v6.x): one command per measurement, the
# answer is T word + CRC, RH word + CRC. RH is specified -6..119 % raw, clamped to 0..100.
from node import bus as hw

ADDR = 0x44
# precision -> (command, max duration ms)
MODES = {"high": (0xFD, 9), "medium": (0xF6, 5), "low": (0xE0, 2)}
SERIAL = 0x89
SOFT_RESET = 0x94  # 1 ms


def temperature_c(word):
    return -45 + 175 * word / 65535


def humidity_rh(word):
    rh = -6 + 125 * word / 65535
    return 0.0 if rh < 0 else 100.0 if rh > 100 else rh


class SHT4x:
    def __init__(self, spec, clock, bus=None):
        self.precision = spec.get("precision", "high")
        if self.precision not in MODES:
            raise ValueError("sht4x precision must be one of high, medium, low")
        self.dev = hw.SensirionI2C(bus or hw.i2c(spec, "sht4x", clock), spec.get("address", ADDR), "sht4x")
        self._buf = bytearray(6)
        self._w = [0, 0]
        self.serial = None

    def _cmd8(self, cmd):
        # SHT4x commands are one byte, unlike the SCD4x's 16-bit ones.
        try:
            self.dev.i2c.writeto(self.dev.addr, bytes((cmd,)))
        except OSError:
            raise hw.SensorFault("sht4x: no answer at 0x%02x" % self.dev.addr)

    def setup(self):
        self._cmd8(SOFT_RESET)
        hw.sleep_ms(1)
        self._cmd8(SERIAL)
        hw.sleep_ms(1)
        w = self.dev.read_words(self._buf, self._w)
        self.serial = (w[0] << 16) | w[1]

    def measure(self):
        cmd, ms = MODES[self.precision]
        self._cmd8(cmd)
        hw.sleep_ms(ms)
        w = self.dev.read_words(self._buf, self._w)
        return temperature_c(w[0]), humidity_rh(w[1])

    def read(self):
        t, rh = self.measure()
        if not -40 <= t <= 125:
            raise hw.SensorFault("sht4x: temperature %.1f out of range" % t)
        return [("temperature", "Cel", round(t, 2)), ("humidity", "%RH", round(rh, 2))]
