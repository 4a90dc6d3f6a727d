# The node's end of a virtual board's world (provisioning/world.py): the simulated building and
# sensor chips run in a process beside the node, as a real board's chips sit outside its MCU, and
# the real drivers reach them through these proxies over a socket on 127.0.0.1 (port in world.port).
# A request is op, device, payload length (16 bits), payload; a reply is status (0, 19 for a NACK,
# 22 with the reason when a device cannot be made), length, payload. A lost link leaves every
# device gone, as a cut cable would.
import json
import socket
import sys
import time

from node import bus

PORT_FILE = "world.port"
WAIT_MS = 10000  # the world starts beside the node: how long to wait for it
HELLO, OPEN, I2C_WRITE, I2C_READ, UART_WRITE, UART_READ, I2S_READ, EDGE_POP = range(8)
ALL = 0xFFFF  # UART_READ: whatever has arrived

_sock = None
_tx = bytearray(4 + 32)  # a request: header, then the longest bus write (an MH-Z19 frame, 9 bytes)
_rx = bytearray(8)  # a reply's header, then a small payload (a device number, an edge)

if sys.implementation.name == "micropython":  # streams take a byte count: no view per request

    def _send(buf, n):
        _sock.write(buf, n)

    def _recv(buf, n):
        return _sock.readinto(buf, n) if n else 0

else:

    def _send(buf, n):
        _sock.sendall(memoryview(buf)[:n])

    def _recv(buf, n):
        view = memoryview(buf).cast("B")
        got = 0
        while got < n:
            k = _sock.recv_into(view[got:n])
            if not k:
                break
            got += k
        return got


def _lost():
    global _sock
    _sock.close()
    _sock = None


def _ask(op, dev, buf, n):
    """Send op for device `dev` with buf[4:4 + n] as payload; returns the length of the reply's
    payload, to be read next with _take. Raises OSError(19) when an I2C device NACKs. Without a
    link, every device is gone: I2C NACKs, the rest is silence (no bytes, samples or edges)."""
    if _sock is not None:
        buf[0] = op
        buf[1] = dev
        buf[2] = n >> 8
        buf[3] = n & 0xFF
        try:
            _send(buf, 4 + n)
            ok = _recv(_rx, 3) == 3
        except OSError:
            ok = False
        if ok:
            n = _rx[1] << 8 | _rx[2]
            if _rx[0] == 0:
                return n
            status = _rx[0]
            why = bytearray(n)
            _take(why, n)
            raise OSError(19) if status == 19 else ValueError(str(why, "utf-8"))
        _lost()
    if op == I2C_WRITE or op == I2C_READ:
        raise OSError(19)
    return 0


def _take(buf, n):
    """The reply's n payload bytes into buf."""
    try:
        ok = _recv(buf, n) == n
    except OSError:
        ok = False
    if not ok:
        _lost()
        raise OSError(19)


def _put(buf, at):
    # A bus write goes out with its header in one segment (no Nagle wait on a split request).
    n = len(buf)
    if 4 + at + n > len(_tx):
        raise ValueError("bus write of %d bytes" % n)
    for i in range(n):
        _tx[4 + at + i] = buf[i]
    return n


class Device:
    """A simulated chip or input in the world, with the bus calls its driver makes: machine.I2C,
    machine.UART (timeout 0), machine.I2S, or an edge ring's pop()."""

    def __init__(self, n):
        self.n = n

    def writeto(self, addr, buf, stop=True):
        _tx[4] = addr
        n = _put(buf, 1)
        _ask(I2C_WRITE, self.n, _tx, 1 + n)
        return n

    def readfrom_into(self, addr, buf):
        n = len(buf)
        _tx[4] = addr
        _tx[5] = n >> 8
        _tx[6] = n & 0xFF
        _take(buf, _ask(I2C_READ, self.n, _tx, 3))

    def write(self, buf):
        n = _put(buf, 0)
        _ask(UART_WRITE, self.n, _tx, n)
        return n

    def read(self, n=None):
        """What has arrived (at most n bytes; a bytearray, which the drivers only copy), or None."""
        n = ALL if n is None else n
        _tx[4] = n >> 8
        _tx[5] = n & 0xFF
        k = _ask(UART_READ, self.n, _tx, 2)
        if not k:
            return None
        out = bytearray(k)
        _take(out, k)
        return out

    def readinto(self, buf):
        """The samples the microphone delivered, into buf (int16 halves of 32-bit slots): bytes."""
        n = len(buf)
        _tx[4] = n >> 8
        _tx[5] = n & 0xFF
        k = _ask(I2S_READ, self.n, _tx, 2)
        _take(buf, k)
        return k

    def pop(self):
        """The oldest edge (t_ms on the world's clock, level), or None."""
        k = _ask(EDGE_POP, self.n, _tx, 0)
        if not k:
            return None
        _take(_rx, k)
        e = 0
        for i in range(k):
            e = e << 8 | _rx[i]
        return e >> 1, e & 1


def device(what, kind, spec, pin=None, rate=0):
    """The world's device for a sensor spec with "sim" (what: i2c, uart, i2s or edges), the same one
    after the node reboots: the world keeps it, as a chip outlives the MCU's restart."""
    req = bytearray(4) + json.dumps([what, kind, spec, pin, rate]).encode()
    _take(_rx, _ask(OPEN, 0, req, len(req) - 4))
    return Device(_rx[0])  # without a link, any number: the device is gone


def _dial():
    with open(PORT_FILE) as f:
        port_no = int(f.read())
    s = socket.socket()
    try:
        s.connect(socket.getaddrinfo("127.0.0.1", port_no)[0][-1])
    except OSError:
        s.close()
        raise
    return s


def connect():
    """Reach the world (retried while it starts), run node.bus's clock on the world's simulated
    time and send the simulated buses there. False when no world answered: every device is gone."""
    global _sock
    bus.world = True
    start = bus.wall_ms()
    while _sock is None:
        try:
            _sock = _dial()
        except (OSError, ValueError):
            if bus.wall_diff(bus.wall_ms(), start) > WAIT_MS:
                return False
            time.sleep(0.1)
    _sock.settimeout(5)  # a hung world faults the sensors instead of hanging the node
    try:
        k = _ask(HELLO, 0, _tx, 0)
        hello = bytearray(k)
        _take(hello, k)
    except OSError:
        return False
    ms, midnight, speed_k = [int(x) for x in str(hello, "utf-8").split()]
    _clock(ms, midnight, speed_k)
    return True


def _clock(ms0, midnight, speed_k):
    """The world's simulated ms (now ms0, running speed_k / 1000 times real time) as node.bus's
    clock, and its day as the node's clock when it has one (a building; 0 otherwise)."""
    wall0 = bus.wall_ms()
    nap = bus.sleep_ms

    def ms():
        return ms0 + bus.wall_diff(bus.wall_ms(), wall0) * speed_k // 1000

    def sleep(n):
        nap((int(n) * 1000 + speed_k - 1) // speed_k)

    bus.ticks_ms = ms
    bus.ticks_diff = _diff
    bus.sleep_ms = sleep
    if midnight:
        from node.port import port

        port.set_clock(lambda: midnight + ms() // 1000)


def _diff(a, b):
    return a - b  # the world's clock does not wrap
