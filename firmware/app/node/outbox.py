# Readings waiting for the fleet, in RAM and spilled to flash.
#
# An entry leaves only when the fleet's `stored` watermark covers it: a broker's PUBACK proves
# nothing once the broker can crash before saving its queue. Entries stay in RAM while the link is
# up and the fleet confirms them promptly, so an online node does not write flash per reading.
# RAM's share is one buffer of `ram_bytes`, allocated once: payloads are written into it in place
# (node.codec.telemetry_into), so a running node never holds payload-sized objects that would cut
# its heap into holes too small for the next one. Entries spill to flash, in batches, when the link
# is down, when the buffer is full or when they wait longer than `spill_age_ms`. Spilled entries live in segment files of at most
# SEGMENT_RECORDS lines `<seq> <payload> <crc32>`; a line torn by a power cut fails its CRC and is
# skipped, so a reboot resumes from whole records only. All flash entries are older than all RAM
# entries, which keeps sending in sequence order.
import binascii
import os
import sys

from node import store

SEGMENT_RECORDS = 32
# A payload in RAM is handed out as a view of the buffer on MicroPython (its stream writes or copies
# it at once); CPython's transports may keep what they are given, so they get a copy.
_VIEW = sys.implementation.name == "micropython"


def _write(f, seq, payload):
    """Append one record in pieces: a payload is the largest thing a node allocates, never copied."""
    head = b"%d " % seq
    f.write(head)
    f.write(payload)
    f.write(b" %08x\n" % (binascii.crc32(payload, binascii.crc32(head)) & 0xFFFFFFFF))


def _copy(payload, buf, at):
    end = at + len(payload)
    if end > len(buf):
        return -1
    buf[at:end] = payload
    return end


def _parse(line):
    """(seq, payload bytes) from a segment line, or None if torn or corrupt."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    cut = line.rfind(b" ", 0, end)
    sp = line.find(b" ")
    if cut < 0 or sp < 0 or sp >= cut:
        return None
    try:
        if int(line[cut + 1:end], 16) != binascii.crc32(memoryview(line)[:cut]) & 0xFFFFFFFF:
            return None
        return int(line[:sp]), line[sp + 1:cut]
    except ValueError:
        return None


class Outbox:
    def __init__(self, root, ram_bytes=4096, flash_capacity=20000, spill_age_ms=30000, clock=None, diff=None):
        self.root = root
        self.buf = bytearray(ram_bytes)  # RAM's share: the payloads of self.ram, back to back
        self.ram_used = 0  # where the next payload goes in buf
        self.flash_capacity = flash_capacity
        self.spill_age_ms = spill_age_ms
        self.clock = clock  # ticks_ms-like
        self.diff = diff or (lambda a, b: a - b)  # ticks_diff-like, for clocks that wrap
        self.ram = []  # [seq, offset in buf, length, born_ms], oldest first
        self.segments = []  # [first_seq, last_seq, count, name], oldest first
        self.flash_count = 0
        self.sent_upto = -1  # highest seq published on the current connection
        self.stored_upto = -1  # the fleet's watermark
        self.dropped = 0  # discarded because the outbox was full (oldest first)
        self.flash_writes = 0  # spill operations (one file append each)
        self._cache_name = None  # where next_unsent stopped reading: segment name,
        self._cache = None  # and (seq, file offset after its line), so only one line is in RAM
        store.ensure_dir(root)
        self._scan()

    # --- boot -----------------------------------------------------------------------------
    def _scan(self):
        names = []
        for name in os.listdir(self.root):
            if name.endswith(".log"):
                try:
                    names.append((int(name[:-4]), name))
                except ValueError:
                    pass
        names.sort()
        for _, name in names:
            seg = self._scan_segment(name)
            if seg:
                self.segments.append(seg)
                self.flash_count += seg[2]
            else:
                self._remove(name)

    def _scan_segment(self, name):
        """[first_seq, last_seq, count, name] of the whole records in segment `name`, or None;
        one line in RAM at a time."""
        seg = None
        try:
            with open(self.root + "/" + name, "rb") as f:
                for line in f:
                    rec = _parse(line)
                    if rec is None:
                        continue
                    if seg is None:
                        seg = [rec[0], rec[0], 0, name]
                    seg[1] = rec[0]
                    seg[2] += 1
        except OSError:
            pass
        return seg

    def _first_after(self, name, floor):
        """The first record of segment `name` above `floor`, reading one line at a time (a whole
        segment of payloads held in RAM would cost tens of KB), resuming where the last call stopped."""
        start = 0
        if name == self._cache_name and self._cache[0] <= floor:
            start = self._cache[1]
        try:
            with open(self.root + "/" + name, "rb") as f:
                if start:
                    f.seek(start)
                while True:
                    line = f.readline()
                    if not line:
                        return None
                    rec = _parse(line)
                    if rec is not None and rec[0] > floor:
                        self._cache_name = name
                        self._cache = (rec[0], f.tell())
                        return rec
        except OSError:
            return None

    def _remove(self, name):
        if name == self._cache_name:
            self._cache_name = None
            self._cache = None
        try:
            os.remove(self.root + "/" + name)
        except OSError:
            pass

    # --- queueing -------------------------------------------------------------------------
    def __len__(self):
        return len(self.ram) + self.flash_count

    def put(self, seq, payload, link_up=True):
        """Queue entry `seq`. payload: bytes, or encode(buf, at) that writes it into buf from `at`
        and returns where it ends, -1 when it does not fit (node.codec.telemetry_into)."""
        encode = payload if callable(payload) else lambda buf, at: _copy(payload, buf, at)
        end = encode(self.buf, self.ram_used)
        if end < 0:
            self._make_room()
            end = encode(self.buf, self.ram_used)
        if end < 0:
            self.spill()
            end = encode(self.buf, 0)
        if end < 0:
            raise ValueError("entry %d is larger than the outbox's RAM (%d bytes)" % (seq, len(self.buf)))
        self.ram.append([seq, self.ram_used, end - self.ram_used, self.clock() if self.clock else 0])
        self.ram_used = end
        if not link_up:
            self.spill()

    def _make_room(self):
        """Move the waiting payloads to the front of the buffer when the confirmed ones before them
        left as much room as they take (no overlap: a plain copy)."""
        if not self.ram:
            self.ram_used = 0
            return
        start = self.ram[0][1]
        live = self.ram_used - start
        if start < live:
            return
        view = memoryview(self.buf)
        view[0:live] = view[start:self.ram_used]
        for e in self.ram:
            e[1] -= start
        self.ram_used = live

    def _payload(self, e):
        view = memoryview(self.buf)[e[1]:e[1] + e[2]]
        return view if _VIEW else bytes(view)

    def maintain(self):
        """Called periodically: spill entries the fleet has left unconfirmed for too long."""
        if self.ram and self.clock and self.diff(self.clock(), self.ram[0][3]) > self.spill_age_ms:
            self.spill()

    def spill(self):
        """Move every RAM entry to flash in one append (or a few, at segment boundaries)."""
        while self.ram:
            seg = self.segments[-1] if self.segments else None
            if seg is None or seg[2] >= SEGMENT_RECORDS:
                seg = [self.ram[0][0], self.ram[0][0], 0, "%010d.log" % self.ram[0][0]]
                self.segments.append(seg)
            n = min(SEGMENT_RECORDS - seg[2], len(self.ram))
            chunk = self.ram[:n]
            with open(self.root + "/" + seg[3], "ab") as f:
                for e in chunk:
                    _write(f, e[0], memoryview(self.buf)[e[1]:e[1] + e[2]])
            self.flash_writes += 1
            del self.ram[:n]
            seg[1] = chunk[-1][0]
            seg[2] += n
            self.flash_count += n
        self.ram_used = 0
        while self.flash_count > self.flash_capacity and self.segments:
            first, last, count, name = self.segments.pop(0)
            self._remove(name)
            self.flash_count -= count
            self.dropped += count

    # --- sending --------------------------------------------------------------------------
    def next_unsent(self):
        """The oldest entry above both cursors, as (seq, payload), or None."""
        floor = self.sent_upto if self.sent_upto > self.stored_upto else self.stored_upto
        for seg in self.segments:
            if seg[1] > floor:
                rec = self._first_after(seg[3], floor)
                if rec is not None:
                    return rec
        for e in self.ram:
            if e[0] > floor:
                return e[0], self._payload(e)
        return None

    def mark_sent(self, seq):
        self.sent_upto = seq

    def release(self, upto):
        """The fleet stored everything up to `upto`: forget it, RAM and flash."""
        if upto <= self.stored_upto:
            return
        self.stored_upto = upto
        while self.segments and self.segments[0][1] <= upto:
            first, last, count, name = self.segments.pop(0)
            self._remove(name)
            self.flash_count -= count
        i = 0
        while i < len(self.ram) and self.ram[i][0] <= upto:
            i += 1
        if i:
            del self.ram[:i]
        if not self.ram:
            self.ram_used = 0

    def rewind(self):
        """New connection: everything the fleet has not confirmed goes out again."""
        self.sent_upto = -1
