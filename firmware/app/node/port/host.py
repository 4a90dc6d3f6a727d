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


def epoch():
    """Unix seconds (int). The host clock is always set; the ESP32's is only after NTP."""
    return int(time.time())


def time_synced():
    return True


def sync_time(server=None):
    return True


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
