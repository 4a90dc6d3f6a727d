"""A stand-in for MicroPython's published firmware .bin, laid out like the real one.

From the image's first byte (written at the board's firmware offset): the second-stage bootloader
(an ESP image: 0xE9 magic, the chip id in its extended header), the partition table at flash 0x8000
(MicroPython's partitions-4MiB.csv: nvs, phy_init, factory, vfs), and the application at the
factory partition, starting with its esp_app_desc_t (project "micropython", version, ELF hash).
The code inside is filler: nothing runs it, esptool and our checks only read these structures.
"""

from __future__ import annotations

import hashlib
import struct

from esptool.targets import CHIP_DEFS

from provisioning.boards import Board


def esp_image(chip: str, segment: bytes) -> bytes:
    """An ESP image with one segment: 8-byte header, 16-byte extended header, segment, checksum."""
    chip_id = CHIP_DEFS[chip].IMAGE_CHIP_ID
    header = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)  # DIO, 4MB/40MHz, entry point
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", chip_id, 0, 0, 0xFFFF, b"\0" * 4, 0)
    seg = struct.pack("<II", 0x3FFB0000, len(segment)) + segment
    body = header + ext + seg
    pad = (15 - (len(body) % 16)) % 16
    checksum = 0xEF
    for b in segment:
        checksum ^= b
    return body + b"\0" * pad + bytes([checksum])


def app_desc(version: str, build: str) -> bytes:
    sha = hashlib.sha256(f"{version}/{build}".encode()).digest()
    return (
        struct.pack(
            "<IIII32s32s16s16s32s32s",
            0xABCD5432,
            0,
            0,
            0,
            version.encode(),
            b"micropython",
            b"12:00:00",
            b"Jan  1 2025",
            b"v5.2.2",
            sha,
        )
        + b"\0" * 80
    )


def partition_table(board: Board) -> bytes:
    rows = [
        (b"nvs", 1, 2, 0x9000, 0x6000),
        (b"phy_init", 1, 1, 0xF000, 0x1000),
        (b"factory", 0, 0, board.app_offset, board.app_size or 0x300000),
        (b"vfs", 1, 0x81, board.fs_offset, board.fs_size),
    ]
    table = b"".join(
        struct.pack("<2sBBII16sI", b"\xaa\x50", t, s, o, n, label, 0) for label, t, s, o, n in rows
    )
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table + b"\xff" * (0xC00 - len(table))


def firmware(
    board: Board, version: str = "v1.24.1", build: str = "1", app_size: int = 0x40000, chip: str | None = None
) -> bytes:
    """The whole .bin as published for the board (from its firmware offset)."""
    chip = chip or board.chip
    base = board.firmware_offset
    img = bytearray(b"\xff" * (board.app_offset - base))
    boot = esp_image(chip, b"\x00" * 0x4000)
    img[0 : len(boot)] = boot
    pt = partition_table(board)
    img[0x8000 - base : 0x8000 - base + len(pt)] = pt
    app = esp_image(chip, app_desc(version, build) + bytes(range(256)) * (app_size // 256))
    return bytes(img) + app
