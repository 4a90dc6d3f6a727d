"""Board descriptions (boards/*.toml) are data: each parses and has what provisioning needs."""

import tomllib
from pathlib import Path

import pytest

BOARDS = sorted((Path(__file__).resolve().parents[3] / "boards").glob("*.toml"))
ARCHS = {"esp32": "xtensawin", "esp32s3": "xtensawin", "esp32c3": "rv32imc", "host": "host"}
KNOWN_SENSORS = {"sim_climate", "scd4x", "sht4x", "bme280", "mhz19", "sdm", "s0", "door", "beams", "noise"}


def test_expected_boards_exist():
    names = {p.stem for p in BOARDS}
    assert {"esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1", "olimex-esp32-poe", "sim"} <= names


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_board_file(path):
    b = tomllib.loads(path.read_text())
    assert b["name"] == path.stem
    assert ARCHS[b["chip"]] == b["arch"]
    assert "size" in b["flash"]
    for name, spec in b["sensors"].items():
        assert spec["type"] in KNOWN_SENSORS, name
    if b["chip"] == "host":
        return
    f = b["flash"]
    # The filesystem partition ends the flash, as in MicroPython's ports/esp32/partitions-*.csv.
    assert f["vfs_offset"] + f["vfs_size"] == f["size_bytes"]
    assert f["app_offset"] + f["app_size"] <= f["vfs_offset"]
    assert f["size"] == f"{f['size_bytes'] >> 20}MB"
    pins = b["pins"]
    assert {"sda", "scl"} <= set(pins["i2c"]) and {"tx", "rx"} <= set(pins["uart"])
    for key in ("pulse", "door", "beam_a", "beam_b", "status_led"):
        assert isinstance(pins[key], int)
    if "noise" in {s["type"] for s in b["sensors"].values()}:
        assert {"sck", "ws", "sd"} <= set(pins["i2s"])
    if b["network"]["type"] == "ethernet":
        n = b["network"]
        assert (n["mdc"], n["mdio"], n["power"], n["phy_addr"]) == (23, 18, 12, 0)
    used = [v for v in pins.values() if isinstance(v, int)]
    used += [v for d in pins.values() if isinstance(d, dict) for k, v in d.items() if k != "id"]
    assert len(used) == len(set(used)), "a GPIO is assigned twice"
