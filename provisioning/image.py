"""The node's flash built on the host: compiled app, LittleFS filesystem image, merged flash image.

* `build_files(board, config, creds, ca=None, release_pubkey=None)`: the files of the node's
  filesystem, as `tree.node_files` lays them out, with the app slot compiled by mpy-cross for the
  board's architecture (`app/a/node/*.mpy`), the broker's CA as `ca.der` and the release key in
  config.json `ota.keys`. The loader (`boot.py`, `main.py`) stays source: MicroPython runs those
  two by file name.
* `fs_image(board, files)`: a LittleFS v2 image of exactly the board's "vfs" partition, with the
  geometry MicroPython's ESP32 port mounts it with (see `LFS_PARAMS`).
* `read_firmware(path_or_bytes)`: checks a MicroPython `.bin` (0xE9 image magic, chip id) and reads
  its partition table and app descriptor (version, build hash).
* `flash_plan(board, firmware, fs)` / `merged_image(...)`: the (offset, bytes) pairs written in one
  esptool session, and the same merged into one raw image by esptool's own `merge_bin`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from provisioning import esplog
from provisioning.boards import Board
from provisioning.mpy import CompileError, compile_sources
from provisioning.tree import node_files
from provisioning.world import with_world

# How MicroPython's ESP32 port mounts the "vfs" partition (flashbdev.py: esp32.Partition; vfs.mount
# -> VfsLfs2 with its defaults): esp32_partition.c BLOCK_SIZE_BYTES = 4096; extmod/vfs_lfs.c
# readsize/progsize/lookahead default 32; extmod/vfs_lfsx.c cache = min(block, 4 * max(read, prog))
# = 128, block_cycles = 100. Only what the superblock records must match (block size and count,
# name/file/attr limits); on-disk version 2.0 is written so any MicroPython since littlefs v2 reads
# it (littlefs >= 2.6 would otherwise write 2.1, which older releases refuse to mount).
BLOCK_SIZE = 4096
LFS_PARAMS = dict(
    block_size=BLOCK_SIZE,
    read_size=32,
    prog_size=32,
    lookahead_size=32,
    cache_size=128,
    block_cycles=100,
    disk_version=0x00020000,
)

CA_FILE = "ca.der"  # the broker's CA certificate (DER), read by the node's TLS setup
KEEP_SOURCE = ("boot.py", "main.py")  # run by file name, never imported from a slot

ESP_IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
PARTITION_TABLE_OFFSET = 0x8000


class ImageError(Exception):
    """The firmware or filesystem cannot be built or used; the message says what to do."""


# --- compiled app -----------------------------------------------------------------------------
def compile_app(files: dict[str, bytes], arch: str) -> dict[str, bytes]:
    """The same files with every app-slot `.py` replaced by its `.mpy`; the loader stays source."""
    to_compile = {k: v for k, v in files.items() if k.startswith("app/") and k.endswith(".py")}
    out = {k: v for k, v in files.items() if k not in to_compile}
    try:
        out.update(compile_sources(to_compile, arch))
    except CompileError as e:
        raise ImageError(str(e)) from None
    return out


def mpy_arch(data: bytes) -> int:
    """The native-arch field of an .mpy header: 0 when it holds bytecode only (runs on any port)."""
    if len(data) < 4 or data[0:1] != b"M":
        raise ImageError("not an .mpy file")
    return data[2] >> 2


def ca_der(ca: str | Path | bytes) -> bytes:
    """The CA certificate as DER (what MicroPython's ssl takes), from PEM or DER bytes or a file."""
    import base64

    data = ca if isinstance(ca, bytes) else Path(ca).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        body = re.search(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, re.S)
        if not body:
            raise ImageError("the CA file holds no certificate")
        return base64.b64decode(b"".join(body.group(1).split()))
    return data


def release_key(pub: str | Path | bytes) -> bytes:
    """A release (Ed25519) public key as 32 raw bytes: raw bytes, hex text, or a .pub/PEM file."""
    if isinstance(pub, bytes) and len(pub) == 32:
        return pub
    if isinstance(pub, str) and re.fullmatch(r"[0-9a-fA-F]{64}", pub.strip()):
        return bytes.fromhex(pub.strip())
    data = pub if isinstance(pub, bytes) else Path(pub).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        from provisioning.release import load_public_key  # PEM needs the release tooling's crypto

        return load_public_key(Path(pub))
    if len(data) == 32:
        return data
    try:
        raw = bytes.fromhex(data.decode().strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ImageError("the release public key must be an Ed25519 key: 32 bytes, or 64 hex digits")
    return raw


def build_files(
    board: Board,
    config: dict,
    creds: dict,
    ca: str | Path | bytes | None = None,
    release_pubkey: str | Path | bytes | None = None,
    compile: bool = True,
) -> dict[str, bytes]:
    """Every file of the node's filesystem: loader, slot a compiled for board.arch, config, creds, CA.

    `config` is config.json (identity, network, broker, sensors; `board` is set to the board's name
    when missing), `creds` is creds.json ({"user", "password"}). `ca` (PEM or DER, bytes or a path)
    is stored as `ca.der`, where the node's TLS setup reads it (config mqtt.ca, default "ca.der").
    `release_pubkey` (raw, hex or a key file) is added, as hex, to config.json `ota.keys`, the keys the
    node checks release signatures with. `compile=False` keeps the app as source (a virtual board run
    by CPython cannot import .mpy).
    """
    config = dict(config)
    config.setdefault("board", board.name)
    if release_pubkey is not None:
        ota = dict(config.get("ota") or {})
        keys = list(ota.get("keys") or [])
        key = release_key(release_pubkey).hex()
        if key not in keys:
            keys.append(key)
        config["ota"] = {**ota, "keys": keys}
    files = node_files(config, creds)
    if ca is not None:
        files[CA_FILE] = ca_der(ca)
    if compile:
        files = compile_app(files, board.arch)
    return files


def make_config(
    board: Board,
    device_id: str,
    site: str,
    room: str,
    mqtt: dict,
    network: dict | None = None,
    name: str | None = None,
    **extra,
) -> dict:
    """config.json for a device on `board`: identity, room, broker, the board's network and sensors.

    `mqtt` is {"host", "port", ...} (no credentials: those go to creds.json); `network` adds the
    site's Wi-Fi ({"ssid", "password"}) to the board's [network] table. A virtual board with simulated
    sensors gets `world`: they run in a process beside it (provisioning/world.py).
    """
    cfg = {
        "device_id": device_id,
        "site": site,
        "room": room,
        "board": board.name,
        "mqtt": dict(mqtt),
        "sensors": board.sensor_specs(),
    }
    net = {**board.network, **(network or {})}
    if net:
        cfg["network"] = net
    if name:
        cfg["name"] = name
    cfg.update(extra)
    return with_world(cfg) if board.virtual else cfg


# --- LittleFS --------------------------------------------------------------------------------
def fs_image(board_or_size: Board | int, files: dict[str, bytes]) -> bytes:
    """A LittleFS image of exactly the filesystem partition's size holding `files`."""
    import littlefs

    size = board_or_size if isinstance(board_or_size, int) else board_or_size.fs_size
    if not size or size % BLOCK_SIZE:
        raise ImageError(f"filesystem size {size!r} is not a multiple of {BLOCK_SIZE}")
    fs = littlefs.LittleFS(block_count=size // BLOCK_SIZE, mount=False, **LFS_PARAMS)
    fs.format()
    fs.mount()
    try:
        for rel in sorted(files):
            parts = rel.split("/")
            for i in range(1, len(parts)):
                try:
                    fs.mkdir("/".join(parts[:i]))
                except FileExistsError:
                    pass
            with fs.open(rel, "wb") as f:
                f.write(files[rel])
    except (littlefs.LittleFSError, OSError) as e:
        if "NOSPC" in str(e) or getattr(e, "code", None) == littlefs.LittleFSError.Error.LFS_ERR_NOSPC:
            total = sum(len(v) for v in files.values())
            raise ImageError(f"the files ({total} bytes) do not fit the {size} byte filesystem") from None
        raise
    fs.unmount()
    return bytes(fs.context.buffer)


def read_fs_image(image: bytes) -> dict[str, bytes]:
    """Every file of a LittleFS image (as MicroPython would see it), by path."""
    import littlefs

    if len(image) % BLOCK_SIZE:
        raise ImageError("a filesystem image is a whole number of 4096 byte blocks")
    fs = littlefs.LittleFS(block_count=len(image) // BLOCK_SIZE, mount=False, **LFS_PARAMS)
    fs.context.buffer[:] = image
    fs.mount()
    out = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            path = f"{root.rstrip('/')}/{n}".lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    fs.unmount()
    return out


# --- firmware .bin ---------------------------------------------------------------------------
@dataclass
class AppInfo:
    """esp_app_desc_t of an ESP-IDF application (MicroPython's firmware is one)."""

    project: str
    version: str
    idf_version: str
    date: str
    time: str
    elf_sha256: str

    @property
    def version_tuple(self) -> tuple[int, ...] | None:
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", self.version)
        return tuple(int(g or 0) for g in m.groups()) if m else None


@dataclass
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int


@dataclass
class FirmwareInfo:
    data: bytes
    chip: str | None  # "esp32", "esp32s3", ... from the image header's chip id
    chip_id: int
    partitions: list[Partition] = field(default_factory=list)
    app: AppInfo | None = None

    def partition(self, label: str) -> Partition | None:
        return next((p for p in self.partitions if p.label == label), None)


def parse_app_desc(data: bytes) -> AppInfo | None:
    """The app descriptor at the start of an app image (header 24 + segment header 8 bytes in)."""
    if len(data) < 0x20 + 256 or data[0] != ESP_IMAGE_MAGIC:
        return None
    magic, _secure, _r1, _r2, version, project, tm, date, idf, sha = struct.unpack_from(
        "<IIII32s32s16s16s32s32s", data, 0x20
    )
    if magic != APP_DESC_MAGIC:
        return None

    def s(b: bytes) -> str:
        return b.split(b"\0", 1)[0].decode("ascii", "replace")

    return AppInfo(s(project), s(version), s(idf), s(date), s(tm), sha.hex())


def parse_partition_table(data: bytes) -> list[Partition]:
    out = []
    for i in range(0, min(len(data), 0xC00), 32):
        entry = data[i : i + 32]
        if len(entry) < 32 or entry[:2] != b"\xaa\x50":
            break
        ptype, sub, off, size, label, _flags = struct.unpack("<BBII16sI", entry[2:])
        out.append(Partition(label.split(b"\0", 1)[0].decode("ascii", "replace"), ptype, sub, off, size))
    return out


def _chip_for_id(chip_id: int) -> str | None:
    from esptool.targets import CHIP_DEFS

    for name, cls in CHIP_DEFS.items():
        if getattr(cls, "IMAGE_CHIP_ID", None) == chip_id and "beta" not in name:
            return name
    return None


def read_firmware(source: str | Path | bytes, board: Board | None = None) -> FirmwareInfo:
    """Check and describe a MicroPython firmware .bin (as published: bootloader onwards)."""
    if isinstance(source, bytes):
        data, name = source, "the firmware image"
    else:
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise ImageError(
                f"firmware image {name} cannot be read ({e.strerror or e}): check the path"
            ) from None
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        raise ImageError(
            f"{name} is not an ESP firmware image (it does not start with the 0xE9 image magic): "
            "download the .bin for your board from micropython.org/download/ (not the .elf, .uf2 or .zip)"
        )
    chip_id = struct.unpack_from("<H", data, 12)[0]
    info = FirmwareInfo(data=data, chip=_chip_for_id(chip_id), chip_id=chip_id)
    if board is not None and not board.virtual:
        base = board.firmware_offset or 0
        info.partitions = parse_partition_table(data[PARTITION_TABLE_OFFSET - base :])
        info.app = parse_app_desc(data[board.app_offset - base : board.app_offset - base + 0x200])
    return info


def check_firmware(info: FirmwareInfo, board: Board) -> None:
    """The image is for the board's chip and puts the filesystem where the board file says."""
    if info.chip != board.chip:
        from provisioning.boards import CHIP_NAMES

        found = CHIP_NAMES.get(info.chip or "", f"chip id {info.chip_id}")
        raise ImageError(
            f"the firmware image is built for {found}, the board {board.name} is an "
            f"{board.chip_name}: use the {board.micropython_board or board.chip} image"
        )
    base = board.firmware_offset or 0
    if base + len(info.data) > board.fs_offset:
        raise ImageError(
            f"the firmware image ({len(info.data)} bytes written at {base:#x}) runs into the "
            f"filesystem at {board.fs_offset:#x}: it is not a {board.micropython_board} image"
        )
    vfs = info.partition("vfs")
    if info.partitions and vfs is None:
        raise ImageError(
            "the firmware's partition table has no 'vfs' partition: it is not a standard MicroPython image"
        )
    if vfs is not None and (vfs.offset, vfs.size) != (board.fs_offset, board.fs_size):
        raise ImageError(
            f"the firmware's partition table puts the filesystem at {vfs.offset:#x} ({vfs.size:#x} bytes), "
            f"the board file {board.name} at {board.fs_offset:#x} ({board.fs_size:#x} bytes): the image "
            "is from another MicroPython release or board; fix the board file or use the matching image"
        )


# --- the flash writes ------------------------------------------------------------------------
def flash_plan(board: Board, firmware: bytes | None, fs: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes) written in one session: the firmware (when given) and the filesystem."""
    if len(fs) != board.fs_size:
        raise ImageError(f"the filesystem image is {len(fs)} bytes, the partition {board.fs_size}")
    plan = []
    if firmware is not None:
        plan.append((board.firmware_offset or 0, firmware))
    plan.append((board.fs_offset, fs))
    return plan


def merged_image(board: Board, firmware: bytes, fs: bytes, output: str | Path | None = None) -> bytes:
    """One raw image from flash offset 0 (0xFF between the parts), built by esptool's merge_bin."""
    from esptool.cmds import merge_bin

    with esplog.capture():
        data = merge_bin(flash_plan(board, firmware, fs), board.chip, target_offset=0)
    if output is not None:
        Path(output).write_bytes(data)
    return data


# --- local firmware cache --------------------------------------------------------------------
def firmware_cache_dir() -> Path:
    """~/.cache/maille/firmware (or $MAILLE_FIRMWARE_CACHE): official .bin files as downloaded."""
    import os

    env = os.environ.get("MAILLE_FIRMWARE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maille" / "firmware"


def find_cached_firmware(board: Board, cache_dir: Path | None = None) -> Path | None:
    """The newest cached image for the board's MicroPython build, by the version in its file name
    (micropython.org names them `<BOARD>-<date>-v<version>.bin`, e.g. ESP32_GENERIC-20241129-v1.24.1.bin)."""
    if not board.micropython_board:
        return None
    directory = cache_dir or firmware_cache_dir()
    best: tuple[tuple[int, ...], str, Path] | None = None
    for p in directory.glob(f"{board.micropython_board}-*.bin"):
        rest = p.stem[len(board.micropython_board) + 1 :]
        if not re.fullmatch(r"(\d{8}-)?v\d+\.\d+(\.\d+)?(-preview.*)?", rest):
            continue  # another board whose name starts the same (ESP32_GENERIC_S3 vs ESP32_GENERIC)
        m = re.search(r"v(\d+)\.(\d+)(?:\.(\d+))?", rest)
        key = (tuple(int(g or 0) for g in m.groups()), rest, p)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None
