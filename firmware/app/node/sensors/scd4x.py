# Sensirion SCD40/SCD41 CO2 sensor on I2C 0x62 (datasheet "SCD4x", v1.4): periodic measurement
# every 5 s, each word of every answer checked with CRC-8. read() returns co2, temperature, humidity.
from node import bus as hw

ADDR = 0x62
START_PERIODIC = 0x21B1
READ_MEASUREMENT = 0xEC05  # 1 ms
STOP_PERIODIC = 0x3F86  # 500 ms
SET_TEMPERATURE_OFFSET = 0x241D  # 1 ms
SET_AMBIENT_PRESSURE = 0xE000  # 1 ms, word = hPa
FORCED_RECALIBRATION = 0x362F  # 400 ms
SET_ASC_ENABLED = 0x2416  # 1 ms
DATA_READY = 0xE4B8  # 1 ms
MEASURE_SINGLE_SHOT = 0x219D  # 5000 ms (SCD41 only)
REINIT = 0x3646  # 30 ms

DEFAULTS = {"temperature_offset": 4.0, "asc": True, "single_shot": False, "max_age_s": 15}


def co2_ppm(word):
    return word


def temperature_c(word):
    return -45 + 175 * word / 65535


def humidity_rh(word):
    return 100 * word / 65535


class SCD4x:
    def __init__(self, spec, clock, bus=None):
        self.cfg = dict(DEFAULTS)
        self.cfg.update(spec)
        self.clock = clock
        self.dev = hw.SensirionI2C(bus or hw.i2c(spec, "scd4x", clock), spec.get("address", ADDR), "scd4x")
        self._buf3 = bytearray(3)
        self._buf9 = bytearray(9)
        self._w = [0, 0, 0]
        self.last = None  # (co2, t, rh) of the last good frame
        self.last_at = None
        self.pressure_pa = None  # fed by a pressure sensor, see set_ambient_pressure

    # --- commands --------------------------------------------------------------------------
    def start(self):
        self.dev.command(START_PERIODIC)

    def stop(self):
        self.dev.command(STOP_PERIODIC)
        hw.sleep_ms(500)

    def data_ready(self):
        self.dev.command(DATA_READY)
        hw.sleep_ms(1)
        return (self.dev.read_words(self._buf3, self._w)[0] & 0x07FF) != 0  # lower 11 bits

    def read_measurement(self):
        self.dev.command(READ_MEASUREMENT)
        hw.sleep_ms(1)
        w = self.dev.read_words(self._buf9, self._w)
        if w[0] == 0:
            raise hw.SensorFault("scd4x: invalid sample (co2 = 0)")
        return co2_ppm(w[0]), temperature_c(w[1]), humidity_rh(w[2])

    def measure_single_shot(self):
        self.dev.command(MEASURE_SINGLE_SHOT)
        hw.sleep_ms(5000)
        return self.read_measurement()

    def set_temperature_offset(self, celsius):
        # Only accepted while idle (periodic measurement stopped).
        self.dev.command(SET_TEMPERATURE_OFFSET, int(celsius * 65535 / 175 + 0.5))
        hw.sleep_ms(1)

    def set_ambient_pressure(self, pa):
        # Allowed during periodic measurement; overrides the altitude setting.
        hpa = int(pa / 100 + 0.5)
        if not 700 <= hpa <= 1200:
            raise hw.SensorFault("scd4x: ambient pressure %d hPa out of range" % hpa)
        self.dev.command(SET_AMBIENT_PRESSURE, hpa)
        hw.sleep_ms(1)

    def set_asc(self, enabled):
        self.dev.command(SET_ASC_ENABLED, 1 if enabled else 0)
        hw.sleep_ms(1)

    def forced_recalibration(self, ref_ppm):
        """FRC with a reference concentration (sensor idle, after >3 min at that concentration).

        Returns the correction in ppm; raises SensorFault when the sensor reports 0xFFFF (failed).
        """
        periodic = not self.cfg["single_shot"]
        if periodic:
            self.stop()  # the chip takes FRC only when idle
        try:
            self.dev.command(FORCED_RECALIBRATION, int(ref_ppm))
            hw.sleep_ms(400)
            w = self.dev.read_words(self._buf3, self._w)[0]
        finally:
            if periodic:
                self.start()
        if w == 0xFFFF:
            raise hw.SensorFault("scd4x: forced recalibration failed")
        return w - 0x8000

    # --- sensor unit -----------------------------------------------------------------------
    def setup(self):
        self.stop()  # a warm reboot may have left it measuring; settings need it idle
        self.set_temperature_offset(self.cfg["temperature_offset"])
        self.set_asc(self.cfg["asc"])
        if not self.cfg["single_shot"]:
            self.start()

    def read(self):
        if self.pressure_pa is not None:
            self.set_ambient_pressure(self.pressure_pa)
        now = self.clock()
        if self.cfg["single_shot"]:
            vals = self.measure_single_shot()
        elif self.data_ready():
            vals = self.read_measurement()
        elif self.last is not None and now - self.last_at <= self.cfg["max_age_s"]:
            vals = self.last  # the 5 s cycle has not produced a new frame since the last read
        else:
            raise hw.SensorFault("scd4x: no data")
        co2, t, rh = vals
        if not 0 < co2 <= 40000:
            raise hw.SensorFault("scd4x: co2 %d out of range" % co2)
        if vals is not self.last:
            self.last = vals
            self.last_at = now
        return [("co2", "ppm", co2), ("temperature", "Cel", round(t, 2)), ("humidity", "%RH", round(rh, 2))]
