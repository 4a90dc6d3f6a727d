"""The ESP32 port imports and maps the chip's states under MicroPython.

The chip's own modules (machine, network) cannot exist on this machine: a stand-in with the same
names and constants lives at that lowest boundary, and everything above it is the real port code.
"""

CHIP = '''
import sys

class _Pin:
    IN = 1; OUT = 3; PULL_UP = 2; IRQ_RISING = 1; IRQ_FALLING = 2
    def __init__(self, *a, **k): self.v = 0
    def value(self, v=None):
        if v is None: return self.v
        self.v = v

class _Machine:
    PWRON_RESET = 1; HARD_RESET = 2; WDT_RESET = 3; DEEPSLEEP_RESET = 4; SOFT_RESET = 5
    Pin = _Pin
    cause = 3
    def reset_cause(self): return self.cause
    def unique_id(self): return b"\\x24\\x0a\\xc4\\x01\\x02\\x03"

class _WLAN:
    status_code = 1000
    def __init__(self, iface): self.connects = 0
    def active(self, on): pass
    def isconnected(self): return self.status_code == 1010
    def status(self, what=None): return -60 if what == "rssi" else self.status_code
    def connect(self, ssid, pw): self.connects += 1

class _Network:
    STA_IF = 0
    STAT_IDLE = 1000; STAT_CONNECTING = 1001; STAT_WRONG_PASSWORD = 202; STAT_NO_AP_FOUND = 201
    STAT_GOT_IP = 1010
    WLAN = _WLAN

sys.modules["machine"] = _Machine()
sys.modules["network"] = _Network()
'''

PROBE = """
from node.port import esp32 as p
import machine
print("reset", p.reset_cause())
machine.cause = 1
print("reset", p.reset_cause())
cfg = {"network": {"ssid": "bliiida-iot", "password": "x"}}
print("up", p.connect_network(cfg), p.link_status())
p._wlan.status_code = 202
print("status", p.link_status(), p.link_up())
p.connect_network(cfg)
print("reconnects", p._wlan.connects)
p._wlan.status_code = 1010
print("status", p.link_status(), p.rssi())
print("uid", p.unique_id())
print("epoch", abs(p.epoch() - p.EPOCH_OFFSET - __import__("time").time()) < 2)
"""


def test_esp32_port_imports_and_maps_states_on_micropython(tmp_path):
    from tests.firmware.conftest import run_firmware

    out = run_firmware("micropython", CHIP + PROBE, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "reset watchdog",
        "reset power_on",
        "up False idle",
        "status wrong_password False",
        "reconnects 2",
        "status up -60",
        "uid 240ac4010203",
        "epoch True",
    ]
