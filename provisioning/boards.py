"""Board files (`boards/*.toml`) as typed `Board` objects: chip, flash layout, pins, sensors.

A board file says which chip the technician should find on the port, how big its flash is, where
MicroPython's firmware image and its filesystem ("vfs" partition) lie, and which sensors hang on
which pins. `load_board("esp32-devkitc")` or `load_board(Path("my-board.toml"))`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BOARDS_DIR = Path(__file__).resolve().parent.parent / "boards"

# Chip name in the board file -> the name esptool reports (ESPLoader.CHIP_NAME).
CHIP_NAMES = {
    "esp32": "ESP32",
    "esp32s2": "ESP32-S2",
    "esp32s3": "ESP32-S3",
    "esp32c3": "ESP32-C3",
    "esp32c6": "ESP32-C6",
    "host": "host",
}

# Where MicroPython's published .bin for the chip is written (micropython.org/download/<BOARD>):
# for the ESP32 and ESP32-S2 the image starts with the second-stage bootloader, which lives at
# 0x1000; for the ESP32-S3, -C3 and -C6 it lives at 0x0. The image carries bootloader, partition
# table (at flash 0x8000) and the application (at flash 0x10000).
FIRMWARE_OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}

# Which board pins a sensor driver takes (the keys node.bus reads from its spec).
_I2C = ("bme280", "sht4x", "scd4x")
_UART = ("mhz19", "sdm")
_I2S = ("noise",)
_EDGE_PINS = {
    "s0": {"pin": "pulse"},
    "door": {"pin": "door"},
    "beams": {"pin_a": "beam_a", "pin_b": "beam_b"},
}


class BoardError(Exception):
    """A board file that cannot be used; the message says what to do."""


class UnknownBoard(BoardError):
    pass


@dataclass(frozen=True)
class Board:
    name: str
    chip: str  # "esp32", "esp32s3", "esp32c3", or "host" for a virtual board
    arch: str  # mpy-cross -march ("xtensawin", "rv32imc", "host")
    micropython_board: str | None = None  # micropython.org/download/<this>
    flash_size: int | None = None  # bytes; None for a virtual board
    fs_offset: int | None = None  # the "vfs" partition
    fs_size: int | None = None
    app_offset: int | None = None  # the "factory" app partition
    app_size: int | None = None
    firmware_offset: int | None = None  # where the published MicroPython .bin is written
    partitions: str | None = None
    network: dict = field(default_factory=dict)
    pins: dict = field(default_factory=dict)
    sensors: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def virtual(self) -> bool:
        return self.chip == "host"

    @property
    def chip_name(self) -> str:
        """The chip as esptool names it ("ESP32-S3")."""
        return CHIP_NAMES.get(self.chip, self.chip.upper())

    def sensor_specs(self) -> list[dict]:
        """config.json `sensors`: one spec per sensor of the board, with the bus pins it uses."""
        specs = []
        for name, s in self.sensors.items():
            spec = {"name": name, **s}
            kind = s.get("type")
            if kind in _I2C and "i2c" in self.pins:
                spec.setdefault("i2c", dict(self.pins["i2c"]))
            elif kind in _UART and "uart" in self.pins:
                spec.setdefault("uart", dict(self.pins["uart"]))
            elif kind in _I2S and "i2s" in self.pins:
                spec.setdefault("i2s", dict(self.pins["i2s"]))
            for key, pin in _EDGE_PINS.get(kind, {}).items():
                if pin in self.pins:
                    spec.setdefault(key, self.pins[pin])
            specs.append(spec)
        return specs


def list_boards(directory: Path = BOARDS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.toml"))


def _int(v, what: str, path: Path) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise BoardError(f"{path.name}: {what} must be a number, not {v!r}")


def load_board(name: str | Path, directory: Path = BOARDS_DIR) -> Board:
    """The board named `name` (a file in boards/) or the board file at path `name`."""
    path = Path(name)
    if path.suffix != ".toml" or not path.exists():
        path = Path(directory) / f"{name}.toml"
    if not path.exists():
        known = ", ".join(list_boards(directory)) or "none"
        raise UnknownBoard(f"unknown board {str(name)!r}: known boards are {known} (files in {directory})")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BoardError(f"{path.name} is not valid TOML: {e}") from None
    for key in ("name", "chip", "arch"):
        if key not in d:
            raise BoardError(f"{path.name}: `{key}` is missing")
    chip = d["chip"]
    if chip not in CHIP_NAMES:
        raise BoardError(f"{path.name}: unknown chip {chip!r} (known: {', '.join(CHIP_NAMES)})")
    flash = d.get("flash", {})
    kw: dict = {}
    if chip != "host":
        for key in ("size_bytes", "vfs_offset", "vfs_size", "app_offset"):
            if key not in flash:
                raise BoardError(f"{path.name}: [flash] {key} is missing")
        kw = {
            "flash_size": _int(flash["size_bytes"], "[flash] size_bytes", path),
            "fs_offset": _int(flash["vfs_offset"], "[flash] vfs_offset", path),
            "fs_size": _int(flash["vfs_size"], "[flash] vfs_size", path),
            "app_offset": _int(flash["app_offset"], "[flash] app_offset", path),
            "app_size": _int(flash.get("app_size", 0), "[flash] app_size", path) or None,
            "firmware_offset": _int(
                flash.get("firmware_offset", FIRMWARE_OFFSETS.get(chip, 0)), "[flash] firmware_offset", path
            ),
            "partitions": flash.get("partitions"),
        }
        if kw["fs_offset"] % 4096 or kw["fs_size"] % 4096:
            raise BoardError(f"{path.name}: the filesystem offset and size must be multiples of 4096")
        if kw["fs_offset"] + kw["fs_size"] > kw["flash_size"]:
            raise BoardError(f"{path.name}: the filesystem ends past the end of the flash")
    return Board(
        name=d["name"],
        chip=chip,
        arch=d["arch"],
        micropython_board=d.get("micropython_board"),
        network=dict(d.get("network", {})),
        pins=dict(d.get("pins", {})),
        sensors=dict(d.get("sensors", {})),
        path=path,
        **kw,
    )
