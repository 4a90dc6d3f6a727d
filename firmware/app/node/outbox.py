# Readings waiting for the fleet, in RAM and spilled to flash.
#
# An entry leaves only when the fleet's `stored` watermark covers it: a broker's PUBACK proves
# nothing once the broker can crash before saving its queue. Entries stay in RAM while the link is
# up and the fleet confirms them promptly, so an online node does not write flash per reading.
# They spill to flash, in batches, when the link is down, when RAM's share is full or when they
# wait longer than `spill_age_ms`. Spilled entries live in segment files of at most
# SEGMENT_RECORDS lines `<seq> <payload> <crc32>`; a line torn by a power cut fails its CRC and is
# skipped, so a reboot resumes from whole records only. All flash entries are older than all RAM
# entries, which keeps sending in sequence order.
import binascii
import os

from node import store

SEGMENT_RECORDS = 32


def _line(seq, payload):
    body = "%d %s" % (seq, payload)
    return "%s %08x\n" % (body, binascii.crc32(body.encode()) & 0xFFFFFFFF)


def _parse(line):
    """(seq, payload) from a segment line, or None if torn or corrupt."""
    line = line.rstrip("\n")
    cut = line.rfind(" ")
    if cut < 0:
        return None
    body = line[:cut]
    try:
        if int(line[cut + 1:], 16) != binascii.crc32(body.encode()) & 0xFFFFFFFF:
            return None
        sp = body.index(" ")
        return int(body[:sp]), body[sp + 1:]
    except ValueError:
        return None


class Outbox:
    def __init__(self, root, ram_capacity=100, flash_capacity=20000, spill_age_ms=30000, clock=None, diff=None):
        self.root = root
        self.ram_capacity = ram_capacity
        self.flash_capacity = flash_capacity
        self.spill_age_ms = spill_age_ms
        self.clock = clock  # ticks_ms-like
        self.diff = diff or (lambda a, b: a - b)  # ticks_diff-like, for clocks that wrap
        self.ram = []  # [seq, payload, born_ms], oldest first
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
            records = self._load(name)
            if records:
                self.segments.append([records[0][0], records[-1][0], len(records), name])
                self.flash_count += len(records)
            else:
                self._remove(name)

    def _load(self, name):
        records = []
        try:
            with open(self.root + "/" + name) as f:
                for line in f:
                    rec = _parse(line)
                    if rec is not None:
                        records.append(rec)
        except OSError:
            pass
        return records

    def _first_after(self, name, floor):
        """The first record of segment `name` above `floor`, reading one line at a time (a whole
        segment of payloads held in RAM would cost tens of KB), resuming where the last call stopped."""
        start = 0
        if name == self._cache_name and self._cache[0] <= floor:
            start = self._cache[1]
        try:
            with open(self.root + "/" + name) as f:
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
        self.ram.append([seq, payload, self.clock() if self.clock else 0])
        if not link_up or len(self.ram) > self.ram_capacity:
            self.spill()

    def maintain(self):
        """Called periodically: spill entries the fleet has left unconfirmed for too long."""
        if self.ram and self.clock and self.diff(self.clock(), self.ram[0][2]) > self.spill_age_ms:
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
            with open(self.root + "/" + seg[3], "a") as f:
                for seq, payload, _ in chunk:
                    f.write(_line(seq, payload))
            self.flash_writes += 1
            del self.ram[:n]
            seg[1] = chunk[-1][0]
            seg[2] += n
            self.flash_count += n
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
        for seq, payload, _ in self.ram:
            if seq > floor:
                return seq, payload
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

    def rewind(self):
        """New connection: everything the fleet has not confirmed goes out again."""
        self.sent_upto = -1
