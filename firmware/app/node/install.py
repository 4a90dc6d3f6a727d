# Installing a release into the inactive slot (steps 1-3 of node/ota.py): check the signed
# manifest, fill the slot (copy what the running slot has, download and inflate the rest), verify,
# switch. Imported by the updater only when a new release is offered, and let go afterwards: with
# the Ed25519 and SHA-512 code it is the largest part of the app, and a node that is not updating
# needs none of it.
import binascii
import hashlib
import json
import os
import sys

import asyncio

from node import VERSION, ed25519, httpget
from node.ota import POINTER, Refused, parse_version, remove, write_atomic
from node.port import port
from node.store import read_text

CHUNK = 1024
MANIFEST_MAX = 32768
FORMAT = 1
DOWNLOAD_TRIES = 6


def _hex(b):
    return binascii.hexlify(b).decode()


def key_id(pub):
    return _hex(hashlib.sha256(pub).digest())[:16]


# --- files -----------------------------------------------------------------------------------
def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _is_dir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _makedirs(path):
    cur = ""
    for part in path.split("/"):
        cur = part if not cur else cur + "/" + part
        if not _is_dir(cur):
            try:
                os.mkdir(cur)
            except OSError:
                pass


def _walk(root, rel=""):
    """Slot-relative paths of every file under root."""
    out = []
    base = root + ("/" + rel if rel else "")
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        r = rel + "/" + name if rel else name
        if _is_dir(root + "/" + r):
            out.extend(_walk(root, r))
        else:
            out.append(r)
    return out


def _prune_dirs(root, rel=""):
    """Remove empty folders under root; True if root/rel itself ended up empty and was removed."""
    base = root + ("/" + rel if rel else "")
    try:
        names = os.listdir(base)
    except OSError:
        return False
    empty = True
    for name in names:
        r = rel + "/" + name if rel else name
        if _is_dir(root + "/" + r):
            if not _prune_dirs(root, r):
                empty = False
        else:
            empty = False
    if empty and rel:
        try:
            os.rmdir(base)
        except OSError:
            return False
    return empty


def sha256_file(path):
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf if n == CHUNK else buf[:n])
    return _hex(h.digest())


def loader_version():
    try:
        return int(read_text("data/loader") or "1")
    except ValueError:
        return 1


def _inflate(src, dst):
    """Inflate zlib file src into dst in bounded memory; returns the SHA-256 hex of the output."""
    h = hashlib.sha256()
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            try:
                import deflate

                d = deflate.DeflateIO(fi, deflate.ZLIB)
                while True:
                    b = d.read(CHUNK)
                    if not b:
                        break
                    fo.write(b)
                    h.update(b)
            except ImportError:  # CPython
                import zlib

                z = zlib.decompressobj()
                while True:
                    c = fi.read(CHUNK)
                    b = z.decompress(c) if c else z.flush()
                    fo.write(b)
                    h.update(b)
                    if not c:
                        break
    return _hex(h.digest())


def _copy(src, dst):
    buf = bytearray(CHUNK)
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf if n == CHUNK else buf[:n])


# --- release checks --------------------------------------------------------------------------
def check_signature(manifest_bytes, sig_bytes, keys):
    """Raise Refused unless manifest_bytes carry a valid signature by one of `keys` (raw 32 bytes)."""
    try:
        sig = json.loads(sig_bytes)
        kid = sig["key"]
        raw = binascii.unhexlify(sig["sig"])
    except (ValueError, KeyError, TypeError):
        raise Refused("bad signature: manifest.sig is not a signature")
    if sig.get("alg", "ed25519") != "ed25519":
        raise Refused("bad signature: algorithm %s" % sig.get("alg"))
    for pub in keys:
        if key_id(pub) == kid:
            if ed25519.verify(pub, raw, manifest_bytes):
                return kid
            raise Refused("bad signature (key %s)" % kid)
    raise Refused("unknown key %s: not a release key of this node" % kid)


def check_manifest(m, offer, running):
    """Raise Refused if this node must not install manifest `m`."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise Refused("unsupported manifest format %r" % (m.get("format") if isinstance(m, dict) else None))
    try:
        new = parse_version(m.get("version"))
    except ValueError as e:
        raise Refused("manifest: %s" % e)
    if m["version"] != offer["version"]:
        raise Refused("the manifest is version %s, the offer %s" % (m["version"], offer["version"]))
    arch = m.get("arch")
    if arch != "py" and arch != port.ARCH:
        raise Refused("built for %s, this node runs %s" % (arch, port.ARCH))
    if arch != "py":
        mpy = getattr(sys.implementation, "_mpy", 0) & 0x3FF
        if m.get("mpy") != mpy:
            raise Refused("compiled for .mpy format %r, this node loads %d" % (m.get("mpy"), mpy))
    if m.get("min_loader", 1) > loader_version():
        raise Refused("needs loader %s, this node has loader %d" % (m.get("min_loader"), loader_version()))
    if m.get("compression") != "zlib":
        raise Refused("unsupported compression %r" % m.get("compression"))
    files = m.get("files")
    if not isinstance(files, list) or not files:
        raise Refused("the manifest lists no files")
    for f in files:
        p = f.get("path") if isinstance(f, dict) else None
        if not isinstance(p, str) or not p or p[0] == "/" or ".." in p.split("/") or p.endswith(".tmp") \
                or p.endswith(".part") or p in ("manifest.json", "manifest.sig", ".job"):
            raise Refused("bad file path %r in the manifest" % p)
        if not isinstance(f.get("sha256"), str) or not isinstance(f.get("zsize"), int):
            raise Refused("bad file entry for %s" % p)
    cur = parse_version(running)
    if new < cur and m.get("rollback") is not True:
        raise Refused("downgrade refused: %s is older than the installed %s and not signed as a rollback release"
                      % (m["version"], running))
    if new == cur:
        raise Refused("version %s is already installed" % running)


# --- the job -----------------------------------------------------------------------------------
class Job:
    """One offer being installed; reports through the updater (status, record, the node)."""

    def __init__(self, updater, offer):
        self.u = updater
        self.offer = offer
        self.version = offer["version"]
        self.done = 0
        self.total = 1
        self.progress = -1
        self.chunks = 0

    async def run(self):
        u = self.u
        offer = self.offer
        version = self.version
        u.status("offered", version, reason="from %s" % offer["url"])
        port.checkpoint("offered")
        if u.trial:
            raise Refused("busy: slot %s is still on trial" % u.slot)
        if not u.keys:
            raise Refused("no release keys provisioned on this node")
        base = offer["url"].rsplit("/", 1)[0] + "/"
        manifest_bytes = await self.fetch(offer["url"])
        sig_bytes = await self.fetch(base + "manifest.sig")
        check_signature(manifest_bytes, sig_bytes, u.keys)
        try:
            m = json.loads(manifest_bytes)
        except ValueError:
            raise Refused("the manifest is not JSON")
        check_manifest(m, offer, VERSION)
        fw = m.get("firmware")
        part = None
        if fw is not None:  # a firmware image too: only on a node with an OTA partition table
            from node import fwimage

            part = fwimage.target(fw)
        port.checkpoint("checked")
        target = "b" if u.slot == "a" else "a"
        root = "app/" + target
        running = "app/" + u.slot
        files = m["files"]
        job = _hex(hashlib.sha256(manifest_bytes).digest())
        self.prepare(root, files, job)
        port.checkpoint("prepared")

        total = 0
        for f in files:
            total += f["zsize"]
        if part is not None:
            total += fw["size"]
        self.total = total or 1
        self.report_progress()
        for f in files:
            await self.place(root, running, base, f)
            port.checkpoint("placed:" + f["path"])
        if part is not None:
            await fwimage.download(self, base + fw["path"], part, fw["size"])
        what = " and the firmware image" if part is not None else ""
        u.status("verifying", version, reason="%d files%s" % (len(files), what))
        port.checkpoint("verifying")
        for f in files:
            if sha256_file(root + "/" + f["path"]) != f["sha256"]:
                remove(root + "/" + f["path"])
                raise Exception("verify: %s changed on flash" % f["path"])  # retried: fetched again
            await port.sleep_ms(0)
        if part is not None:
            await fwimage.verify(part, fw)
        with open(root + "/manifest.sig", "wb") as fo:
            fo.write(sig_bytes)
        write_atomic(root + "/manifest.json", manifest_bytes.decode(), "verified")
        if port.rom_slots():  # the loader runs slots from their ROM images: write the target's
            from node import romfs

            out = port.rom_writer(target, romfs.size(root))
            n = romfs.write(root, out.write)
            out.close()
            port.log("ota: slot %s written to its ROM image (%d bytes)" % (target, n))
            port.checkpoint("rom-written")
        u.status("installed", version, reason="slot %s" % target)
        port.checkpoint("installed")
        u.record(offer, "rebooting")
        u.status("rebooting", version, reason="trial boot of slot %s" % target)
        remove("data/last_crash")
        pointer = {"slot": target, "trial": True, "prev": u.slot, "tries": 0, "version": version,
                   "from": VERSION}
        if part is not None:  # the trial checks that the bootloader started this image, else rolls back
            pointer["fw"] = port.fw_info(part)[0]
        write_atomic(POINTER, json.dumps(pointer), "switch-tmp")
        if part is not None:
            try:
                fwimage.switch(part)
            except Refused:
                write_atomic(POINTER, json.dumps(u.pointer))
                raise
        port.checkpoint("switched")
        u.node.log("warning", "ota: switched to slot %s (%s on trial), rebooting" % (target, version))
        u.node.pending_reset = True
        u.node.wake.set()
        while True:  # the link task resets once the status is out
            await port.sleep_ms(1000)

    async def fetch(self, url):
        tries = 0
        while True:
            try:
                return await httpget.fetch(url, MANIFEST_MAX)
            except httpget.HTTPError as e:
                if e.status == 404:
                    raise Refused("not found: %s" % url)
                err = e
            except (OSError, asyncio.TimeoutError) as e:
                err = e
            tries += 1
            if tries >= DOWNLOAD_TRIES:
                raise OSError("cannot fetch %s: %r" % (url, err))
            await port.sleep_ms(500 * tries)

    def prepare(self, root, files, job):
        """Make the inactive slot hold only files of this release (and partial downloads of this job)."""
        _makedirs(root)
        wanted = {}
        for f in files:
            wanted[f["path"]] = f
        same_job = read_text(root + "/.job") == job
        for rel in _walk(root):
            if rel in wanted or rel == ".job":
                continue
            if same_job and rel.endswith(".z.part") and rel[:-7] in wanted:
                continue
            remove(root + "/" + rel)
        _prune_dirs(root)
        if not same_job:
            write_atomic(root + "/.job", job)

    def report_progress(self):
        pct = self.done * 100 // self.total
        step = pct // 20 * 20
        if step > self.progress:
            self.progress = step
            self.u.status("downloading", self.version, progress=pct)

    async def place(self, root, running, base, f):
        rel = f["path"]
        dst = root + "/" + rel
        want = f["sha256"]
        if _exists(dst) and sha256_file(dst) == want:
            self.done += f["zsize"]
            return
        _makedirs(dst.rsplit("/", 1)[0])
        src = running + "/" + rel
        if _exists(src) and sha256_file(src) == want:
            _copy(src, dst + ".tmp")
            port.checkpoint("copied:" + rel)
            os.rename(dst + ".tmp", dst)
            self.done += f["zsize"]
            self.report_progress()
            return
        part = dst + ".z.part"
        for attempt in (0, 1):
            await self.download(base + "files/" + rel + ".z", part, f["zsize"])
            port.checkpoint("fetched:" + rel)
            try:
                got = _inflate(part, dst + ".tmp")
            except Exception:  # not a zlib stream at all
                got = None
            if got == want and _size(dst + ".tmp") == f.get("size", _size(dst + ".tmp")):
                port.checkpoint("inflated:" + rel)
                os.rename(dst + ".tmp", dst)
                remove(part)
                return
            remove(dst + ".tmp")
            remove(part)
            if attempt == 0:
                self.done -= f["zsize"]  # a torn partial download? fetch it once more from the start
        raise Refused("hash mismatch: %s is not the file the release signed" % rel)

    async def download(self, url, part, size):
        tries = 0
        start = self.done
        while True:
            self.done = start
            have = _size(part)
            if have > size:
                remove(part)
                have = -1
            if have == size:
                self.done = start + size
                self.report_progress()
                return
            have = max(have, 0)
            r = None
            try:
                r = await httpget.get(url, have)
                if r.status == 404:
                    raise Refused("not found: %s" % url)
                total = r.total()
                if r.status in (200, 206, 416) and total is not None and total != size:
                    raise Refused("size mismatch: %s is %d bytes, the release signed %d"
                                  % (url.rsplit("/files/", 1)[-1][:-2], total, size))
                if r.status == 200:
                    have = 0  # the server sent the whole file
                elif r.status != 206:
                    raise httpget.HTTPError(r.status, url)
                with open(part, "ab" if have else "wb") as fo:
                    while have < size:
                        chunk = await r.read(min(CHUNK, size - have))
                        if not chunk:
                            raise OSError("connection closed at byte %d of %d" % (have, size))
                        fo.write(chunk)
                        have += len(chunk)
                        self.done = start + have
                        self.chunks += 1
                        port.checkpoint("chunk:%d" % self.chunks)
                        self.report_progress()
                return
            except (OSError, asyncio.TimeoutError) as e:
                tries += 1
                if tries >= DOWNLOAD_TRIES:
                    raise OSError("download of %s failed: %r" % (url, e))
                self.u.node.log("warning", "ota: download interrupted (%r), resuming" % (e,))
                await port.sleep_ms(500 * tries)
            finally:
                if r is not None:
                    await r.close()
