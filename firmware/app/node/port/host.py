# Host port: MicroPython unix port and CPython. The board's folder is its flash (the process's cwd).
# Tests steer the simulated hardware through files in that folder: `link-down` cuts the network.
import gc
import os
import sys
import time

import asyncio

NAME = "host"
MICROPYTHON = sys.implementation.name == "micropython"
EOF_ERRORS = (EOFError, OSError) if MICROPYTHON else (EOFError, OSError, asyncio.IncompleteReadError)

if MICROPYTHON:
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    sleep_ms = asyncio.sleep_ms
else:
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


_boot_time = time.time()
_clock_set = False


def _clock_unset():
    # A `clock-unset` file makes the board start like an ESP32 without NTP: its clock near 2000.
    try:
        os.stat("clock-unset")
        return not _clock_set
    except OSError:
        return False


_sim_clock = None  # a simulated building's accelerated clock, () -> Unix seconds; see set_clock


def set_clock(fn):
    """Run the node's clock from fn (virtual boards in an accelerated simulated building)."""
    global _sim_clock
    _sim_clock = fn


def epoch():
    """Unix seconds (int)."""
    if _sim_clock is not None:
        return _sim_clock()
    if _clock_unset():
        return 946684800 + int(time.time() - _boot_time)
    return int(time.time())


def time_synced():
    return not _clock_unset()


def sync_time(server=None):
    return not _clock_unset()


def set_time(t):
    """The host clock is right already; remember that the node was told the time."""
    global _clock_set
    _clock_set = True


def mem_free():
    """Free heap in bytes, or None where the runtime has no bounded heap (CPython)."""
    if MICROPYTHON:
        gc.collect()
        return gc.mem_free()
    return None


def reset_cause():
    return os.getenv("MAILLE_RESET_CAUSE", "power_on")


def reset():
    # The virtual board's supervisor restarts the process on this exit code, like a chip reset.
    sys.exit(75)


def unique_id():
    return os.getenv("MAILLE_BOARD_UID", "host")


def link_up():
    try:
        os.stat("link-down")
        return False
    except OSError:
        return True


def link_status():
    return "up" if link_up() else "down"


def rssi():
    return None


def connect_network(cfg):
    """Bring the link up; the host's link is up unless a test cut it."""
    return link_up()


class Watchdog:
    """No hardware watchdog on the host; the interface is the ESP32's."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms

    def feed(self):
        pass


def log(msg):
    print(msg)


def identify(seconds):
    """Blink the status LED; a virtual board says so on its console."""
    log("identify: LED blinking for %d s" % seconds)


def _no_bus(what):
    raise OSError("no %s on the host port: give the sensor a 'sim' spec to simulate it" % what)


def open_i2c(c):
    _no_bus("I2C bus")


def open_uart(c, baud):
    _no_bus("UART")


def open_i2s(c, rate):
    _no_bus("I2S microphone")


def watch_edges(pin_no, active_low, q):
    _no_bus("GPIO")


# --- over-the-air updates (node/ota.py) ---------------------------------------------------------
ARCH = "host" if MICROPYTHON else "py"  # release bundles this runtime runs: .mpy for the unix port


def checkpoint(step):
    """Test hook: a `halt-at` file naming this OTA step freezes the board here (the test then cuts
    its power, so every step of an update can be interrupted at an exact point)."""
    try:
        with open("halt-at") as f:
            want = f.read().strip()
    except OSError:
        return
    if want != step:
        return
    os.remove("halt-at")
    print("halt: " + step)
    while True:
        time.sleep(1)


_NO_IMAGE = "firmware image updates need esp32.Partition (an ESP32 with an OTA partition table); " \
            "the host port updates the application slots only"


def fw_next_partition():
    raise OSError(_NO_IMAGE)


def fw_write_block(part, block, data):
    raise OSError(_NO_IMAGE)


def fw_set_boot(part):
    raise OSError(_NO_IMAGE)


def fw_mark_valid():
    raise OSError(_NO_IMAGE)


def fw_info(part):
    raise OSError(_NO_IMAGE)


def fw_running():
    raise OSError(_NO_IMAGE)


def fw_read_block(part, block, buf):
    raise OSError(_NO_IMAGE)


# --- app slots in ROM (node/romfs.py) -------------------------------------------------------------
# A virtual board run by provisioning.romfs has each slot's image mapped as a ROM segment
# (MAILLE_ROMFS_A/B); the segment of a slot is the file rom/<slot>.img, mapped at the next power-on.
def rom_slots():
    """The slots run from ROM segments: an update writes the target slot's image too."""
    return MICROPYTHON and bool(os.getenv("MAILLE_ROMFS_A") or os.getenv("MAILLE_ROMFS_B"))


class _RomImage:
    """A slot's segment written whole, then renamed over the old one (a cut leaves that one)."""

    def __init__(self, slot, size):
        try:
            os.mkdir("rom")
        except OSError:
            pass
        self.path = "rom/%s.img" % slot
        self.f = open(self.path + ".tmp", "wb")

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()
        os.rename(self.path + ".tmp", self.path)


def rom_writer(slot, size):
    return _RomImage(slot, size)
