# Bosch BME280 on I2C 0x76/0x77 (datasheet BST-BME280-DS002): calibration read once, forced-mode
# measurement each read, the datasheet's integer compensation (section 4.2.3) transcribed as is.
import struct

from node import bus as hw

CHIP_ID = 0xD0  # reads 0x60 on a BME280 (0x58 is a BMP280: no humidity)
RESET = 0xE0
CTRL_HUM = 0xF2
STATUS = 0xF3
CTRL_MEAS = 0xF4
CONFIG = 0xF5
DATA = 0xF7  # press[3] temp[3] hum[2]
CALIB1 = 0x88  # 26 bytes: T1..T3, P1..P9, (0xA0), H1 at 0xA1
CALIB2 = 0xE1  # 7 bytes: H2..H6
OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # oversampling -> register code


def _cdiv(a, b):
    # C's integer division truncates toward zero; Python's // floors.
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def parse_calibration(c1, c2):
    """dig_* from the two calibration blocks (c1 = 0x88..0xA1, c2 = 0xE1..0xE7)."""
    cal = {}
    v = struct.unpack("<HhhHhhhhhhhh", c1[0:24])
    for i, name in enumerate(("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9")):
        cal[name] = v[i]
    cal["H1"] = c1[25]
    cal["H2"] = struct.unpack("<h", c2[0:2])[0]
    cal["H3"] = c2[2]
    # H4 and H5 are 12-bit signed values sharing the nibbles of 0xE5.
    h4 = (c2[3] << 4) | (c2[4] & 0x0F)
    h5 = (c2[5] << 4) | (c2[4] >> 4)
    cal["H4"] = h4 - 4096 if c2[3] & 0x80 else h4
    cal["H5"] = h5 - 4096 if c2[5] & 0x80 else h5
    cal["H6"] = c2[6] - 256 if c2[6] & 0x80 else c2[6]
    return cal


def compensate_t(cal, adc_t):
    """Returns (T in 0.01 degC, t_fine)."""
    t1 = cal["T1"]
    var1 = (((adc_t >> 3) - (t1 << 1)) * cal["T2"]) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * cal["T3"]) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_p(cal, adc_p, t_fine):
    """Pressure in Pa as Q24.8 (divide by 256), 64-bit integer version."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal["P6"]
    var2 = var2 + ((var1 * cal["P5"]) << 17)
    var2 = var2 + (cal["P4"] << 35)
    var1 = ((var1 * var1 * cal["P3"]) >> 8) + ((var1 * cal["P2"]) << 12)
    var1 = (((1 << 47) + var1) * cal["P1"]) >> 33
    if var1 == 0:
        return 0  # avoid a division by zero
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (cal["P9"] * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal["P8"] * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal["P7"] << 4)


def compensate_h(cal, adc_h, t_fine):
    """Humidity in %RH as Q22.10 (divide by 1024)."""
    v = t_fine - 76800
    v = (((((adc_h << 14) - (cal["H4"] << 20) - (cal["H5"] * v)) + 16384) >> 15)
         * (((((((v * cal["H6"]) >> 10) * (((v * cal["H3"]) >> 11) + 32768)) >> 10) + 2097152)
             * cal["H2"] + 8192) >> 14))
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal["H1"]) >> 4)
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return v >> 12


class BME280:
    def __init__(self, spec, clock, bus=None):
        self.i2c = bus or hw.i2c(spec, "bme280", clock)
        self.addr = spec.get("address", 0x76)
        self.osrs = (spec.get("osrs_t", 1), spec.get("osrs_p", 1), spec.get("osrs_h", 1))
        self.cal = None
        self._data = bytearray(8)
        self._one = bytearray(1)

    def _read(self, reg, buf):
        try:
            self.i2c.writeto(self.addr, bytes((reg,)), False)  # repeated start
            self.i2c.readfrom_into(self.addr, buf)
        except OSError:
            raise hw.SensorFault("bme280: no answer at 0x%02x" % self.addr)
        return buf

    def _write(self, reg, val):
        try:
            self.i2c.writeto(self.addr, bytes((reg, val)))
        except OSError:
            raise hw.SensorFault("bme280: no answer at 0x%02x" % self.addr)

    def setup(self):
        chip = self._read(CHIP_ID, self._one)[0]
        if chip != 0x60:
            raise hw.SensorFault("bme280: chip id 0x%02x is not a BME280" % chip)
        self._write(RESET, 0xB6)
        hw.sleep_ms(3)  # start-up 2 ms
        for _ in range(10):  # NVM copy done when im_update clears
            if not self._read(STATUS, self._one)[0] & 0x01:
                break
            hw.sleep_ms(1)
        self.cal = parse_calibration(self._read(CALIB1, bytearray(26)), self._read(CALIB2, bytearray(7)))
        self._write(CONFIG, 0x00)  # filter off: forced mode with weather-monitoring settings
        self._write(CTRL_HUM, OSRS[self.osrs[2]])  # takes effect on the next CTRL_MEAS write

    def measure(self):
        t, p, h = self.osrs
        self._write(CTRL_MEAS, (OSRS[t] << 5) | (OSRS[p] << 2) | 0x01)  # forced mode
        # Datasheet 9.1, maximum measurement time in ms.
        hw.sleep_ms(int(1.25 + 2.3 * t + (2.3 * p + 0.575 if p else 0) + (2.3 * h + 0.575 if h else 0)) + 1)
        for _ in range(10):
            if not self._read(STATUS, self._one)[0] & 0x08:
                break
            hw.sleep_ms(1)
        d = self._read(DATA, self._data)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """(Cel, Pa, %RH) from raw ADC values; a skipped channel (0x80000 / 0x8000) gives None."""
        if adc_t == 0x80000:
            raise hw.SensorFault("bme280: temperature skipped (no measurement)")
        t, t_fine = compensate_t(self.cal, adc_t)
        p = None if adc_p == 0x80000 else compensate_p(self.cal, adc_p, t_fine) / 256
        h = None if adc_h == 0x8000 else compensate_h(self.cal, adc_h, t_fine) / 1024
        return t / 100, p, h

    def read(self):
        t, p, h = self.compensate(*self.measure())
        if not -40 <= t <= 85:
            raise hw.SensorFault("bme280: temperature %.1f out of range" % t)
        out = [("temperature", "Cel", t)]
        if p is not None:
            if not 30000 <= p <= 110000:
                raise hw.SensorFault("bme280: pressure %d out of range" % p)
            out.append(("pressure", "Pa", round(p, 1)))
        if h is not None:
            out.append(("humidity", "%RH", round(h, 2)))
        return out
