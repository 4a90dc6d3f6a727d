"""Console text -> why the node is not online, in the technician's words."""

from __future__ import annotations

import pytest

from provisioning.serial_log import diagnose

BOOT = (
    "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\n"
    "loader: starting app slot a\nnode n-1 fw 0.3.0 boot 1 (power_on) on esp32\n"
)

CASES = [
    ("net: link wrong_password\nnet: link wrong_password\n", "wifi_refused", "wrong Wi-Fi password"),
    ("I (5120) wifi: STA_DISCONNECTED, reason:202\n", "wifi_refused", "wrong Wi-Fi password"),
    ("net: link no_ap\n", "wifi_no_ap", "does not see the site's Wi-Fi"),
    ("net: link connecting\nnet: link connecting\nnet: link connecting\n", "no_address", "no IP address"),
    ("net: link down\n", "link_down", "no network link"),
    (
        "mqtt: broker refused the connection: not authorized: wrong user name or password, or no access "
        "(CONNACK 5)\n",
        "broker_refused",
        "refused the node's credentials",
    ),
    (
        "mqtt: cannot reach broker broker.site.lan:1883 (OSError(113,))\n",
        "broker_unreachable",
        "cannot reach the broker at broker.site.lan:1883",
    ),
    ("config: mqtt.host is required\n", "config_invalid", "mqtt.host is required"),
    ("sht4x: no answer at 0x44\nmqtt: connected to b:1883 as n-1\nsent seq=1\n", "online", "accepted"),
    (
        "The filesystem appears to be corrupted. If you had important data there, you\n",
        "fs_corrupt",
        "cannot mount",
    ),
    ("Performing initial setup\n", "fs_empty", "empty filesystem"),
    (
        'loader: the app crashed:\nTraceback (most recent call last):\n  File "node/app.py", line 3\n'
        "MemoryError: memory allocation failed\n",
        "app_crashed",
        "MemoryError",
    ),
    ("", "silent", "Nothing on the console"),
]


@pytest.mark.parametrize("tail,code,words", CASES, ids=[c[1] + str(i) for i, c in enumerate(CASES)])
def test_diagnosis(tail, code, words):
    text = tail if code == "silent" else BOOT + tail
    d = diagnose(text)
    assert d.code == code, d
    assert words in d.summary
    assert d.online == (code == "online") and (d.action or code == "online")


def test_latest_network_state_wins_and_earlier_boots_are_ignored():
    before = BOOT + "mqtt: cannot reach broker b:1883 (OSError(113,))\n"
    assert diagnose(before + "mqtt: connected to b:1883 as n-1\n").online
    # a new boot: what the previous run said no longer counts
    assert (
        diagnose(before + "mqtt: connected to b:1883 as n-1\n" + BOOT + "net: link no_ap\n").code
        == "wifi_no_ap"
    )
    # a virtual board's start marker counts as a boot too
    assert diagnose("--- board start (micropython, power_on) ---\nnet: link down\n").code == "link_down"


def test_sensor_fault_is_reported_alongside():
    d = diagnose(BOOT + "SensorFault: scd4x: no answer at 0x62\nmqtt: cannot reach broker b:1883 (x)\n")
    assert d.code == "broker_unreachable"
    assert [a.code for a in d.also] == ["sensor_missing"] and "scd4x" in d.also[0].summary
    d = diagnose(BOOT + "sensor fault: mhz19: no answer\n")
    assert d.code == "sensor_missing" and "mhz19" in d.summary and "wiring" in d.action
