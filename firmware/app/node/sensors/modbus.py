# Modbus RTU master over RS-485 (UART), function 0x04 (read input registers), and the Eastron
# SDM120/SDM630 energy meters on it (input registers are IEEE-754 float32, big-endian pairs).
import struct

from node import bus as hw

EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
              4: "slave device failure", 6: "slave device busy"}


class ModbusRTU:
    def __init__(self, uart, timeout_ms=300, retries=2, gap_ms=5):
        self.uart = uart
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.gap_ms = gap_ms  # >= 3.5 character times between frames (4 ms at 9600 baud)
        self._req = bytearray(8)
        self._rsp = bytearray(5 + 2 * 125)

    def request(self, slave, func, addr, count):
        r = self._req
        r[0] = slave
        r[1] = func
        r[2] = addr >> 8
        r[3] = addr & 0xFF
        r[4] = count >> 8
        r[5] = count & 0xFF
        crc = hw.crc16_modbus(r, 6)
        r[6] = crc & 0xFF  # CRC goes low byte first
        r[7] = crc >> 8
        return r

    def _receive(self, n):
        """Read up to n bytes until complete or timeout; returns the count (3-5 for an exception)."""
        got = 0
        start = hw.ticks_ms()
        mv = memoryview(self._rsp)
        while got < n:
            chunk = self.uart.read(n - got)
            if chunk:
                mv[got:got + len(chunk)] = chunk
                got += len(chunk)
                if got >= 5 and self._rsp[1] & 0x80:
                    return 5
            elif hw.ticks_diff(hw.ticks_ms(), start) > self.timeout_ms:
                break
            else:
                hw.sleep_ms(2)
        return got

    def read_input_registers(self, slave, addr, count):
        """Returns a memoryview of the 2*count data bytes; raises SensorFault after the retries."""
        req = self.request(slave, 0x04, addr, count)
        n = 5 + 2 * count
        reason = "no answer"
        for _ in range(self.retries + 1):
            while self.uart.read():  # stale bytes from an earlier, timed-out answer
                pass
            self.uart.write(req)
            got = self._receive(n)
            r = self._rsp
            if got < 5:
                reason = "no answer" if got == 0 else "short answer"
            elif hw.crc16_modbus(r, got - 2) != r[got - 2] | (r[got - 1] << 8):
                reason = "crc error"
            elif r[0] != slave:
                reason = "answer from slave %d" % r[0]
            elif r[1] == 0x84:
                # An exception is the device's definite answer: retrying would not change it.
                raise hw.SensorFault("modbus: exception %d (%s)" % (r[2], EXCEPTIONS.get(r[2], "?")))
            elif got != n or r[1] != 0x04 or r[2] != 2 * count:
                reason = "malformed answer"
            else:
                return memoryview(r)[3:3 + 2 * count]
            hw.sleep_ms(self.gap_ms)
        raise hw.SensorFault("modbus: slave %d %s" % (slave, reason))


# Eastron input registers (0-based addresses), float32 big-endian.
SDM_VOLTAGE = 0x0000  # V (phase 1)
SDM_CURRENT = 0x0006  # A (phase 1)
SDM_POWER = 0x000C  # W (phase 1; the SDM120's only phase)
SDM630_TOTAL_POWER = 0x0034  # W, sum of phases
SDM_IMPORT_ENERGY = 0x0048  # kWh


def floats(data, n):
    return struct.unpack(">%df" % n, data)


class SDM:
    """Eastron SDM120 (single phase) or SDM630 (three phase): voltage, current, power, energy."""

    def __init__(self, spec, clock, bus=None):
        self.model = spec.get("model", "sdm120")
        self.slave = spec.get("slave", 1)
        self.mb = ModbusRTU(bus or hw.uart(spec, "sdm", clock, 9600), spec.get("timeout_ms", 300),
                            spec.get("retries", 2))

    def setup(self):
        pass

    def read(self):
        mb = self.mb
        if self.model == "sdm630":
            v = floats(mb.read_input_registers(self.slave, SDM_VOLTAGE, 18), 9)  # V1-3, I1-3, P1-3
            power = floats(mb.read_input_registers(self.slave, SDM630_TOTAL_POWER, 2), 1)[0]
            out = [("voltage_l%d" % (i + 1), "V", round(v[i], 1)) for i in range(3)]
            out += [("current_l%d" % (i + 1), "A", round(v[3 + i], 3)) for i in range(3)]
        else:
            v = floats(mb.read_input_registers(self.slave, SDM_VOLTAGE, 14), 7)  # V, -, -, I, -, -, P
            power = v[6]
            out = [("voltage", "V", round(v[0], 1)), ("current", "A", round(v[3], 3))]
        kwh = floats(mb.read_input_registers(self.slave, SDM_IMPORT_ENERGY, 2), 1)[0]
        if not (kwh == kwh and 0 <= kwh < 1e9):  # NaN or nonsense
            raise hw.SensorFault("sdm: energy %r out of range" % kwh)
        out.append(("power", "W", round(power, 1)))
        out.append(("energy", "Wh", round(kwh * 1000, 0)))
        return out
