"""Firmware-image updates (MicroPython itself) through esp32.Partition, under the real `micropython`.

Everything above the chip is real: the ESP32 port's fw_* functions, node/fwimage.py, the install
job with its Ed25519 check, node/ota.py's trial, signed bundles served over HTTP. The chip's
`esp32` module is replaced at its lowest boundary by tests/ota/fakes/esp32.py (flash as files, the
bootloader's otadata and rollback), and machine/network by the stand-ins of the port's own test.
The node around the updater is a small harness (its config, status queue and reset flag): the
whole node cannot run on the ESP32 port here. The ESP32 port imports `time.ticks_ms` and the chip's
modules, so these run on MicroPython only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from provisioning import release
from provisioning.bundle_server import BundleServer
from tests.firmware.conftest import run_firmware
from tests.firmware.test_port_esp32 import CHIP
from tests.ota.conftest import STATUS_SCHEMA

FAKES = Path(__file__).parent / "fakes"
PART = 8 * 4096  # each OTA app partition of the test table
OTA_TABLE = [("ota_0", PART), ("ota_1", PART)]
VERSION = "99.0.0"

PRELUDE = (
    CHIP
    + f"""
sys.path.insert(0, {str(FAKES)!r})
import node.port
from node.port import esp32 as _chip
node.port.port = _chip  # what node/port/__init__.py picks on the chip
port = _chip
import esp32
"""
)

HARNESS = """
import json, asyncio
from node import ota

class Node:
    def __init__(self, keys):
        self.cfg = {"ota": {"keys": keys, "confirm_s": 0, "trial_s": 30}}
        self.control = []
        self.wake = asyncio.Event()
        self.pending_reset = False
        self.healthy = True
    def log(self, level, msg):
        print("log", level, msg)

async def drive(keys, boot, offer=None):
    n = Node(keys)
    u = ota.Updater(n)
    if offer:
        u.on_offer(json.dumps(offer))
    t = asyncio.create_task(u.run(boot))
    while not (n.pending_reset or t.done()):
        await asyncio.sleep(0.01)
    for _, m in n.control:
        print("status " + m)
    print("reset" if n.pending_reset else "done")
"""


def image(size: int, seed: int = 1) -> bytes:
    """An ESP32 application image as far as the checks go: magic byte, chip id 0 at offset 12."""
    body = hashlib.shake_256(b"fw%d" % seed).digest(size)
    return b"\xe9\x05\x02\x20" + body[4:12] + b"\x00\x00" + body[14:]


class Board:
    """A folder as the node's flash: app slot a, the loader's version, and the fake chip's partitions."""

    def __init__(self, root: Path, table=OTA_TABLE):
        self.root = root
        (root / "data").mkdir(parents=True)
        (root / "app" / "a").mkdir(parents=True)
        (root / "data" / "loader").write_text("2")
        self.run(f"esp32.make_flash({table!r}, {table[0][0]!r})")

    def run(self, code: str):
        r = run_firmware("micropython", PRELUDE + code, cwd=self.root)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def drive(self, keys, boot: bool, offer=None) -> tuple[list[dict], str]:
        out = self.run(HARNESS + f"asyncio.run(drive({keys!r}, {boot!r}, {offer!r}))")
        statuses = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("status ")]
        for s in statuses:
            STATUS_SCHEMA.validate(s)
        return statuses, out

    def flash(self) -> dict:
        return json.loads((self.root / "flash.json").read_text())

    def partition(self, label: str) -> bytes:
        return (self.root / f"{label}.bin").read_bytes()

    def pointer(self) -> dict:
        return json.loads((self.root / "app" / "active").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = BundleServer(tmp_path_factory.mktemp("srv")).start()
    yield s
    s.stop()


@pytest.fixture
def publish(tmp_path, server, release_key):
    """Build and sign a release carrying `fw`, one per test; returns (offer, bundle dir)."""
    keyfile, _ = release_key
    name = tmp_path.name

    def make(fw: bytes) -> tuple[dict, Path]:
        out = server.root / "releases" / name
        files = {"node/extra.py": b"GREETING = 'hello'\n"}
        release.build(release.FIRMWARE_APP, VERSION, "py", out, files=files, firmware=fw, chip="esp32")
        release.sign(out, keyfile)
        return {"version": VERSION, "url": f"{server.url}/releases/{name}/manifest.json"}, out

    return make


def resign(bundle: Path, keyfile: Path, fw: bytes) -> None:
    """Swap the bundle's image for `fw` and sign it again (a release signed with a bad image)."""
    (bundle / "firmware.bin").write_bytes(fw)
    m = json.loads((bundle / "manifest.json").read_text())
    m["firmware"].update(sha256=hashlib.sha256(fw).hexdigest(), size=len(fw))
    (bundle / "manifest.json").write_text(json.dumps(m))
    release.sign(bundle, keyfile)


def test_the_port_writes_blocks_sets_boot_and_the_bootloader_rolls_back_an_unconfirmed_image(tmp_path):
    board = Board(tmp_path / "node")
    fw = image(2 * 4096 + 100)
    out = board.run(
        f"""
fw = {fw!r}
p = port.fw_next_partition()
print(port.fw_info(p), port.fw_running())
for n in range(0, len(fw), 4096):
    port.fw_write_block(p, n // 4096, fw[n:n + 4096])
buf = bytearray(4096)
port.fw_read_block(p, 2, buf)
print(bytes(buf[:100]) == fw[8192:], buf[100:] == b"\\xff" * 3996)
port.fw_set_boot(p)
esp32.reset()
print(port.fw_running())
esp32.reset()  # never marked valid: the bootloader goes back
print(port.fw_running())
port.fw_set_boot(p)
esp32.reset()
port.fw_mark_valid()
esp32.reset()
print(port.fw_running())
"""
    )
    assert out.splitlines() == ["('ota_1', 32768) ota_0", "True True", "ota_1", "ota_0", "ota_1"]
    assert board.flash()["states"] == {"ota_0": "valid", "ota_1": "valid"}


def test_a_single_app_partition_table_is_refused_by_the_port(tmp_path):
    board = Board(tmp_path / "node", table=[("factory", PART)])
    out = board.run(
        """
try:
    port.fw_next_partition()
except OSError as e:
    print(e)
"""
    )
    assert out.strip() == "no OTA update partition: flash an OTA-capable partition table first"


def test_a_signed_image_lands_in_the_next_partition_and_is_confirmed_in_trial(
    tmp_path, publish, release_key, server
):
    board = Board(tmp_path / "node")
    fw = image(3 * 4096 + 1234)
    offer, bundle = publish(fw)
    path = f"/releases/{bundle.name}/firmware.bin"
    server.cut(path, 5000)  # a download cut mid-way resumes
    statuses, out = board.drive([release_key[1]], False, offer)
    assert "firmware download interrupted" in out and out.rstrip().endswith("reset")
    states = [s["state"] for s in statuses]
    assert states[0] == "offered" and states[-4:] == ["downloading", "verifying", "installed", "rebooting"]
    assert [s["progress"] for s in statuses if s["state"] == "downloading"][-1] == 100
    assert "and the firmware image" in statuses[-3]["reason"]
    assert board.partition("ota_1") == fw + b"\xff" * (PART - len(fw))
    assert board.partition("ota_0") == b"\xff" * PART  # the running image is untouched
    assert [(r, st) for p, r, st in server.requests if p == path] == [(None, 200), ("bytes=5000-", 206)]
    assert server.bytes_sent(path) == len(fw)  # nothing fetched twice
    flash = board.flash()
    assert (flash["running"], flash["boot"], flash["states"]["ota_1"]) == ("ota_0", "ota_1", "new")
    assert board.pointer()["fw"] == "ota_1" and board.pointer()["slot"] == "b"

    board.run("esp32.reset()")  # the reboot: the bootloader tries ota_1 once
    statuses, _ = board.drive([release_key[1]], True)
    assert [s["state"] for s in statuses] == ["trial", "confirmed"]
    assert board.flash()["states"]["ota_1"] == "valid"
    assert board.pointer() == {"slot": "b", "trial": False, "prev": "a", "version": VERSION, "from": "0.1.0"}


def test_a_trial_whose_image_the_bootloader_dropped_rolls_the_slot_back(tmp_path, publish, release_key):
    board = Board(tmp_path / "node")
    offer, _ = publish(image(4096 + 7))
    board.drive([release_key[1]], False, offer)
    board.run("esp32.reset()\nesp32.reset()")  # reset again before the trial confirmed
    statuses, out = board.drive([release_key[1]], True)
    assert [s["state"] for s in statuses] == ["trial"] and out.rstrip().endswith("reset")
    p = board.pointer()
    assert (
        p["slot"] == "a" and p["rolled_back"]["reason"] == "the bootloader did not start firmware image ota_1"
    )
    assert board.flash()["running"] == "ota_0"


def _bad_signature(bundle: Path, keyfile: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())  # an edited manifest, the old signature
    m["firmware"]["sha256"] = hashlib.sha256(b"other").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))


REFUSALS = {
    "bad_sha256": (
        lambda b, k: (b / "firmware.bin").write_bytes(image(3 * 4096 + 1234, seed=2)),
        "hash mismatch: the firmware image in partition ota_1 is not the one the release signed",
    ),
    "wrong_magic": (
        lambda b, k: resign(b, k, b"\x00" + image(5000)[1:]),
        "not an ESP firmware image: it starts with 0x00, not 0xe9",
    ),
    "too_large": (
        lambda b, k: resign(b, k, image(PART + 1)),
        "firmware image of 32769 bytes does not fit partition ota_1 (32768 bytes)",
    ),
    "bad_signature": (_bad_signature, "bad signature (key "),
    "size_mismatch": (
        lambda b, k: (b / "firmware.bin").write_bytes(image(3 * 4096)),
        "size mismatch: the firmware image is 12288 bytes, the release signed 13522",
    ),
}


@pytest.mark.parametrize("fault", [*REFUSALS, "single_app_table"])
def test_a_bad_image_or_table_is_refused_with_its_reason_and_the_running_image_stays(
    tmp_path, publish, release_key, fault
):
    table = [("factory", PART)] if fault == "single_app_table" else OTA_TABLE
    board = Board(tmp_path / "node", table=table)
    offer, bundle = publish(image(3 * 4096 + 1234))
    if fault in REFUSALS:
        spoil, reason = REFUSALS[fault]
        spoil(bundle, release_key[0])
    else:
        reason = "no OTA update partition: flash an OTA-capable partition table first"
    statuses, out = board.drive([release_key[1]], False, offer)
    assert out.rstrip().endswith("done")
    last = statuses[-1]
    assert last["state"] == "failed" and last["reason"].startswith(reason), last
    flash = board.flash()
    assert flash["boot"] == flash["running"] == table[0][0]
    assert not (board.root / "app" / "active").exists()
    if fault != "bad_sha256":
        assert all(board.partition(label) == b"\xff" * size for label, size in table)  # nothing written


def test_release_cli_adds_a_firmware_image_that_verify_checks(tmp_path, release_key):
    from tests.test_cli_release import maille

    app = tmp_path / "app"  # a one-module app: the compile is not what this is about
    (app / "node").mkdir(parents=True)
    (app / "node" / "__init__.py").write_text('VERSION = "0.0.0"\n')
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(image(5000))
    bundle = tmp_path / "bundle"
    out = maille(
        "release", "build", app, "--version", "9.2.0", "--out", bundle, "--firmware", fw, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    entry = json.loads((bundle / "manifest.json").read_text())["firmware"]
    assert entry == {
        "path": "firmware.bin",
        "sha256": hashlib.sha256(fw.read_bytes()).hexdigest(),
        "size": 5000,
        "chip": "esp32",
    }
    keyfile, pub = release_key
    release.sign(bundle, keyfile)
    assert release.verify(bundle, pub)["firmware"] == entry
    (bundle / "firmware.bin").write_bytes(image(5000, seed=3))
    with pytest.raises(release.ReleaseError, match="firmware.bin: hash mismatch"):
        release.verify(bundle, pub)


def test_a_release_refuses_a_merged_image_or_one_for_another_chip(tmp_path):
    merged = bytearray(image(0x9000))  # esptool merge_bin output from 0x1000: the table at 0x7000
    merged[0x7000:0x7002] = b"\xaa\x50"
    for fw, chip, reason in [
        (bytes(merged), "esp32", "a merged image"),
        (image(5000), "esp32s3", "the image is built for esp32, not esp32s3"),
        (b"\x00" + image(5000)[1:], "esp32", "not an ESP application image"),
        (image(5000), "host", "firmware images are for ESP32 chips"),
    ]:
        with pytest.raises(release.ReleaseError, match=reason):
            release.build(
                release.FIRMWARE_APP,
                "9.2.0",
                "py",
                tmp_path / "b",
                files={"x.py": b""},
                firmware=fw,
                chip=chip,
            )
