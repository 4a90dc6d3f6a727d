# Winsen MH-Z19B/C NDIR CO2 sensor on UART 9600 8N1: 9-byte frames 0xFF 0x01 cmd ... checksum,
# checksum = (0xFF - sum(bytes 1..7) + 1) & 0xFF. read() returns co2.
from node import bus as hw

READ_CO2 = 0x86
ZERO_CALIBRATION = 0x87
SPAN_CALIBRATION = 0x88
SET_ABC = 0x79
SET_RANGE = 0x99
RANGES = (2000, 5000, 10000)


def checksum(frame):
    s = 0
    for i in range(1, 8):
        s += frame[i]
    return (0xFF - (s & 0xFF) + 1) & 0xFF


class MHZ19:
    def __init__(self, spec, clock, bus=None):
        self.uart = bus or hw.uart(spec, "mhz19", clock, 9600)
        self.range = spec.get("range", 5000)
        if self.range not in RANGES:
            raise ValueError("mhz19 range must be one of %r" % (RANGES,))
        self.abc = spec.get("abc", True)
        self.timeout_ms = spec.get("timeout_ms", 200)
        self._tx = bytearray(9)
        self._rx = bytearray(9)

    def _send(self, cmd, b3=0, b4=0, b5=0, b6=0, b7=0):
        f = self._tx
        f[0] = 0xFF
        f[1] = 0x01
        f[2] = cmd
        f[3] = b3
        f[4] = b4
        f[5] = b5
        f[6] = b6
        f[7] = b7
        f[8] = checksum(f)
        while self.uart.read():  # drop stale bytes so the answer is the answer to this command
            pass
        self.uart.write(f)

    def _answer(self, cmd):
        got = 0
        start = hw.ticks_ms()
        mv = memoryview(self._rx)
        while got < 9:
            chunk = self.uart.read(9 - got)
            if chunk:
                mv[got:got + len(chunk)] = chunk
                got += len(chunk)
                if got and self._rx[0] != 0xFF:  # resynchronise on the start byte
                    got = 0
            elif hw.ticks_diff(hw.ticks_ms(), start) > self.timeout_ms:
                raise hw.SensorFault("mhz19: no answer")
            else:
                hw.sleep_ms(5)
        r = self._rx
        if r[1] != cmd:
            raise hw.SensorFault("mhz19: unexpected answer 0x%02x" % r[1])
        if checksum(r) != r[8]:
            raise hw.SensorFault("mhz19: bad checksum")
        return r

    def set_range(self, ppm):
        self._send(SET_RANGE, 0, 0, 0, ppm >> 8, ppm & 0xFF)  # range in bytes 6..7
        self.range = ppm

    def set_abc(self, on):
        self._send(SET_ABC, 0xA0 if on else 0x00)

    def zero_calibration(self):
        """Declare the current air 400 ppm (after >20 min outdoors)."""
        self._send(ZERO_CALIBRATION)

    def read_co2(self):
        self._send(READ_CO2)
        r = self._answer(READ_CO2)
        return (r[2] << 8) | r[3]

    def setup(self):
        self.set_range(self.range)
        hw.sleep_ms(50)
        self.set_abc(self.abc)
        hw.sleep_ms(50)

    def read(self):
        co2 = self.read_co2()
        if not 0 < co2 <= self.range:
            raise hw.SensorFault("mhz19: co2 %d out of range" % co2)
        return [("co2", "ppm", co2)]
