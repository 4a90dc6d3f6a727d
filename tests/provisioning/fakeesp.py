"""A fake ESP board behind a fake serial port: the lowest boundary esptool talks to.

esptool opens its port with pyserial's `serial_for_url(port, exclusive=True)`. A URL
`fakeesp://NAME` resolves (pyserial's protocol handlers, `protocol_fakeesp.py` here) to `FakeSerial`,
a pyserial `SerialBase` wired to the `FakeChip` registered as NAME. Everything above the port is
real: esptool's SLIP framing, reset sequences, chip detection, stub upload, compressed writes,
MD5 verification, and our code on top.

The chip models what esptool needs of a ROM bootloader and of its flasher stub:
* DTR/RTS through the classic auto-reset circuit (EN low while RTS and not DTR; IO0 low while DTR
  and not RTS): when EN rises with IO0 low the chip enters download mode, otherwise it boots its
  app, whose console (`console` bytes) is then what the port reads. esptool's atomic ioctl reset
  is refused (ENOTTY), as on any port without modem lines, so its classic sequence is the one used.
* SYNC, READ_REG (chip magic, efuse MAC, SPI registers), WRITE_REG (SPI user commands: RDID gives
  the flash's JEDEC id, hence its size), GET_SECURITY_INFO (chip id on the ESP32-S3/C3, refused by
  the ESP32 ROM), MEM_* (stub upload, then "OHAI"), SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE,
  FLASH_BEGIN/DATA/END, FLASH_DEFL_BEGIN/DATA/END, SPI_FLASH_MD5, READ_FLASH (stub) and
  READ_FLASH_SLOW (ROM).
"""

from __future__ import annotations

import errno
import hashlib
import struct
import threading
import time
import zlib

import serial
from esptool.targets import CHIP_DEFS
from serial.serialutil import SerialBase, SerialException

CHIPS: dict[str, FakeChip] = {}
JEDEC_SIZE_IDS = {1 << 20: 0x14, 2 << 20: 0x15, 4 << 20: 0x16, 8 << 20: 0x17, 16 << 20: 0x18}
_HANDLERS = "tests.provisioning"


def install() -> None:
    if _HANDLERS not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(_HANDLERS)


def slip(data: bytes) -> bytes:
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class FakeChip:
    def __init__(
        self,
        name: str,
        chip: str = "esp32",
        flash_size: int = 4 << 20,
        *,
        answers: bool = True,
        console: bytes = b"",
        mac: bytes = b"\x24\x0a\xc4\x12\x34\x56",
        mode: str = "app",
        flash: bytes | None = None,
    ):
        self.name = name
        self.cls = CHIP_DEFS[chip]
        self.flash = bytearray(b"\xff" * flash_size)
        if flash:
            self.flash[: len(flash)] = flash
        self.flash_size = flash_size
        self.answers = answers  # False: a device that never replies (dead bootloader, wrong device)
        self.console = console  # what the app prints after it boots
        self.mac = mac
        self.mode = mode  # "download" or "app"
        self.stub = False
        self.regs: dict[int, int] = {}
        self.out = bytearray()
        self.inbuf = bytearray()
        self.lock = threading.Lock()
        self.open_ports = 0
        self.dtr = False
        self.rts = False
        self.en_rose_at: float | None = None
        self.boots: list[str] = []  # every boot: "download" or "app"
        self.writes: list[tuple[int, int]] = []  # (offset, length) of each FLASH_*BEGIN
        self.commands: list[str] = []
        self._w = None  # (offset, blocksize, decompressor or None, written)
        CHIPS[name] = self

    @property
    def url(self) -> str:
        return f"fakeesp://{self.name}"

    # --- pins -----------------------------------------------------------------------------
    def set_lines(self, dtr: bool, rts: bool) -> None:
        en_before = not (self.rts and not self.dtr)
        self.dtr, self.rts = dtr, rts
        en = not (rts and not dtr)
        io0 = not (dtr and not rts)
        now = time.monotonic()
        if en and not en_before:
            self.en_rose_at = now
            self._boot("download" if not io0 else "app")
        elif self.en_rose_at is not None and now - self.en_rose_at < 0.02 and not io0 and self.mode == "app":
            # IO0 sampled a few ms after EN rises (the RC on EN): still in time for download mode
            self._boot("download")

    def _boot(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
            self.stub = False
            self.inbuf.clear()
            self.out.clear()
            self.boots.append(mode)
            if mode == "download":
                self.out += (
                    b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
                )
                self.out += b"waiting for download\r\n"
            else:
                self.out += b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n" + self.console

    # --- bytes in, bytes out --------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        if self.mode != "download" or not self.answers:
            return
        self.inbuf += data
        while True:
            start = self.inbuf.find(b"\xc0")
            if start < 0:
                self.inbuf.clear()
                return
            end = self.inbuf.find(b"\xc0", start + 1)
            if end < 0:
                del self.inbuf[:start]
                return
            frame = bytes(self.inbuf[start + 1 : end])
            del self.inbuf[: end + 1]
            if not frame:
                continue
            frame = frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
            self._packet(frame)

    def _reply(self, op: int, data: bytes = b"", val: int = 0, status: bytes | None = None) -> None:
        if status is None:
            status = b"\x00\x00" if self.stub else b"\x00\x00\x00\x00"
        body = data + status
        self.out += slip(struct.pack("<BBHI", 1, op, len(body), val) + body)

    def _fail(self, op: int, code: int = 0x05) -> None:
        self._reply(op, status=bytes([1, code]) + (b"" if self.stub else b"\x00\x00"))

    def _packet(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0:
            return  # READ_FLASH acknowledgements from the host
        _, op, size, _chk = struct.unpack("<BBHI", frame[:8])
        data = frame[8 : 8 + size]
        names = {v: k for k, v in self.cls.ESP_CMDS.items()}
        self.commands.append(names.get(op, hex(op)))
        c = self.cls
        if op == c.ESP_CMDS["SYNC"]:
            for _ in range(8):
                self._reply(op, val=0 if self.stub else 0x20120707)
        elif op == c.ESP_CMDS["READ_REG"]:
            (addr,) = struct.unpack("<I", data[:4])
            self._reply(op, val=self._read_reg(addr))
        elif op == c.ESP_CMDS["WRITE_REG"]:
            for i in range(0, len(data), 16):
                addr, value, mask, _delay = struct.unpack("<IIII", data[i : i + 16])
                self._write_reg(addr, value, mask)
            self._reply(op)
        elif op == c.ESP_CMDS["GET_SECURITY_INFO"]:
            if c.USES_MAGIC_VALUE:  # ESP32 (and ESP8266) ROM: no such command
                self._fail(op)
            else:
                self._reply(op, struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, c.IMAGE_CHIP_ID, 0))
        elif op == c.ESP_CMDS["MEM_BEGIN"] or op == c.ESP_CMDS["MEM_DATA"]:
            self._reply(op)
        elif op == c.ESP_CMDS["MEM_END"]:
            self._reply(op)
            self.stub = True
            self.out += slip(b"OHAI")
        elif op in (c.ESP_CMDS["SPI_ATTACH"], c.ESP_CMDS["SPI_SET_PARAMS"]):
            self._reply(op)
        elif op == c.ESP_CMDS["CHANGE_BAUDRATE"]:
            self._reply(op)
        elif op in (c.ESP_CMDS["FLASH_BEGIN"], c.ESP_CMDS["FLASH_DEFL_BEGIN"]):
            size, _blocks, blocksize, offset = struct.unpack("<IIII", data[:16])
            if op == c.ESP_CMDS["FLASH_BEGIN"] and size == 0:
                self._reply(op)  # esp.run(): an empty begin
                return
            if offset + size > self.flash_size:
                self._fail(op, 0x01)
                return
            deco = zlib.decompressobj() if op == c.ESP_CMDS["FLASH_DEFL_BEGIN"] else None
            self._w = [offset, blocksize, deco, 0]
            self.writes.append((offset, size))
            self._reply(op)
        elif op in (c.ESP_CMDS["FLASH_DATA"], c.ESP_CMDS["FLASH_DEFL_DATA"]):
            length = struct.unpack("<I", data[:4])[0]
            block = data[16 : 16 + length]
            offset, _bs, deco, written = self._w
            raw = deco.decompress(block) if deco else block
            self.flash[offset + written : offset + written + len(raw)] = raw
            self._w[3] += len(raw)
            self._reply(op)
        elif op in (c.ESP_CMDS["FLASH_END"], c.ESP_CMDS["FLASH_DEFL_END"]):
            self._reply(op)
            if data[:4] == b"\x00\x00\x00\x00" and op == c.ESP_CMDS["FLASH_END"] and not self.stub:
                self._boot("app")  # "reboot" flag set
        elif op == c.ESP_CMDS["SPI_FLASH_MD5"]:
            addr, size = struct.unpack("<II", data[:8])
            digest = hashlib.md5(self.flash[addr : addr + size]).digest()
            self._reply(op, digest if self.stub else digest.hex().encode())
        elif op == c.ESP_CMDS["READ_FLASH"] and self.stub:
            offset, length, block, _inflight = struct.unpack("<IIII", data[:16])
            self._reply(op)
            chunk = bytes(self.flash[offset : offset + length])
            for i in range(0, length, block):
                self.out += slip(chunk[i : i + block])
            self.out += slip(hashlib.md5(chunk).digest())
        elif op == c.ESP_CMDS["READ_FLASH_SLOW"]:
            offset, length = struct.unpack("<II", data[:8])
            self._reply(op, bytes(self.flash[offset : offset + length]))
        else:
            self._fail(op)

    # --- registers ------------------------------------------------------------------------
    def _spi(self, offs: str) -> int:
        return self.cls.SPI_REG_BASE + getattr(self.cls, offs)

    def _read_reg(self, addr: int) -> int:
        c = self.cls
        if addr == c.CHIP_DETECT_MAGIC_REG_ADDR and c.USES_MAGIC_VALUE:
            magic = c.MAGIC_VALUE
            return magic[0] if isinstance(magic, list | tuple) else magic
        if addr == getattr(c, "UART_CLKDIV_REG", None):
            return int(40e6 * getattr(c, "XTAL_CLK_DIVIDER", 1) / 115200)
        if c.CHIP_NAME == "ESP32" and addr in (c.EFUSE_RD_REG_BASE + 4, c.EFUSE_RD_REG_BASE + 8):
            m = self.mac
            return (
                struct.unpack(">I", m[2:6])[0]
                if addr == c.EFUSE_RD_REG_BASE + 4
                else struct.unpack(">H", m[0:2])[0]
            )
        return self.regs.get(addr, 0)

    def _write_reg(self, addr: int, value: int, mask: int) -> None:
        c = self.cls
        self.regs[addr] = (self.regs.get(addr, 0) & ~mask) | (value & mask)
        if addr == c.SPI_REG_BASE and value & (1 << 18):  # SPI_CMD_USR: run the user command
            command = self.regs.get(self._spi("SPI_USR2_OFFS"), 0) & 0xFFFF
            w0 = self._spi("SPI_W0_OFFS")
            if command == 0x9F:  # RDID: Winbond W25Q series, size from the id
                self.regs[w0] = 0xEF | (0x40 << 8) | (JEDEC_SIZE_IDS[self.flash_size] << 16)
            else:
                self.regs[w0] = 0
            self.regs[addr] = 0  # command done

    def read_out(self, n: int) -> bytes:
        with self.lock:
            data = bytes(self.out[:n])
            del self.out[:n]
            return data


class FakeSerial(SerialBase):
    """pyserial port whose other end is a FakeChip (`fakeesp://NAME`)."""

    def open(self):
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        name = str(self._port).split("://", 1)[-1]
        chip = CHIPS.get(name)
        if chip is None:
            raise SerialException(
                errno.ENOENT,
                f"could not open port {self._port}: [Errno 2] No such file or directory: '{self._port}'",
            )
        if self._exclusive and chip.open_ports:
            raise SerialException(
                errno.EAGAIN,
                f"Could not exclusively lock port {self._port}: [Errno 11] Resource temporarily unavailable",
            )
        self.chip = chip
        chip.open_ports += 1
        self.is_open = True
        self._update_dtr_state()
        self._update_rts_state()

    def close(self):
        if self.is_open:
            self.is_open = False
            self.chip.open_ports -= 1

    def _reconfigure_port(self):
        pass

    def _update_dtr_state(self):
        if self.is_open:
            self.chip.set_lines(self._dtr_state, self.chip.rts)

    def _update_rts_state(self):
        if self.is_open:
            self.chip.set_lines(self.chip.dtr, self._rts_state)

    def fileno(self):
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")  # no TIOCMSET on this port

    @property
    def in_waiting(self):
        return len(self.chip.out)

    def read(self, size=1):
        if not self.is_open:
            raise serial.PortNotOpenError()
        deadline = time.monotonic() + (self._timeout if self._timeout is not None else 1e9)
        buf = bytearray()
        while len(buf) < size:
            buf += self.chip.read_out(size - len(buf))
            if len(buf) >= size or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        return bytes(buf)

    def write(self, data):
        if not self.is_open:
            raise serial.PortNotOpenError()
        self.chip.receive(bytes(data))
        return len(data)

    def reset_input_buffer(self):
        with self.chip.lock:
            self.chip.out.clear()

    def reset_output_buffer(self):
        pass

    def flush(self):
        pass

    @property
    def cts(self):
        return True

    @property
    def dsr(self):
        return True

    @property
    def ri(self):
        return False

    @property
    def cd(self):
        return True
