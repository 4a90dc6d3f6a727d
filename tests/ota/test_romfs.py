"""A slot packed into a ROMFS image by the node (node/romfs.py), byte for byte what mpremote's own
writer makes, under micropython and CPython; the ESP32 port writing it into a romfs segment through
`vfs.rom_ioctl` as `mpremote romfs deploy` does (against a stand-in of the chip's vfs)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os

import pytest
from mpremote.romfs import make_romfs

from tests.firmware.conftest import RUNTIMES, run_firmware
from tests.firmware.test_port_esp32 import CHIP


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param


def slot_tree(root):
    """A slot as an install leaves it: nested packages, .mpy files, an empty file, the manifest."""
    files = {
        "node/__init__.mpy": b"",
        "node/app.mpy": os.urandom(3000),
        "node/sensors/noise.mpy": os.urandom(700),
        "node/sensors/__init__.mpy": os.urandom(130),  # a length needing a 2-byte size
        "manifest.json": b'{"version": "1.2.3"}',
        "manifest.sig": os.urandom(64),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def mpremote_image(root) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()):
        return make_romfs(str(root), mpy_cross=False)


def test_the_node_packs_a_slot_as_mpremote_does(runtime, tmp_path):
    root = slot_tree(tmp_path / "b")
    code = """
import binascii, hashlib
from node import romfs
out = bytearray()
n = romfs.write("b", out.extend)
print(n, len(out), romfs.size("b"), binascii.hexlify(hashlib.sha256(out).digest()).decode())
"""
    r = run_firmware(runtime, code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ref = mpremote_image(root)
    n, written, size, digest = r.stdout.split()
    assert int(n) == int(written) == int(size) == len(ref)
    assert digest == hashlib.sha256(ref).hexdigest()


ROM = """
class _Vfs:
    # Two segments of 16 KB, minimum write 16 bytes; prepare erases to 0xff, as flash does.
    def __init__(self):
        self.seg = [bytearray(16384), bytearray(16384)]
        self.calls = []
    def rom_ioctl(self, op, *a):
        if op == 1:
            return 2
        if op == 2:
            return memoryview(self.seg[a[0]])
        self.calls.append((op, a[0], a[1] if len(a) > 1 else None, len(a[2]) if len(a) > 2 else None))
        if op == 3:
            for i in range(a[1]):
                self.seg[a[0]][i] = 0xFF
            return 16
        if op == 4:
            assert a[1] % 16 == 0 and len(a[2]) % 16 == 0
            self.seg[a[0]][a[1]:a[1] + len(a[2])] = a[2]
            return 0
        if op == 5:
            return 0
sys.modules["vfs"] = _Vfs()
"""

WRITE = """
import vfs
from node import romfs
from node.port import esp32 as p
want = bytearray()
romfs.write("b", want.extend)
print(p.rom_slots())
out = p.rom_writer("b", romfs.size("b"))
romfs.write("b", out.write)
out.close()
seg = vfs.seg[1]
print(seg[:len(want)] == want, seg[len(want):(len(want) + 4095) // 4096 * 4096] == bytearray(
    (len(want) + 4095) // 4096 * 4096 - len(want)), vfs.seg[0] == bytearray(16384))
print(vfs.calls)
try:
    p.rom_writer("a", 20000)
except OSError as e:
    print(e)
"""


def test_the_esp32_port_writes_the_image_into_the_slots_segment_through_rom_ioctl(tmp_path):
    slot_tree(tmp_path / "b")
    size = len(mpremote_image(tmp_path / "b"))
    r = run_firmware("micropython", CHIP + ROM + WRITE, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "True True True"  # the image, then zeros to the chunk's end; slot a untouched
    chunks = (size + 4095) // 4096
    expected = [(3, 1, size, None)] + [(4, 1, 4096 * i, 4096) for i in range(chunks)] + [(5, 1, None, None)]
    assert lines[2] == repr(expected)
    assert lines[3] == "the image (20000 bytes) is larger than ROM segment 0"
