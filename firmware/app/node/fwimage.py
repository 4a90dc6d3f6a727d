# Firmware-image updates: the MicroPython binary itself, carried by a release whose signed manifest
# has a `firmware` entry {"path": "firmware.bin", "sha256", "size", "chip"} next to its app files.
# node/install.py calls this module (imported only for such a release) to stream the image into the
# next OTA partition in 4096-byte blocks through one reused buffer, resuming with HTTP Range after a
# cut, then to read it back and check its SHA-256 before the switch. The switch sets the boot
# partition right after the app slot pointer (which names the image's partition): the new app's
# trial (node/ota.py) rolls the slot back if the bootloader did not start that image (a power cut
# between the two writes, or the bootloader's own rollback), and marks the image valid once
# healthy; otherwise the bootloader goes back to the old image at the next reset by itself.
import binascii
import hashlib

import asyncio

from node import httpget
from node.ota import Refused
from node.port import port

BLOCK = 4096  # esp32.Partition's block: erased and written whole
MAGIC = 0xE9  # first byte of every ESP-IDF application image
CHUNK = 1024
TRIES = 6


def _check_entry(fw):
    path = fw.get("path") if isinstance(fw, dict) else None
    if not isinstance(path, str) or not path or path[0] == "/" or ".." in path.split("/"):
        raise Refused("bad firmware path %r in the manifest" % path)
    sha = fw.get("sha256")
    size = fw.get("size")
    if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int) or size <= 0:
        raise Refused("bad firmware entry in the manifest")


def target(fw):
    """The partition the image `fw` (the manifest's entry) goes to; Refused if this node cannot take it."""
    _check_entry(fw)
    try:
        part = port.fw_next_partition()
    except OSError as e:
        raise Refused(str(e))
    label, room = port.fw_info(part)
    if fw["size"] > room:
        raise Refused("firmware image of %d bytes does not fit partition %s (%d bytes)"
                      % (fw["size"], label, room))
    return part


def _write(part, block, buf, n):
    if block == 0 and buf[0] != MAGIC:
        raise Refused("not an ESP firmware image: it starts with 0x%02x, not 0xe9" % buf[0])
    port.fw_write_block(part, block, buf if n == BLOCK else memoryview(buf)[:n])


async def download(job, url, part, size):
    """Stream `url` into `part` block by block; after a cut, resume from the bytes already held."""
    buf = bytearray(BLOCK)
    start = job.done
    have = 0  # image bytes received: the blocks written, then `have % BLOCK` bytes in buf
    tries = 0
    while True:
        r = None
        try:
            r = await httpget.get(url, have)
            if r.status == 404:
                raise Refused("not found: %s" % url)
            total = r.total()
            if r.status in (200, 206) and total is not None and total != size:
                raise Refused("size mismatch: the firmware image is %d bytes, the release signed %d"
                              % (total, size))
            if r.status == 200:
                have = 0  # the server sent the whole image
            elif r.status != 206:
                raise httpget.HTTPError(r.status, url)
            while have < size:
                i = have % BLOCK
                chunk = await r.read(min(CHUNK, BLOCK - i, size - have))
                if not chunk:
                    raise OSError("connection closed at byte %d of %d" % (have, size))
                n = len(chunk)
                buf[i:i + n] = chunk
                have += n
                if i + n == BLOCK or have == size:
                    _write(part, (have - 1) // BLOCK, buf, i + n)
                job.done = start + have
                job.report_progress()
            return
        except (OSError, asyncio.TimeoutError) as e:
            tries += 1
            if tries >= TRIES:
                raise OSError("download of %s failed: %r" % (url, e))
            job.u.node.log("warning", "ota: firmware download interrupted (%r), resuming at byte %d"
                           % (e, have))
            await port.sleep_ms(500 * tries)
        finally:
            if r is not None:
                await r.close()


async def verify(part, fw):
    """Hash the image as it landed on flash (read back), against the signed manifest."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    left = fw["size"]
    block = 0
    while left > 0:
        port.fw_read_block(part, block, buf)
        h.update(buf if left >= BLOCK else memoryview(buf)[:left])
        left -= BLOCK
        block += 1
        await port.sleep_ms(0)
    if binascii.hexlify(h.digest()).decode() != fw["sha256"]:
        raise Refused("hash mismatch: the firmware image in partition %s is not the one the release signed"
                      % port.fw_info(part)[0])


def switch(part):
    """Make the bootloader try `part` at the next reset (once: it goes back unless marked valid)."""
    try:
        port.fw_set_boot(part)
    except OSError as e:
        raise Refused("the bootloader refuses the firmware image: %s" % e)
