# Simulated Bosch BME280: its register map, calibration NVM and forced-mode ADC values.
import struct

from node.sim import Device

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
