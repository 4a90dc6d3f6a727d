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
# A release may also carry a MicroPython firmware image (node/fwimage.py): it is switched with the
# slot, and the trial marks it valid with the slot or rolls the slot back if it did not boot.
#
# This module is the updater's light part: it is loaded only when there is something to do (a trial
# to watch, a rollback or a past job to report at boot, an offer) and let go when that is done;
# the install itself lives in node/install.py, loaded only for a new release.
import binascii
import json
import os

import asyncio

from node import VERSION
from node.store import read_text
from node.port import port

POINTER = "app/active"
STATE = "data/ota.json"
CONFIRM_S = 20  # as Node.check_healthy: online this long with the fleet's watermark
TRIAL_S = 300  # no confirmation within this, and the trial slot is rolled back


class Refused(Exception):
    """The release is refused for good (this offer is not tried again)."""


def parse_version(v):
    if not isinstance(v, str) or not v:
        raise ValueError("version must be a string like 1.4.2")
    out = []
    for part in v.split("."):
        if not part.isdigit():
            raise ValueError("version %r: numbers separated by dots expected" % v)
        out.append(int(part))
    return tuple(out)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomic(path, text, step=None):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    if step:
        port.checkpoint(step)
    os.rename(path + ".tmp", path)


def read_pointer():
    """app/active: the loader's slot pointer, plain "a"/"b" or JSON (see firmware/loader/main.py)."""
    text = read_text(POINTER) or ""
    if text in ("a", "b"):
        return {"slot": text}
    try:
        p = json.loads(text)
    except ValueError:
        p = None
    if not isinstance(p, dict) or p.get("slot") not in ("a", "b"):
        return {"slot": "a"}
    return p


def parse_offer(payload):
    from node.httpget import split_url

    msg = json.loads(payload)
    if not isinstance(msg, dict):
        raise ValueError("the offer must be an object")
    parse_version(msg.get("version"))
    url = msg.get("url")
    if not isinstance(url, str):
        raise ValueError("url must be a string")
    split_url(url)
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
    async def run(self, boot):
        """The boot's duties (`boot`: once per boot), then the offers that came meanwhile, the newest
        only; returns when nothing is left to do, and the node lets this module go."""
        if boot:
            await self.at_boot()
        while self.wake.is_set():
            self.wake.clear()
            offer = self.offer
            if offer is None:
                continue
            if offer["version"] == VERSION:
                if not (self._same(offer) and self.last.get("state") == "confirmed"):
                    self.record(offer, "confirmed", "running")
                    self.status("confirmed", VERSION, reason="running")
                continue
            if self._same(offer) and self.last.get("state") in ("failed", "rolled_back") \
                    and not self.last.get("retry"):
                continue  # refused or rolled back before: a new attempt number retries it
            from node.install import Job

            try:
                await Job(self, offer).run()
            except Refused as e:
                self.record(offer, "failed", str(e))
                self.status("failed", offer["version"], reason=str(e))
            except Exception as e:  # network or flash trouble: retried on the next offer or boot
                reason = "%s: %s" % (type(e).__name__, e)
                self.record(offer, "failed", reason)
                self.last["retry"] = True
                write_atomic(STATE, json.dumps(self.last))
                self.status("failed", offer["version"], reason=reason)

    async def at_boot(self):
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
        if p.get("fw") and port.fw_running() != p["fw"]:  # a firmware image came with this slot
            await self.roll_back("the bootloader did not start firmware image %s" % p["fw"])
            return
        t0 = port.ticks_ms()
        while not self.healthy():
            if port.ticks_diff(port.ticks_ms(), t0) > self.trial_ms:
                await self.roll_back("not online and healthy within %d s" % (self.trial_ms // 1000))
                return
            await port.sleep_ms(250)
        port.checkpoint("trial:healthy")
        if p.get("fw"):
            port.fw_mark_valid()  # before the pointer: a cut in between confirms once more, harmlessly
        p = dict(p)
        p["trial"] = False
        p.pop("tries", None)
        p.pop("fw", None)
        write_atomic(POINTER, json.dumps(p), "trial:confirm-tmp")
        self.pointer = p
        self.trial = False
        write_atomic("data/crashes", "0")
        remove("data/last_crash")
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
