# MQTT 3.1.1 client on asyncio streams, for the common subset of MicroPython and CPython.
#
# One connection per `connect()`: the caller owns reconnection (see node.link), so a dead
# connection is never silently revived with lost state. Packets are written whole under a lock,
# a single reader task dispatches everything the broker sends, and a pinger keeps the link
# honest: no packet from the broker for `keepalive` seconds (while pinging every keepalive/2)
# marks the link dead, so a half-open connection is noticed within 1.5 x keepalive.
import struct

import asyncio

from node.port import port

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized: wrong user name or password, or no access",
}

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0


class MQTTError(Exception):
    pass


class ConnectRefused(MQTTError):
    def __init__(self, code):
        super().__init__("broker refused the connection: %s (CONNACK %d)"
                         % (CONNACK_REASONS.get(code, "unknown reason"), code))
        self.code = code


def tls_context(ca_der):
    """A client TLS context that verifies the broker against our CA (DER bytes: MicroPython's
    mbedTLS binding refuses PEM). The broker's name is checked against the host we dial."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_der)
    return ctx


def _connect_error(e, tls):
    """The error to report for a failed connect, named so nobody mistakes one for another."""
    text = str(e).strip()
    # The TLS layers differ: CPython raises SSLCertVerificationError, MicroPython's mbedTLS a
    # ValueError on the first write ("The certificate is not correctly signed by the trusted CA").
    if tls and "certificate" in text.lower():
        return MQTTError("TLS: the broker's certificate was refused (%s)" % text.replace("\n", " "))
    if isinstance(e, EOFError):  # on MicroPython EOFError is no OSError: name it for the caller
        return MQTTError("connection closed before CONNACK")
    return e


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return out


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


def _packet(kind, body, tail=b""):
    """The packet's bytes before `tail` (a payload, written after them: never copied into them)."""
    return bytes([kind]) + _varint(len(body) + len(tail)) + body


class MQTTClient:
    def __init__(self, client_id, host, port_no=1883, user=None, password=None, keepalive=60,
                 clean=False, will=None, ssl=None, max_packet=8192, on_message=None):
        self.client_id = client_id
        self.host = host
        self.port_no = port_no
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clean = clean
        self.will = will  # (topic, payload, qos, retain)
        self.ssl = ssl
        self.max_packet = max_packet
        self.on_message = on_message  # called as on_message(topic, payload, retained)
        self.connected = False
        self.session_present = False
        self.dropped = 0  # oversized or malformed packets skipped by the reader
        self._reader = None
        self._writer = None
        self._lock = asyncio.Lock()
        self._pending = {}  # packet id -> [Event, result]
        self._pid = 0
        self._last_rx = 0
        self._tasks = []
        self.dead = asyncio.Event()
        self.error = None

    # --- connection -----------------------------------------------------------------------
    async def connect(self, timeout=10):
        """Open TCP (TLS), send CONNECT and wait for CONNACK; raises ConnectRefused or OSError."""
        self.dead = asyncio.Event()
        self.error = None
        # The name is resolved on every call, so a broker that moved is found after a reconnect.
        if self.ssl is not None:
            coro = asyncio.open_connection(self.host, self.port_no, ssl=self.ssl)
        else:
            coro = asyncio.open_connection(self.host, self.port_no)
        try:
            self._reader, self._writer = await asyncio.wait_for(coro, timeout)
            await self._write(self._connect_packet())
            kind, body = await asyncio.wait_for(self._read_packet(), timeout)
        except Exception as e:
            await self._close()
            raise _connect_error(e, self.ssl is not None)
        if kind & 0xF0 != CONNACK or len(body) != 2:
            await self._close()
            raise MQTTError("expected CONNACK, got packet type 0x%02x" % kind)
        if body[1] != 0:
            await self._close()
            raise ConnectRefused(body[1])
        self.session_present = bool(body[0] & 1)
        self.connected = True
        self._last_rx = port.ticks_ms()
        self._tasks = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._ping_loop())]

    def _connect_packet(self):
        flags = 0x00 if not self.clean else 0x02
        payload = _str(self.client_id)
        if self.will:
            topic, msg, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive) + payload
        return _packet(CONNECT, body)

    async def disconnect(self):
        """Clean DISCONNECT: the broker discards the will."""
        if self.connected:
            try:
                await self._write(bytes([DISCONNECT, 0]))
            except OSError:
                pass
        await self._shutdown(None)

    async def _shutdown(self, error):
        if self.error is None:
            self.error = error
        self.connected = False
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self._tasks = []
        for pid in self._pending:
            self._pending[pid][0].set()
        await self._close()
        self.dead.set()

    async def _close(self):
        w = self._writer
        self._writer = None
        if w is not None:
            try:
                w.close()
                await w.wait_closed()
            except Exception:
                pass

    # --- sending --------------------------------------------------------------------------
    async def _write(self, data, tail=b""):
        if self._writer is None:
            raise OSError("not connected")
        async with self._lock:
            self._writer.write(data)
            if tail:
                self._writer.write(tail)
            await self._writer.drain()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def _await_ack(self, pid, packet, timeout, retries, tail=b""):
        """Send `packet` (+ `tail`) and wait for its ack; QoS 1 re-sends with DUP set, boundedly."""
        slot = [asyncio.Event(), None]
        self._pending[pid] = slot
        try:
            for attempt in range(retries + 1):
                if not self.connected:
                    break
                await self._write(packet, tail)
                try:
                    await asyncio.wait_for(slot[0].wait(), timeout)
                except asyncio.TimeoutError:
                    packet = bytes([packet[0] | 0x08]) + packet[1:] if packet[0] & 0xF0 == PUBLISH else packet
                    continue
                if slot[1] is not None:
                    return slot[1]
                break
        finally:
            del self._pending[pid]
        raise MQTTError("no acknowledgement for packet %d (%s)" % (pid, self.error or "timeout"))

    async def publish(self, topic, payload, qos=0, retain=False, timeout=10, retries=1):
        if isinstance(payload, str):
            payload = payload.encode()
        head = PUBLISH | (qos << 1) | (1 if retain else 0)
        if qos == 0:
            await self._write(_packet(head, _str(topic), payload), payload)
            return
        pid = self._next_pid()
        packet = _packet(head, _str(topic) + struct.pack("!H", pid), payload)
        await self._await_ack(pid, packet, timeout, retries, payload)

    async def subscribe(self, topic, qos=1, timeout=10):
        pid = self._next_pid()
        packet = _packet(SUBSCRIBE, struct.pack("!H", pid) + _str(topic) + bytes([qos]))
        granted = await self._await_ack(pid, packet, timeout, 0)
        if granted == 0x80:
            raise MQTTError("subscription to %s refused by the broker" % topic)
        return granted

    # --- receiving ------------------------------------------------------------------------
    async def _read_packet(self):
        """Read one packet; a body larger than max_packet is skipped and returned as None."""
        head = (await self._reader.readexactly(1))[0]
        length = 0
        shift = 0
        while True:
            b = (await self._reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        if length > self.max_packet:
            while length:
                chunk = await self._reader.readexactly(min(length, 256))
                length -= len(chunk)
            return head, None
        body = await self._reader.readexactly(length) if length else b""
        return head, body

    async def _read_loop(self):
        error = None
        try:
            while True:
                kind, body = await self._read_packet()
                self._last_rx = port.ticks_ms()
                if body is None:
                    self.dropped += 1
                    continue
                try:
                    await self._dispatch(kind, body)
                except (ValueError, IndexError, UnicodeError, MQTTError):
                    self.dropped += 1
        except asyncio.CancelledError:
            raise
        except port.EOF_ERRORS as e:
            error = "connection lost (%r)" % (e,)
        except Exception as e:
            error = "reader failed (%r)" % (e,)
        await self._shutdown(error)

    async def _dispatch(self, kind, body):
        t = kind & 0xF0
        if t == PUBLISH:
            qos = (kind >> 1) & 3
            tlen = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + tlen].decode()
            pos = 2 + tlen
            pid = None
            if qos:
                pid = struct.unpack("!H", body[pos:pos + 2])[0]
                pos += 2
            if self.on_message:
                self.on_message(topic, body[pos:], bool(kind & 1))
            if qos == 1:
                await self._write(bytes([PUBACK, 2]) + struct.pack("!H", pid))
        elif t == PUBACK or t == SUBACK:
            pid = struct.unpack("!H", body[:2])[0]
            slot = self._pending.get(pid)
            if slot is not None:
                slot[1] = body[2] if t == SUBACK else 0
                slot[0].set()
        elif t == PINGRESP:
            pass
        else:
            raise MQTTError("unexpected packet 0x%02x" % kind)

    async def _ping_loop(self):
        interval = max(1, self.keepalive // 2) * 1000
        try:
            while True:
                await port.sleep_ms(interval)
                if port.ticks_diff(port.ticks_ms(), self._last_rx) > self.keepalive * 1000:
                    break
                await self._write(bytes([PINGREQ, 0]))
        except asyncio.CancelledError:
            raise
        except OSError:
            pass
        await self._shutdown("no answer from the broker for %d s (dead link)" % self.keepalive)
