"""The node's filesystem and merged image for the generic ESP32 4 MB board, read back for real."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from provisioning.boards import BoardError, UnknownBoard, list_boards, load_board
from provisioning.image import (
    LFS_PARAMS,
    ImageError,
    build_files,
    check_firmware,
    fs_image,
    merged_image,
    mpy_arch,
    read_firmware,
    read_fs_image,
)
from provisioning.tree import node_files, write_tree
from provisioning.virtual import micropython_executable
from tests.provisioning import standin
from tests.provisioning.conftest import RELEASE_KEY


def test_every_board_file_loads():
    boards = {n: load_board(n) for n in list_boards()}
    assert {"esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1", "olimex-esp32-poe", "sim"} <= set(
        boards
    )
    b = boards["esp32-devkitc"]
    assert (b.chip, b.chip_name, b.arch, b.flash_size) == ("esp32", "ESP32", "xtensawin", 4 << 20)
    assert (b.fs_offset, b.fs_size, b.firmware_offset) == (0x310000, 0xF0000, 0x1000)
    assert (
        boards["esp32-s3-devkitc-1"].firmware_offset == 0
        and boards["esp32-c3-devkitm-1"].firmware_offset == 0
    )
    assert boards["sim"].virtual
    # sensors get the bus pins of the board
    specs = {s["name"]: s for s in b.sensor_specs()}
    assert specs["climate"]["i2c"] == {"id": 0, "sda": 21, "scl": 22} and specs["climate"]["address"] == 0x76
    assert specs["noise"]["i2s"]["sd"] == 33


def test_unknown_board_names_the_known_ones(tmp_path):
    with pytest.raises(UnknownBoard, match=r"unknown board 'esp32-wroom'.*esp32-devkitc"):
        load_board("esp32-wroom")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nchip = "esp32"\narch = "xtensawin"\n[flash]\nsize_bytes = 4194304\n')
    with pytest.raises(BoardError, match="vfs_offset is missing"):
        load_board(bad)


def test_merged_image_has_the_filesystem_at_the_board_offset(esp32, files, firmware, config, creds, tmp_path):
    fs = fs_image(esp32, files)
    assert len(fs) == esp32.fs_size == LFS_PARAMS["block_size"] * (0xF0000 // 4096)
    merged = merged_image(esp32, firmware, fs, tmp_path / "merged.bin")
    assert (tmp_path / "merged.bin").read_bytes() == merged
    # ESP32: the published image starts with the bootloader at 0x1000; nothing before it
    assert merged[:0x1000] == b"\xff" * 0x1000
    assert merged[0x1000 : 0x1000 + len(firmware)] == firmware and merged[0x1000] == 0xE9
    assert merged[0x8000:0x8002] == b"\xaa\x50"  # the partition table where the bootloader looks
    assert merged[0x10000] == 0xE9  # the app at the factory partition
    # the filesystem exactly fills the vfs partition, which ends the image
    assert len(merged) == 0x310000 + 0xF0000
    assert merged[0x310000:] == fs

    back = read_fs_image(merged[esp32.fs_offset : esp32.fs_offset + esp32.fs_size])
    assert back == files
    expected = {"boot.py", "main.py", "app/active", "config.json", "creds.json", "ca.der"}
    expected |= {k[:-3] + ".mpy" for k in node_files(config, creds) if k.startswith("app/a/")}
    assert set(back) == expected
    assert [k for k in back if k.endswith(".py")] == ["boot.py", "main.py"]  # the loader stays source
    assert json.loads(back["config.json"]) == {**config, "ota": {"keys": [RELEASE_KEY]}}
    assert json.loads(back["creds.json"]) == creds
    assert back["app/active"] == node_files(config, creds)["app/active"]
    assert back["ca.der"] == base64.b64decode("MIIBAQIDBAUG")  # PEM given, DER stored (MicroPython's ssl)


def test_mpy_files_import_under_micropython(esp32, files, tmp_path):
    """The app compiled for xtensawin imports under the unix port: it holds bytecode only."""
    back = read_fs_image(fs_image(esp32, files))
    mpys = {k: v for k, v in back.items() if k.endswith(".mpy")}
    # arch field 0 = no native code: the same bytecode loads on any port with a 31-bit small int or wider
    assert {k: mpy_arch(v) for k, v in mpys.items()} == {k: 0 for k in mpys}
    write_tree(tmp_path, back)
    modules = sorted(k[len("app/a/") : -4].replace("/", ".").removesuffix(".__init__") for k in mpys)
    modules.remove("node.port.esp32")  # imports machine and network: the ESP32 itself only
    script = (
        "import sys\nsys.path.insert(0, 'app/a')\n"
        + "".join(f"import {m}\n" for m in modules)
        + "import node.app\nprint('imported', len(sys.modules))\n"
    )
    r = subprocess.run(
        [micropython_executable(), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported" in r.stdout
    assert not list((tmp_path / "app").rglob("*.py"))  # nothing but .mpy could have been imported


def test_native_code_would_be_arch_specific(tmp_path):
    """Why the check above matters: @micropython.native code compiled for xtensawin does not load here."""
    from provisioning.mpy import compile_sources

    out = compile_sources(
        {"app/a/nat.py": b"import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n"},
        "xtensawin",
    )
    assert mpy_arch(out["app/a/nat.mpy"]) != 0
    (tmp_path / "nat.mpy").write_bytes(out["app/a/nat.mpy"])
    r = subprocess.run(
        [micropython_executable(), "-c", "import nat"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "incompatible .mpy arch" in r.stdout + r.stderr


def test_firmware_checks(esp32, tmp_path):
    fw = standin.firmware(esp32, version="v1.24.1")
    info = read_firmware(fw, esp32)
    assert info.chip == "esp32" and info.app.version == "v1.24.1" and info.app.project == "micropython"
    assert info.partition("vfs").offset == esp32.fs_offset
    check_firmware(info, esp32)

    junk = tmp_path / "ESP32_GENERIC.uf2"
    junk.write_bytes(b"UF2\n" + bytes(100))
    with pytest.raises(ImageError, match="not an ESP firmware image .*0xE9"):
        read_firmware(junk)
    with pytest.raises(ImageError, match="cannot be read"):
        read_firmware(tmp_path / "missing.bin")
    s3 = standin.firmware(esp32, chip="esp32s3")
    with pytest.raises(ImageError, match="built for ESP32-S3, the board esp32-devkitc is an ESP32"):
        check_firmware(read_firmware(s3, esp32), esp32)
    # an older MicroPython layout (vfs at 0x200000) against this board file
    from dataclasses import replace

    old = standin.firmware(replace(esp32, fs_offset=0x200000, fs_size=0x200000))
    with pytest.raises(ImageError, match="puts the filesystem at 0x200000"):
        check_firmware(read_firmware(old, esp32), esp32)


def test_files_that_do_not_fit_are_refused(esp32, files):
    with pytest.raises(ImageError, match="do not fit"):
        fs_image(8 * 4096, files)


def test_build_files_keeps_source_when_asked(files, esp32, config, creds):
    src = build_files(esp32, config, creds, compile=False)
    assert "app/a/node/app.py" in src and "app/a/node/app.mpy" not in src
    assert "app/a/node/app.mpy" in files


def test_firmware_cache_picks_the_newest_image_of_the_board(esp32, tmp_path, monkeypatch):
    from provisioning.image import find_cached_firmware, firmware_cache_dir

    monkeypatch.setenv("MAILLE_FIRMWARE_CACHE", str(tmp_path))
    assert firmware_cache_dir() == tmp_path
    assert find_cached_firmware(esp32) is None
    for name in (
        "ESP32_GENERIC-20240602-v1.23.0.bin",
        "ESP32_GENERIC-20241129-v1.24.1.bin",
        "ESP32_GENERIC_S3-20250415-v1.25.0.bin",
        "ESP32_GENERIC-notes.bin",
    ):
        (tmp_path / name).write_bytes(b"\xe9")
    assert find_cached_firmware(esp32).name == "ESP32_GENERIC-20241129-v1.24.1.bin"
    s3 = find_cached_firmware(load_board("esp32-s3-devkitc-1"))
    assert s3.name == "ESP32_GENERIC_S3-20250415-v1.25.0.bin"
