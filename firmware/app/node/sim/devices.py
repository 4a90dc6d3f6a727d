# Byte-level fakes of the I2C and UART sensors, answering as the datasheets describe. The I2C
# chips live in their own modules (node.sim.sensirion, node.sim.bme280) so a virtual board loads
# only the ones it uses; they are re-exported here.
import struct

from node import bus
from node.sim import Device
from node.sim.bme280 import BME280, BME280_CAL, bme280_calibration_bytes  # noqa: F401
from node.sim.sensirion import SCD4x, SHT4x, _clamp16, _words  # noqa: F401


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
