"""MH-Z19 and Modbus RTU / Eastron SDM over the simulated UART."""

MHZ = """
from node.sensors import mhz19
from node.sim import UART, devices
vals = {"co2": 812, "temperature": 23.0}
dev = devices.MHZ19(lambda: vals)
uart = UART(dev)
s = mhz19.MHZ19({"range": 2000}, None, uart)
"""


def test_mhz19_frames_and_read(fwrun):
    (frames, reading, rng) = fwrun(setup=MHZ, code="""
        f = bytearray(b'\\xff\\x01\\x86\\x00\\x00\\x00\\x00\\x00\\x00')
        r = bytearray(b'\\xff\\x01\\x99\\x00\\x00\\x00\\x07\\xd0\\x00')
        out([mhz19.checksum(f), mhz19.checksum(r)])
        s.setup()
        out(s.read())
        out([dev.range, dev.abc, dev.log])
    """)
    assert frames == [0x79, 0x8F]  # datasheet: read = FF 01 86 00 00 00 00 00 79; 2000 ppm range ... 8F
    assert reading == [["co2", "ppm", 812]]
    assert rng == [2000, True, [0x99, 0x79, 0x86]]


def test_mhz19_faults(fwrun):
    (bad, gone, high) = fwrun(setup=MHZ, code="""
        dev.bad_crc = 1
        out(fault(s.read))
        dev.gone = True
        out(fault(s.read))
        dev.gone = False
        vals["co2"] = 2500
        out(fault(s.read))
    """)
    assert bad == "mhz19: bad checksum"
    assert gone == "mhz19: no answer"
    assert high == "mhz19: co2 2500 out of range"


SDM = """
from node.sensors import modbus
from node.sim import UART, devices
vals = {"voltage": 231.5, "current": 4.25, "power": 980.0}
dev = devices.SDM(lambda: vals, 1)
uart = UART(dev)
"""


def test_modbus_request_frame(fwrun):
    (req,) = fwrun(setup=SDM, code="""
        out(list(modbus.ModbusRTU(uart).request(1, 4, 0, 2)))
    """)
    assert req == [0x01, 0x04, 0x00, 0x00, 0x00, 0x02, 0x71, 0xCB]


def test_sdm120_and_sdm630(fwrun):
    (one, three, t0) = fwrun(setup=SDM, code="""
        out(modbus.SDM({"model": "sdm120"}, None, uart).read())
        out(modbus.SDM({"model": "sdm630"}, None, uart).read())
        out(clk.ms)
    """)
    assert one == [["voltage", "V", 231.5], ["current", "A", 4.25], ["power", "W", 980.0],
                   ["energy", "Wh", 1234500.0]]
    names = {n: v for n, u, v in three}
    assert names["voltage_l3"] == 231.5 and names["current_l2"] == 4.25
    assert names["power"] == 2940.0 and names["energy"] == 1234500.0


def test_modbus_retries_exceptions_timeouts(fwrun):
    (retried, crc, exc, gone, t_gone) = fwrun(setup=SDM, code="""
        m = modbus.SDM({"retries": 2, "timeout_ms": 300}, None, uart)
        dev.bad_crc = 1                      # one corrupted answer: the retry succeeds
        out([m.read()[2], dev.requests])
        dev.bad_crc = 10
        out(fault(m.read))
        dev.bad_crc = 0
        dev.exception = 2
        out(fault(m.read))
        dev.exception = None
        dev.gone = True
        t = clk.ms
        out(fault(m.read))
        out(clk.ms - t)
    """)
    assert retried == [["power", "W", 980.0], 3]  # 1 bad + 1 good for the first block, then energy
    assert crc == "modbus: slave 1 crc error"
    assert exc == "modbus: exception 2 (illegal data address)"
    assert gone == "modbus: slave 1 no answer"
    assert 3 * 300 <= t_gone < 3 * 300 + 100  # three attempts, each waiting out the timeout
