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


def epoch():
    return time.time() + EPOCH_OFFSET


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


def link_up():
    if _lan is not None:
        return _lan.isconnected()
    return _wlan is not None and _wlan.isconnected()


def rssi():
    if _wlan is not None and _wlan.isconnected():
        return _wlan.status("rssi")
    return None


def connect_network(cfg):
    """Start Wi-Fi station or Ethernet (cfg['network']); returns whether the link is up now."""
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
    if not _wlan.isconnected() and net.get("ssid"):
        _wlan.connect(net["ssid"], net.get("password", ""))
    return _wlan.isconnected()


class Watchdog:
    def __init__(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self._wdt.feed()


def log(msg):
    print(msg)
