# Small durable files on flash. A record is written to a temporary file and renamed over the old
# one, so a power cut leaves either the old or the new record, never a torn one.
import os


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def read_text(path):
    """The file's text without surrounding whitespace, or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def read_int(path, default=0):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def ensure_dir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


class SeqCounter:
    """Telemetry sequence numbers that never repeat after a reboot, with one flash write per block.

    The file holds an upper bound already reserved; after a reboot numbering resumes from it, so
    numbers lost with the old process are skipped, never reused.
    """

    BLOCK = 256

    def __init__(self, path):
        self.path = path
        self.next = read_int(path, 0)
        self.limit = self.next
        self._reserve()

    def _reserve(self):
        self.limit = self.next + self.BLOCK
        write_atomic(self.path, str(self.limit))

    def advance(self, n):
        """Never number below `n` again (the fleet has stored up to n - 1 from this identity)."""
        if n > self.next:
            self.next = n
            if n >= self.limit:
                self._reserve()

    def take(self):
        if self.next >= self.limit:
            self._reserve()
        n = self.next
        self.next += 1
        return n


def bump(path):
    n = read_int(path, 0) + 1
    write_atomic(path, str(n))
    return n
