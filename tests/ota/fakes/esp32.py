"""The chip's `esp32` module at its lowest boundary, for firmware-image updates on the unix port.

Flash is files in the current folder (the virtual board's flash): `flash.json` holds the partition
table, the otadata (which app partition boots, each one's ESP-IDF OTA state) and which one runs;
`<label>.bin` holds each app partition's bytes. `reset()` plays the bootloader with rollback on
(CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE): a new image boots once as pending_verify, and a reset
before it was marked valid aborts it and boots the previous one.
"""

import json

TABLE = "flash.json"
BLOCK = 4096


def make_flash(apps, running):
    """A fresh table: `apps` [(label, size), ...]; ota_* labels form the OTA set."""
    t = {"apps": [list(a) for a in apps], "running": running, "boot": running, "prev": running, "states": {}}
    for label, size in apps:
        with open(label + ".bin", "wb") as f:
            f.write(b"\xff" * size)
        t["states"][label] = "valid"
    _save(t)


def _load():
    with open(TABLE) as f:
        return json.load(f)


def _save(t):
    with open(TABLE, "w") as f:
        json.dump(t, f)


def reset():
    """What the bootloader does at a reset: roll back an unconfirmed image, try a new one once."""
    t = _load()
    run = t["running"]
    if t["states"][run] == "pending_verify":
        t["states"][run] = "aborted"
        t["boot"] = t["prev"]
    boot = t["boot"]
    if t["states"][boot] == "new":
        t["states"][boot] = "pending_verify"
    t["running"] = boot
    _save(t)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id):
        t = _load()
        label = t["running"] if id == Partition.RUNNING else t["boot"] if id == Partition.BOOT else id
        sizes = dict((a[0], a[1]) for a in t["apps"])
        if label not in sizes:
            raise ValueError("partition not found")
        self.label = label
        self.size = sizes[label]

    def info(self):
        subtype = 16 + int(self.label[4:]) if self.label.startswith("ota_") else 0
        return (Partition.TYPE_APP, subtype, 0x10000, self.size, self.label, False)

    def get_next_update(self):
        # esp_ota_get_next_update_partition(): the next ota_* after the running one, never itself
        otas = [a[0] for a in _load()["apps"] if a[0].startswith("ota_")]
        nxt = [x for x in otas if x != self.label]
        if not nxt:
            raise OSError(2)  # ENOENT: no OTA partition to update
        if self.label in otas:
            i = otas.index(self.label)
            return Partition(otas[(i + 1) % len(otas)])
        return Partition(nxt[0])

    def _span(self, block, n):
        off = block * BLOCK
        if off < 0 or off + n > self.size:
            raise OSError(22)  # EINVAL: beyond the partition
        return off

    def readblocks(self, block, buf):
        off = self._span(block, len(buf))
        with open(self.label + ".bin", "rb") as f:
            f.seek(off)
            buf[:] = f.read(len(buf))

    def writeblocks(self, block, buf):
        if len(buf) % BLOCK:
            raise OSError(22)
        off = self._span(block, len(buf))
        with open(self.label + ".bin", "r+b") as f:
            f.seek(off)
            f.write(bytes(buf))

    def set_boot(self):
        # esp_ota_set_boot_partition() checks the image first (ESP_ERR_OTA_VALIDATE_FAILED)
        with open(self.label + ".bin", "rb") as f:
            if f.read(1) != b"\xe9":
                raise OSError(-5379)
        t = _load()
        t["prev"] = t["running"]
        t["boot"] = self.label
        t["states"][self.label] = "new"
        _save(t)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        t = _load()
        t["states"][t["running"]] = "valid"
        _save(t)
