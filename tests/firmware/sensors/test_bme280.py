"""BME280: calibration parsing and the datasheet's integer compensation.

Expected values come from (a) the worked example in the Bosch BMP280 datasheet (section 3.12;
the BME280's temperature and pressure formulas are the same): dig_T1..T3 = 27504, 26435, -1000,
dig_P1..P9 = 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000, adc_T = 519888 ->
t_fine = 128422, T = 25.08 degC; adc_P = 415148 -> 100653.27 Pa (the table prints 25767236 in
Q24.8, from the floating-point formula; the 64-bit integer formula gives 25767233, 0.01 Pa less),
and (b) the BME280 datasheet's reference C code (section 4.2.3) transcribed below in plain Python,
with C's 32/64-bit integer semantics (truncating division), run over a grid of raw values.
"""

import pytest

CAL = {"T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855,
       "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
       "H1": 75, "H2": 362, "H3": 0, "H4": 313, "H5": 50, "H6": 30}


def _s32(x):
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _s64(x):
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def _cdiv(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def ref_t(c, adc_t):
    var1 = _s32((_s32((adc_t >> 3) - (c["T1"] << 1)) * c["T2"]) >> 11)
    var2 = _s32((_s32((_s32(((adc_t >> 4) - c["T1"]) * ((adc_t >> 4) - c["T1"])) >> 12) * c["T3"])) >> 14)
    t_fine = _s32(var1 + var2)
    return _s32((t_fine * 5 + 128) >> 8), t_fine


def ref_p(c, adc_p, t_fine):
    var1 = _s64(t_fine - 128000)
    var2 = _s64(var1 * var1 * c["P6"])
    var2 = _s64(var2 + _s64((var1 * c["P5"]) << 17))
    var2 = _s64(var2 + _s64(c["P4"] << 35))
    var1 = _s64((_s64(var1 * var1 * c["P3"]) >> 8) + _s64((var1 * c["P2"]) << 12))
    var1 = _s64(_s64(((1 << 47) + var1) * c["P1"]) >> 33)
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _s64(_cdiv(_s64((_s64(p << 31) - var2) * 3125), var1))
    var1 = _s64(_s64(c["P9"] * (p >> 13) * (p >> 13)) >> 25)
    var2 = _s64(_s64(c["P8"] * p) >> 19)
    return (_s64((p + var1 + var2) >> 8) + (c["P7"] << 4)) & 0xFFFFFFFF


def ref_h(c, adc_h, t_fine):
    v = _s32(t_fine - 76800)
    a = _s32((_s32((adc_h << 14) - (c["H4"] << 20) - _s32(c["H5"] * v)) + 16384) >> 15)
    b = _s32((_s32(v * c["H6"]) >> 10) * (_s32((_s32(v * c["H3"]) >> 11) + 32768)))
    b = _s32((_s32((b >> 10) + 2097152) * c["H2"] + 8192) >> 14)
    v = _s32(a * b)
    v = _s32(v - (_s32((_s32((v >> 15) * (v >> 15)) >> 7) * c["H1"]) >> 4))
    v = max(0, min(v, 419430400))
    return v >> 12


SETUP = """
from node.sensors import bme280
from node.sim import I2C, devices
CAL = %r
i2c = I2C()
model = lambda: {"temperature": 21.5, "pressure": 98765.4, "humidity": 41.2}
dev = i2c.attach(0x76, devices.BME280(model, CAL))
""" % (CAL,)  # noqa: UP031

RAW = [(519888, 415148, 30000), (500000, 300000, 20000), (540000, 500000, 40000),
       (480000, 350000, 25000), (530000, 450000, 35000)]


def test_published_example_and_reference_code(fwrun):
    res = fwrun(setup=SETUP, code="""
        s = bme280.BME280({}, None, i2c)
        s.setup()
        out(sorted(s.cal.items()))
        for adc_t, adc_p, adc_h in %r:
            t, tf = bme280.compensate_t(s.cal, adc_t)
            out([t, tf, bme280.compensate_p(s.cal, adc_p, tf), bme280.compensate_h(s.cal, adc_h, tf)])
    """ % (RAW,))  # noqa: UP031
    assert dict(res[0]) == CAL  # parsed back from the register bytes, H4/H5 nibbles included
    t, t_fine, p, _ = res[1]
    assert (t, t_fine) == (2508, 128422)
    assert p == 25767233 and abs(p / 256 - 100653.27) < 0.02
    for (adc_t, adc_p, adc_h), (t, tf, p, h) in zip(RAW, res[1:], strict=True):
        rt, rtf = ref_t(CAL, adc_t)
        assert (t, tf) == (rt, rtf)
        assert p == ref_p(CAL, adc_p, rtf)
        assert h == ref_h(CAL, adc_h, rtf)


@pytest.mark.parametrize("h4,h5", [(313, 50), (-100, -7), (2047, -2048), (-1, 0)])
def test_split_nibble_calibration(fwrun, h4, h5):
    (res,) = fwrun("""
        from node.sensors import bme280
        from node.sim import devices
        cal = dict(devices.BME280_CAL)
        cal["H4"] = %d
        cal["H5"] = %d
        cal["H6"] = -5
        c1, c2 = devices.bme280_calibration_bytes(cal)
        got = bme280.parse_calibration(c1, c2)
        out([got["H4"], got["H5"], got["H6"], list(c2[3:6])])
    """ % (h4, h5))  # noqa: UP031
    assert res[:3] == [h4, h5, -5]
    e4, e5, e6 = res[3]
    assert e4 == (h4 >> 4) & 0xFF and e6 == (h5 >> 4) & 0xFF
    assert e5 & 0x0F == h4 & 0x0F and e5 >> 4 == h5 & 0x0F


def test_forced_mode_read_and_faults(fwrun):
    (reading, ctrl, skipped, gone, chip) = fwrun(setup=SETUP, code="""
        s = bme280.BME280({"osrs_t": 2, "osrs_p": 16, "osrs_h": 1}, None, i2c)
        s.setup()
        out(s.read())
        out([dev.regs[0xF2], dev.regs[0xF4]])
        dev.raw = (0x80000, 0x80000, 0x8000)
        out(fault(s.read))
        dev.gone = True
        out(fault(s.read))
        other = I2C()
        other.attach(0x76, devices.BME280(None, CAL, chip_id=0x58))
        out(fault(bme280.BME280({}, None, other).setup))
    """)
    names = {n: (u, v) for n, u, v in reading}
    assert abs(names["temperature"][1] - 21.5) <= 0.01 and names["temperature"][0] == "Cel"
    assert abs(names["pressure"][1] - 98765.4) < 0.5 and names["pressure"][0] == "Pa"
    assert abs(names["humidity"][1] - 41.2) <= 0.02 and names["humidity"][0] == "%RH"
    assert ctrl == [1, (2 << 5) | (5 << 2)]  # ctrl_hum x1; x2 / x16, back to sleep after forced
    assert skipped == "bme280: temperature skipped (no measurement)"
    assert gone == "bme280: no answer at 0x76"
    assert chip == "bme280: chip id 0x58 is not a BME280"
