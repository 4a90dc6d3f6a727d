# An app slot's folder packed into a ROMFS image (MicroPython's format, the one mpremote's
# VfsRomWriter writes), streamed in order to a writer: sizes are computed first, so no more than
# one chunk of a file is ever in RAM. The loader runs the slot's code in place from it (bytecode in
# flash, out of the heap). Written by the node after an install, into the slot's ROM segment.
import os

HEADER = b"\xd2\xcd\x31"
DATA, DIRECTORY, FILE = 2, 4, 5
DIR_MODE = 0x4000
CHUNK = 512


def _uint(v):
    """Big-endian groups of 7 bits, the high bit set on all but the last."""
    n = _uint_len(v)
    out = bytearray(n)
    for i in range(n - 1, -1, -1):
        out[i] = v & 0x7F | (0x80 if i < n - 1 else 0)
        v >>= 7
    return out


def _uint_len(v):
    n = 1
    while v >> 7:
        v >>= 7
        n += 1
    return n


def _names(path):
    names = os.listdir(path)
    names.sort()
    return names


def _is_dir(path):
    return os.stat(path)[0] & DIR_MODE != 0


def _body(key, inner):
    """Length of a file or directory record's body: its name, then its data or entries."""
    return _uint_len(len(key)) + len(key) + inner


def _size(path):
    """Bytes of the records of the folder's entries."""
    total = 0
    for name in _names(path):
        p = path + "/" + name
        body = _body(name.encode(), _size(p) if _is_dir(p) else _data_len(os.stat(p)[6]))
        total += 1 + _uint_len(body) + body
    return total


def _data_len(n):
    return 1 + _uint_len(n) + n


def size(root):
    """The image's size in bytes."""
    n = _size(root)
    head = len(HEADER) + _uint_len(n)
    return head + (head + n) % 2 + n


def write(root, out):
    """Stream the image of the folder `root` to out(bytes-like), in order; returns its size."""
    n = _size(root)
    head = HEADER + (b"\x80" if (len(HEADER) + _uint_len(n) + n) % 2 else b"") + _uint(n)
    out(head)
    _emit(root, out, bytearray(CHUNK))
    return len(head) + n


def _emit(path, out, buf):
    for name in _names(path):
        p = path + "/" + name
        key = name.encode()
        if _is_dir(p):
            out(bytes((DIRECTORY,)) + _uint(_body(key, _size(p))) + _uint(len(key)) + key)
            _emit(p, out, buf)
            continue
        n = os.stat(p)[6]
        out(bytes((FILE,)) + _uint(_body(key, _data_len(n))) + _uint(len(key)) + key + bytes((DATA,)) + _uint(n))
        view = memoryview(buf)
        with open(p, "rb") as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                out(view[:k])
