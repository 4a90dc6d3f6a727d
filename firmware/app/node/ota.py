# Over-the-air updates of the application slots (docs/contract.md, `ota` and `ota/status`).
#
# The fleet offers a release, retained on maille/v1/<id>/ota: {"version", "url", "rollback"?,
# "attempt"?}, `url` being the release's manifest.json. The node:
#   1. fetches manifest.json and manifest.sig and checks the Ed25519 signature with the release
#      public keys it was provisioned with (config.json "ota": {"keys": [hex, ...]}), then the
#      release itself: format, architecture and .mpy version, loader version, and anti-rollback
#      (an older version only when the manifest is signed as a rollback release);
#   2. fills the inactive slot: files whose SHA-256 the running slot already has are copied, the
#      others downloaded compressed (zlib) to <file>.z.part with HTTP Range resume, inflated and
#      hashed; nothing is switched until every file of the slot matches the signed manifest;
#   3. switches with one atomic write of app/active ({"slot", "trial": true, "prev", ...}) and
#      reboots; the loader counts trial boots and rolls back by itself (crash loop, watchdog);
#   4. in trial, confirms the slot (trial false) once online with the fleet storing its data for
#      `confirm_s`, or rolls back if that has not happened within `trial_s`.
# Each step is reported on ota/status. A power cut anywhere leaves either the old slot active with
# a partly filled inactive slot (the retained offer resumes the job on the next boot) or the new
# slot in trial (the loader and the trial monitor finish or undo it).
import binascii
import hashlib
import json
import os
import sys

import asyncio

from node import VERSION, ed25519, httpget
from node.port import port

POINTER = "app/active"
STATE = "data/ota.json"
CHUNK = 1024
MANIFEST_MAX = 32768
FORMAT = 1
DOWNLOAD_TRIES = 6
CONFIRM_S = 20  # as Node.check_healthy: online this long with the fleet's watermark
TRIAL_S = 300  # no confirmation within this, and the trial slot is rolled back


class Refused(Exception):
    """The release is refused for good (this offer is not tried again)."""


def _hex(b):
    return binascii.hexlify(b).decode()


def parse_version(v):
    if not isinstance(v, str) or not v:
        raise ValueError("version must be a string like 1.4.2")
    out = []
    for part in v.split("."):
        if not part.isdigit():
            raise ValueError("version %r: numbers separated by dots expected" % v)
        out.append(int(part))
    return tuple(out)


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


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


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


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def write_atomic(path, text, step=None):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    if step:
        port.checkpoint(step)
    os.rename(path + ".tmp", path)


def read_pointer():
    """app/active: the loader's slot pointer, plain "a"/"b" or JSON (see firmware/loader/main.py)."""
    text = (read_text(POINTER) or "").strip()
    if text in ("a", "b"):
        return {"slot": text}
    try:
        p = json.loads(text)
    except ValueError:
        p = None
    if not isinstance(p, dict) or p.get("slot") not in ("a", "b"):
        return {"slot": "a"}
    return p


def loader_version():
    try:
        return int((read_text("data/loader") or "1").strip())
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


def parse_offer(payload):
    msg = json.loads(payload)
    if not isinstance(msg, dict):
        raise ValueError("the offer must be an object")
    parse_version(msg.get("version"))
    url = msg.get("url")
    if not isinstance(url, str):
        raise ValueError("url must be a string")
    httpget.split_url(url)
    if not isinstance(msg.get("rollback", False), bool):
        raise ValueError("rollback must be true or false")
    attempt = msg.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise ValueError("attempt must be an integer >= 0")
    return {"version": msg["version"], "url": url, "rollback": msg.get("rollback", False), "attempt": attempt}


# --- the updater -------------------------------------------------------------------------------
class Updater:
    def __init__(self, node):
        self.node = node
        cfg = node.cfg.get("ota") or {}
        self.keys = []
        for k in cfg.get("keys") or ():
            try:
                raw = binascii.unhexlify(k)
                if len(raw) == 32:
                    self.keys.append(raw)
            except (ValueError, TypeError):
                pass
        self.confirm_ms = int(cfg.get("confirm_s", CONFIRM_S) * 1000)
        self.trial_ms = int(cfg.get("trial_s", TRIAL_S) * 1000)
        self.pointer = read_pointer()
        self.slot = self.pointer["slot"]
        self.trial = bool(self.pointer.get("trial"))
        self.offer = None
        self.wake = asyncio.Event()
        self.busy = False
        self.progress = -1
        self.chunks = 0
        try:
            self.last = json.loads(read_text(STATE) or "{}")
        except ValueError:
            self.last = {}

    # messages -------------------------------------------------------------------------------
    def on_offer(self, payload):
        if not payload:
            self.offer = None  # the fleet withdrew its offer
            return
        try:
            offer = parse_offer(payload)
        except ValueError as e:
            self.status("failed", "?", reason="bad offer: %s" % e)
            return
        self.offer = offer
        self.wake.set()

    def status(self, state, version, reason=None, progress=None):
        msg = {"state": state, "version": version, "running": VERSION, "slot": self.slot}
        if reason is not None:
            msg["reason"] = reason[:200]
        if progress is not None:
            msg["progress"] = progress
        t = port.epoch()
        if port.time_synced():
            msg["ts"] = t
        self.node.control.append(("ota/status", json.dumps(msg)))
        self.node.wake.set()
        self.node.log("info", "ota: %s %s%s" % (state, version, (": " + reason) if reason else
                                                 (" %d%%" % progress if progress is not None else "")))

    def record(self, offer, state, reason=None):
        self.last = {"version": offer["version"], "url": offer["url"], "attempt": offer.get("attempt", 0),
                     "state": state}
        if reason:
            self.last["reason"] = reason
        write_atomic(STATE, json.dumps(self.last))

    def _same(self, offer):
        last = self.last
        return last.get("version") == offer["version"] and last.get("url") == offer["url"] \
            and last.get("attempt", 0) == offer["attempt"]

    # the task -------------------------------------------------------------------------------
    async def run(self):
        rb = self.pointer.get("rolled_back")
        if rb:
            # The loader went back to this slot: say so, remember not to retry that offer.
            reason = rb.get("reason") or "rolled back"
            self.status("rolled_back", rb.get("version") or "?", reason=reason)
            self.last = dict(self.last, state="rolled_back", reason=reason)
            if rb.get("version"):
                self.last["version"] = rb["version"]
            write_atomic(STATE, json.dumps(self.last))
            p = dict(self.pointer)
            p.pop("rolled_back")
            write_atomic(POINTER, json.dumps(p))
            self.pointer = p
        elif self.last.get("state") in ("confirmed", "failed", "rolled_back"):
            self.status(self.last["state"], self.last.get("version", "?"), reason=self.last.get("reason"))
        if self.trial:
            await self.run_trial()
        while True:
            await self.wake.wait()
            self.wake.clear()
            offer = self.offer
            if offer is None or self.busy:
                continue
            if offer["version"] == VERSION:
                if not (self._same(offer) and self.last.get("state") == "confirmed"):
                    self.record(offer, "confirmed", "running")
                    self.status("confirmed", VERSION, reason="running")
                continue
            if self._same(offer) and self.last.get("state") in ("failed", "rolled_back") \
                    and not self.last.get("retry"):
                continue  # refused or rolled back before: a new attempt number retries it
            self.busy = True
            try:
                await self.install(offer)
            except Refused as e:
                self.record(offer, "failed", str(e))
                self.status("failed", offer["version"], reason=str(e))
            except Exception as e:  # network or flash trouble: retried on the next offer or boot
                reason = "%s: %s" % (type(e).__name__, e)
                self.record(offer, "failed", reason)
                self.last["retry"] = True
                write_atomic(STATE, json.dumps(self.last))
                self.status("failed", offer["version"], reason=reason)
            finally:
                self.busy = False

    # trial ----------------------------------------------------------------------------------
    def healthy(self):
        """Node.check_healthy's notion, with this trial's own delay: online, and the fleet stores our data."""
        n = self.node
        if n.healthy:
            return True
        if n.online_since is None or n.outbox.stored_upto < 0:
            return False
        return port.ticks_diff(port.ticks_ms(), n.online_since) >= self.confirm_ms

    async def run_trial(self):
        p = self.pointer
        version = p.get("version") or VERSION
        self.status("trial", version, reason="trial boot %d" % p.get("tries", 1))
        port.checkpoint("trial:started")
        t0 = port.ticks_ms()
        while not self.healthy():
            if port.ticks_diff(port.ticks_ms(), t0) > self.trial_ms:
                await self.roll_back("not online and healthy within %d s" % (self.trial_ms // 1000))
                return
            await port.sleep_ms(250)
        port.checkpoint("trial:healthy")
        p = dict(p)
        p["trial"] = False
        p.pop("tries", None)
        write_atomic(POINTER, json.dumps(p), "trial:confirm-tmp")
        self.pointer = p
        self.trial = False
        write_atomic("data/crashes", "0")
        _remove("data/last_crash")
        port.checkpoint("trial:confirmed")
        offer = {"version": version, "url": self.last.get("url"), "attempt": self.last.get("attempt", 0)}
        self.record(offer, "confirmed", "healthy in trial")
        self.status("confirmed", version, reason="healthy in trial")

    async def roll_back(self, reason):
        p = self.pointer
        back = {"slot": p["prev"], "rolled_back": {"version": p.get("version") or VERSION, "from": self.slot,
                                                   "reason": reason}}
        if p.get("from"):
            back["version"] = p["from"]
        write_atomic(POINTER, json.dumps(back), "trial:rollback-tmp")
        write_atomic("data/crashes", "0")
        self.node.log("warning", "ota: rolling back to slot %s: %s" % (p["prev"], reason))
        self.node.pending_reset = True
        self.node.wake.set()
        # If the link never comes up the reset would wait for it: reset now after a short grace.
        await port.sleep_ms(3000)
        port.reset()

    # install --------------------------------------------------------------------------------
    async def install(self, offer):
        version = offer["version"]
        self.status("offered", version, reason="from %s" % offer["url"])
        port.checkpoint("offered")
        if self.trial:
            raise Refused("busy: slot %s is still on trial" % self.slot)
        if not self.keys:
            raise Refused("no release keys provisioned on this node")
        base = offer["url"].rsplit("/", 1)[0] + "/"
        manifest_bytes = await self.fetch(offer["url"])
        sig_bytes = await self.fetch(base + "manifest.sig")
        check_signature(manifest_bytes, sig_bytes, self.keys)
        try:
            m = json.loads(manifest_bytes)
        except ValueError:
            raise Refused("the manifest is not JSON")
        check_manifest(m, offer, VERSION)
        port.checkpoint("checked")
        target = "b" if self.slot == "a" else "a"
        root = "app/" + target
        running = "app/" + self.slot
        files = m["files"]
        job = _hex(hashlib.sha256(manifest_bytes).digest())
        self.prepare(root, files, job)
        port.checkpoint("prepared")

        total = 0
        for f in files:
            total += f["zsize"]
        self.done = 0
        self.total = total or 1
        self.progress = -1
        self.report_progress(version)
        for f in files:
            await self.place(root, running, base, f, version)
            port.checkpoint("placed:" + f["path"])
        self.status("verifying", version, reason="%d files" % len(files))
        port.checkpoint("verifying")
        for f in files:
            if sha256_file(root + "/" + f["path"]) != f["sha256"]:
                _remove(root + "/" + f["path"])
                raise Exception("verify: %s changed on flash" % f["path"])  # retried: fetched again
            await port.sleep_ms(0)
        with open(root + "/manifest.sig", "wb") as fo:
            fo.write(sig_bytes)
        write_atomic(root + "/manifest.json", manifest_bytes.decode(), "verified")
        self.status("installed", version, reason="slot %s" % target)
        port.checkpoint("installed")
        self.record(offer, "rebooting")
        self.status("rebooting", version, reason="trial boot of slot %s" % target)
        _remove("data/last_crash")
        pointer = {"slot": target, "trial": True, "prev": self.slot, "tries": 0, "version": version,
                   "from": VERSION}
        write_atomic(POINTER, json.dumps(pointer), "switch-tmp")
        port.checkpoint("switched")
        self.node.log("warning", "ota: switched to slot %s (%s on trial), rebooting" % (target, version))
        self.node.pending_reset = True
        self.node.wake.set()
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
        same_job = (read_text(root + "/.job") or "").strip() == job
        for rel in _walk(root):
            if rel in wanted or rel == ".job":
                continue
            if same_job and rel.endswith(".z.part") and rel[:-7] in wanted:
                continue
            _remove(root + "/" + rel)
        _prune_dirs(root)
        if not same_job:
            write_atomic(root + "/.job", job)

    def report_progress(self, version):
        pct = self.done * 100 // self.total
        step = pct // 20 * 20
        if step > self.progress:
            self.progress = step
            self.status("downloading", version, progress=pct)

    async def place(self, root, running, base, f, version):
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
            self.report_progress(version)
            return
        part = dst + ".z.part"
        for attempt in (0, 1):
            await self.download(base + "files/" + rel + ".z", part, f["zsize"], version)
            port.checkpoint("fetched:" + rel)
            try:
                got = _inflate(part, dst + ".tmp")
            except Exception:  # not a zlib stream at all
                got = None
            if got == want and _size(dst + ".tmp") == f.get("size", _size(dst + ".tmp")):
                port.checkpoint("inflated:" + rel)
                os.rename(dst + ".tmp", dst)
                _remove(part)
                return
            _remove(dst + ".tmp")
            _remove(part)
            if attempt == 0:
                self.done -= f["zsize"]  # a torn partial download? fetch it once more from the start
        raise Refused("hash mismatch: %s is not the file the release signed" % rel)

    async def download(self, url, part, size, version):
        tries = 0
        start = self.done
        while True:
            self.done = start
            have = _size(part)
            if have > size:
                _remove(part)
                have = -1
            if have == size:
                self.done = start + size
                self.report_progress(version)
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
                        self.report_progress(version)
                return
            except (OSError, asyncio.TimeoutError) as e:
                tries += 1
                if tries >= DOWNLOAD_TRIES:
                    raise OSError("download of %s failed: %r" % (url, e))
                self.node.log("warning", "ota: download interrupted (%r), resuming" % (e,))
                await port.sleep_ms(500 * tries)
            finally:
                if r is not None:
                    await r.close()
