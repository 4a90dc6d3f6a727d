# ESP32 port: the only module that touches machine, network and esp32 on the chip.
import gc
import time

import asyncio
import machine
import network

NAME = "esp32"
EOF_ERRORS = (EOFError, OSError)
EPOCH_OFFSET = 946684800  # MicroPython on ESP32 counts from 2000-01-01
_MIN_SYNCED = 1700000000  # any earlier clock has never been set

ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
sleep_ms = asyncio.sleep_ms

_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deep_sleep",
    machine.SOFT_RESET: "soft",
}
_wlan = None
_lan = None
_WIFI_STATUS = {
    network.STAT_IDLE: "idle",
    network.STAT_CONNECTING: "connecting",
    network.STAT_WRONG_PASSWORD: "wrong_password",
    network.STAT_NO_AP_FOUND: "no_ap",
    network.STAT_GOT_IP: "up",
}


def epoch():
    return int(time.time()) + EPOCH_OFFSET


def time_synced():
    return epoch() >= _MIN_SYNCED


def sync_time(server=None):
    import ntptime

    if server:
        ntptime.host = server
    try:
        ntptime.settime()
        return True
    except OSError:
        return False


def mem_free():
    gc.collect()
    return gc.mem_free()


def reset_cause():
    return _RESET_CAUSES.get(machine.reset_cause(), "unknown")


def reset():
    machine.reset()


def unique_id():
    import binascii

    return binascii.hexlify(machine.unique_id()).decode()


def link_status():
    """Honest state of the link: up, connecting, wrong_password, no_ap, failed, idle or down."""
    if _lan is not None:
        return "up" if _lan.isconnected() else "down"
    if _wlan is None:
        return "down"
    st = _wlan.status()
    if _wlan.isconnected():
        return "up"
    return _WIFI_STATUS.get(st, "failed")


def link_up():
    return link_status() == "up"


def rssi():
    if _wlan is not None and _wlan.isconnected():
        return _wlan.status("rssi")
    return None


def connect_network(cfg):
    """Start Wi-Fi station or Ethernet (cfg['network']) and (re)connect when needed.

    Returns whether the link is up now; the caller retries with its backoff. A station that failed
    (wrong password, no access point) is asked to connect again on the next call.
    """
    global _wlan, _lan
    net = cfg.get("network") or {}
    if net.get("type") == "ethernet":
        if _lan is None:
            _lan = network.LAN(
                mdc=machine.Pin(net.get("mdc", 23)),
                mdio=machine.Pin(net.get("mdio", 18)),
                power=machine.Pin(net.get("power", 12)),
                phy_type=getattr(network, net.get("phy", "PHY_LAN8720")),
                phy_addr=net.get("phy_addr", 0),
            )
            _lan.active(True)
        return _lan.isconnected()
    if _wlan is None:
        _wlan = network.WLAN(network.STA_IF)
        _wlan.active(True)
    status = link_status()
    if status != "up" and status != "connecting" and net.get("ssid"):
        _wlan.connect(net["ssid"], net.get("password", ""))
    return status == "up"


class Watchdog:
    def __init__(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self._wdt.feed()


def log(msg):
    print(msg)


def identify(seconds, pin=2):
    """Blink the status LED for `seconds` without blocking the event loop."""
    led = machine.Pin(pin, machine.Pin.OUT)

    async def blink():
        for _ in range(seconds * 4):
            led.value(not led.value())
            await asyncio.sleep_ms(250)
        led.value(0)

    asyncio.create_task(blink())


def set_time(t):
    """Set the RTC from a Unix time (the fleet's clock when NTP cannot be reached)."""
    tm = time.gmtime(t - EPOCH_OFFSET)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))


# --- buses for sensor drivers (node.bus opens them by the pins of the board's sensor specs) -----
def open_i2c(c):
    return machine.I2C(c.get("id", 0), sda=machine.Pin(c.get("sda", 21)), scl=machine.Pin(c.get("scl", 22)),
                       freq=c.get("freq", 100000))


def open_uart(c, baud):
    return machine.UART(c.get("id", 2), baudrate=c.get("baud", baud), tx=c.get("tx", 17), rx=c.get("rx", 16),
                        timeout=0)


def open_i2s(c, rate):
    return machine.I2S(c.get("id", 0), sck=machine.Pin(c.get("sck", 26)), ws=machine.Pin(c.get("ws", 25)),
                       sd=machine.Pin(c.get("sd", 33)), mode=machine.I2S.RX, bits=32, format=machine.I2S.MONO,
                       rate=rate, ibuf=c.get("ibuf", 20000))


def watch_edges(pin_no, active_low, q):
    """Record every edge of a GPIO in `q` (an Edges ring) from its interrupt, level 1 = active."""
    pin = machine.Pin(pin_no, machine.Pin.IN, machine.Pin.PULL_UP if active_low else None)

    def irq(p):
        v = p.value()
        q.push(time.ticks_ms(), (not v) if active_low else v)

    pin.irq(irq, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)
    q.pin = pin


# --- over-the-air updates (node/ota.py) ---------------------------------------------------------
def _arch():
    import sys

    # sys.implementation._mpy: bits 10.. are the native architecture (MP_NATIVE_ARCH_*)
    a = getattr(sys.implementation, "_mpy", 0) >> 10
    return {10: "xtensawin", 11: "rv32imc"}.get(a, "xtensawin")


ARCH = _arch()


def checkpoint(step):
    """Test hook of virtual boards; nothing on the chip."""


# Firmware-image updates (the MicroPython binary itself, not the app slots) through esp32.Partition;
# node/fwimage.py drives them. They need an OTA-capable partition table (two app partitions,
# ota_0/ota_1, and otadata: e.g. MicroPython's partitions-4MiBplus.csv / the *-OTA board variants);
# the default 4 MiB table has one app partition and fw_next_partition() raises OSError there.
# Sequence:
#   part = fw_next_partition()                      # the app partition not running
#   fw_write_block(part, n, buf) for each 4096-byte block n (erased and written by the driver)
#   fw_read_block(part, n, buf)                     # read back to hash what landed on flash
#   fw_set_boot(part); reset()                      # the bootloader tries it once
#   fw_mark_valid()                                 # from the new image, once it is healthy;
#                                                   # otherwise the bootloader rolls back by itself
FW_BLOCK = 4096


def fw_next_partition():
    from esp32 import Partition

    try:
        return Partition(Partition.RUNNING).get_next_update()
    except OSError:
        raise OSError("no OTA update partition: flash an OTA-capable partition table first")


def fw_info(part):
    """(label, size in bytes) of an app partition."""
    info = part.info()
    return info[4], info[3]


def fw_running():
    """Label of the app partition the bootloader started (ota_0, ota_1 or factory)."""
    from esp32 import Partition

    return Partition(Partition.RUNNING).info()[4]


def fw_write_block(part, block, data):
    if len(data) < FW_BLOCK:
        data = bytes(data) + b"\xff" * (FW_BLOCK - len(data))
    part.writeblocks(block, data)


def fw_read_block(part, block, buf):
    part.readblocks(block, buf)


def fw_set_boot(part):
    part.set_boot()


def fw_mark_valid():
    from esp32 import Partition

    Partition.mark_app_valid_cancel_rollback()


# --- app slots in ROM (node/romfs.py) -------------------------------------------------------------
# A firmware built with two romfs partitions (MICROPY_VFS_ROM) holds slot a's image in segment 0 and
# slot b's in segment 1; the loader mounts the running slot's at /rom. Written through vfs.rom_ioctl
# as mpremote's `romfs deploy` does: prepare (erase) for the size, then whole chunks of a multiple of
# the minimum write size at increasing offsets, then done. Not run on a chip yet.
ROM_CHUNK = 4096


def rom_slots():
    try:
        import vfs

        return vfs.rom_ioctl(1) >= 2
    except (ImportError, AttributeError, OSError):
        return False


class _RomSegment:
    def __init__(self, slot, size):
        import vfs

        self.ioctl = vfs.rom_ioctl
        self.seg = "ab".index(slot)
        if size > len(self.ioctl(2, self.seg)):
            raise OSError("the image (%d bytes) is larger than ROM segment %d" % (size, self.seg))
        step = self.ioctl(3, self.seg, size)
        step = step if step > 0 else 1
        self.buf = bytearray((ROM_CHUNK + step - 1) // step * step)
        self.n = 0
        self.offset = 0

    def write(self, data):
        i = 0
        while i < len(data):
            k = min(len(data) - i, len(self.buf) - self.n)
            self.buf[self.n:self.n + k] = data[i:i + k]
            self.n += k
            i += k
            if self.n == len(self.buf):
                self._flush()

    def _flush(self):
        for j in range(self.n, len(self.buf)):
            self.buf[j] = 0
        self.ioctl(4, self.seg, self.offset, self.buf)
        self.offset += len(self.buf)
        self.n = 0

    def close(self):
        if self.n:
            self._flush()
        self.ioctl(5, self.seg)


def rom_writer(slot, size):
    return _RomSegment(slot, size)
