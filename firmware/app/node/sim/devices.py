# Byte-level fakes of the I2C and UART sensors, answering as the datasheets describe.
import struct

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


# A published calibration (T and P from the BMP280 datasheet's worked example, H typical values).
BME280_CAL = {"T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024,
              "P4": 2855, "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
              "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}


def bme280_calibration_bytes(cal):
    """The two NVM blocks (0x88..0xA1, 0xE1..0xE7) holding `cal`, H4/H5 split into nibbles."""
    c1 = bytearray(struct.pack("<HhhHhhhhhhhh", cal["T1"], cal["T2"], cal["T3"], cal["P1"], cal["P2"],
                               cal["P3"], cal["P4"], cal["P5"], cal["P6"], cal["P7"], cal["P8"], cal["P9"]))
    c1 += bytes((0, cal["H1"]))
    h4 = cal["H4"] & 0xFFF
    h5 = cal["H5"] & 0xFFF
    c2 = struct.pack("<h", cal["H2"]) + bytes((cal["H3"], h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4,
                                                cal["H6"] & 0xFF))
    return bytes(c1), c2


def _search(f, target, lo, hi, rising=True):
    """Smallest raw value in [lo, hi) whose compensated value reaches target (f monotonic)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        v = f(mid)
        if (v <= target) if rising else (v >= target):
            lo = mid
        else:
            hi = mid
    return lo


class BME280(Device):
    """BME280 register map; a forced-mode write to ctrl_meas produces raw ADC values for the model."""

    def __init__(self, model, cal=None, chip_id=0x60):
        self.model = model
        self.cal = cal or BME280_CAL
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        c1, c2 = bme280_calibration_bytes(self.cal)
        self.regs[0x88:0x88 + 26] = c1
        self.regs[0xE1:0xE1 + 7] = c2
        self.ptr = 0
        self.raw = None  # set to (adc_t, adc_p, adc_h) to force given ADC values

    def write(self, data):
        self.ptr = data[0]
        for i in range(1, len(data)):
            reg = self.ptr
            self.regs[reg] = data[i]
            self.ptr = (self.ptr + 1) & 0xFF
            if reg == 0xF4 and data[i] & 0x03 in (1, 2):
                self._measure()
                self.regs[0xF4] &= 0xFC  # back to sleep after a forced measurement

    def _measure(self):
        from node.sensors import bme280 as drv

        if self.raw is None:
            m = self.model()
            cal = self.cal
            adc_t = _search(lambda a: drv.compensate_t(cal, a)[0], m["temperature"] * 100, 0, 1 << 20)
            tf = drv.compensate_t(cal, adc_t)[1]
            adc_p = _search(lambda a: drv.compensate_p(cal, a, tf), m["pressure"] * 256, 0, 1 << 20, False)
            adc_h = _search(lambda a: drv.compensate_h(cal, a, tf), m["humidity"] * 1024, 0, 1 << 16)
        else:
            adc_t, adc_p, adc_h = self.raw
        r = self.regs
        r[0xF7], r[0xF8], r[0xF9] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        r[0xFA], r[0xFB], r[0xFC] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        r[0xFD], r[0xFE] = adc_h >> 8, adc_h & 0xFF

    def read(self, n):
        out = bytes(self.regs[(self.ptr + i) & 0xFF] for i in range(n))
        self.ptr = (self.ptr + n) & 0xFF
        return out


class MHZ19(Device):
    def __init__(self, model):
        self.model = model
        self.range = 5000
        self.abc = True
        self.log = []

    def frame(self, f):
        from node.sensors.mhz19 import checksum

        if len(f) != 9 or f[0] != 0xFF or checksum(f) != f[8]:
            return b""  # the sensor ignores a bad frame
        self.note(f[2])
        if f[2] == 0x99:
            self.range = (f[6] << 8) | f[7]
        elif f[2] == 0x79:
            self.abc = f[3] == 0xA0
        elif f[2] == 0x86:
            m = self.model()
            co2 = int(m["co2"])
            r = bytearray((0xFF, 0x86, co2 >> 8, co2 & 0xFF, int(m["temperature"]) + 40, 0, 0, 0, 0))
            r[8] = checksum(r) ^ (0x01 if self.corrupt() else 0)
            return bytes(r)
        return b""


class SDM(Device):
    """Eastron SDM120/630 input registers as float32 big-endian pairs, served over Modbus RTU."""

    def __init__(self, model, slave=1):
        self.model = model
        self.slave = slave
        self.energy_kwh = 1234.5
        self.exception = None  # set to an exception code to answer with it
        self.requests = 0

    def registers(self):
        m = self.model()
        regs = {0x00: m["voltage"], 0x02: m["voltage"], 0x04: m["voltage"], 0x06: m["current"],
                0x08: m["current"], 0x0A: m["current"], 0x0C: m["power"], 0x0E: m["power"],
                0x10: m["power"], 0x34: 3 * m["power"], 0x48: self.energy_kwh}
        return regs

    def frame(self, f):
        if len(f) < 8 or bus.crc16_modbus(f, len(f) - 2) != f[-2] | (f[-1] << 8) or f[0] != self.slave:
            return b""  # a slave stays silent on a bad frame or another address
        self.requests += 1
        addr = (f[2] << 8) | f[3]
        count = (f[4] << 8) | f[5]
        regs = self.registers()
        code = self.exception
        if f[1] != 0x04:
            code = 1
        if code is None:
            data = bytearray()
            for a in range(addr, addr + count, 2):
                data += struct.pack(">f", regs.get(a, 0.0))
            if addr & 1 or count & 1 or addr + count > 0x4C:
                code = 2
        body = bytes((self.slave, 0x84, code)) if code else bytes((self.slave, 0x04, 2 * count)) + bytes(data)
        crc = bus.crc16_modbus(body) ^ (0x0101 if self.corrupt() else 0)
        return body + bytes((crc & 0xFF, crc >> 8))
