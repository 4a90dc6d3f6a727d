"""SCD4x and SHT4x against the Sensirion datasheets' examples, on the simulated devices."""

SCD = """
from node.sensors import scd4x
from node.sim import I2C, devices
vals = {"co2": 500, "temperature": 25.0, "humidity": 37.0}
i2c = I2C()
dev = i2c.attach(0x62, devices.SCD4x(lambda: vals))
s = scd4x.SCD4x({"temperature_offset": 5.4}, lambda: clk.ms // 1000, i2c)
"""


def test_scd4x_conversions_match_datasheet_example(fwrun):
    (res,) = fwrun("""
        from node.sensors import scd4x
        out([scd4x.co2_ppm(0x01F4), scd4x.temperature_c(0x6667), scd4x.humidity_rh(0x5EB9)])
    """)
    assert res[0] == 500
    assert abs(res[1] - 25.0) < 0.01 and abs(res[2] - 37.0) < 0.01


def test_scd4x_periodic_cycle(fwrun):
    res = fwrun(setup=SCD, code="""
        s.setup()
        out([[c, a] for c, a in dev.log])
        out(fault(s.read))              # no frame yet: the first comes after 5 s
        clk.sleep(5000)
        out(s.read())
        vals["co2"] = 900
        clk.sleep(1000)
        out(s.read())                   # not ready again yet: the last frame, still fresh
        clk.sleep(4000)
        s.pressure_pa = 98700.0
        out(s.read())
        out([dev.pressure_hpa, dev.offset_word, dev.asc])
    """)
    log, nodata, first, cached, second, settings = res
    # stop, set_temperature_offset 5.4 degC = 0x07E6 (datasheet example), ASC on, start periodic
    assert log == [[0x3F86, None], [0x241D, 0x07E6], [0x2416, 1], [0x21B1, None]]
    assert nodata == "scd4x: no data"
    assert first == [["co2", "ppm", 500], ["temperature", "Cel", 25.0], ["humidity", "%RH", 37.0]]
    assert cached == first
    assert second[0] == ["co2", "ppm", 900]
    assert settings == [987, 0x07E6, 1]


def test_scd4x_forced_recalibration_and_single_shot(fwrun):
    (ok, failed, shot) = fwrun(setup=SCD, code="""
        dev.frc_correction = -23
        out(s.forced_recalibration(420))
        dev.frc_fails = True
        out(fault(s.forced_recalibration, 420))
        out(list(s.measure_single_shot()))
    """)
    assert ok == -23
    assert failed == "scd4x: forced recalibration failed"
    assert shot[0] == 500


def test_scd4x_faults(fwrun):
    (crc, gone, zero) = fwrun(setup=SCD, code="""
        s.setup()
        clk.sleep(5000)
        dev.bad_crc = 1
        out(fault(s.read))
        dev.gone = True
        out(fault(s.read))
        dev.gone = False
        vals["co2"] = 0
        clk.sleep(5000)
        out(fault(s.read))
    """)
    assert crc == "scd4x: crc error"
    assert gone == "scd4x: no answer at 0x62"
    assert zero == "scd4x: invalid sample (co2 = 0)"


SHT = """
from node.sensors import sht4x
from node.sim import I2C, devices
vals = {"temperature": 25.0, "humidity": 50.0}
i2c = I2C()
dev = i2c.attach(0x44, devices.SHT4x(lambda: vals))
"""


def test_sht4x_modes_and_conversions(fwrun):
    res = fwrun(setup=SHT, code="""
        out([sht4x.temperature_c(0x6666), sht4x.humidity_rh(0x8000), sht4x.humidity_rh(0),
             sht4x.humidity_rh(0xFFFF)])
        for p in ("high", "medium", "low"):
            s = sht4x.SHT4x({"precision": p}, None, i2c)
            s.setup()
            out([s.read(), dev.log[-1], s.serial])
    """)
    conv = res[0]
    assert abs(conv[0] - 24.998) < 0.01  # -45 + 175 * 26214 / 65535
    assert abs(conv[1] - 56.5) < 0.01  # -6 + 125 * 32768 / 65535
    assert conv[2] == 0.0 and conv[3] == 100.0  # clamped to 0..100 %RH
    for (reading, cmd, serial), want in zip(res[1:], (0xFD, 0xF6, 0xE0), strict=True):
        assert reading == [["temperature", "Cel", 25.0], ["humidity", "%RH", 50.0]]
        assert cmd == want
        assert serial == 0x12345678


def test_sht4x_faults(fwrun):
    (crc, gone) = fwrun(setup=SHT, code="""
        s = sht4x.SHT4x({}, None, i2c)
        s.setup()
        dev.bad_crc = 1
        out(fault(s.read))
        dev.gone = True
        out(fault(s.read))
    """)
    assert crc == "sht4x: crc error"
    assert gone == "sht4x: no answer at 0x44"
