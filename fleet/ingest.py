"""Ingest: the fleet's MQTT subscriber that stores telemetry once, tracks presence and publishes watermarks.

Messages are taken in batches; a batch is committed in one transaction, then its QoS 1 messages are
acknowledged to the broker, then each device that sent telemetry gets its `stored` watermark. A
crash anywhere before the commit loses nothing: the persistent session makes the broker redeliver,
and readings are unique on (device, seq, name), so a redelivery is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import aiomqtt
import paho.mqtt.client as mqtt
from sqlalchemy import Connection, Engine, bindparam, delete, func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from fleet import contract, control, health, presence, rollups
from fleet.contract import Ack, RejectReason, Stored, Telemetry, Uplink
from fleet.models import REJECTS_KEPT, Device, Lifecycle, Reject, utcnow
from fleet.presence import PresenceRules
from fleet.registry import devices_by_id
from fleet.settings import MqttTarget, mask_url, parse_mqtt_url
from fleet.stream import Event, Hub

log = logging.getLogger("maille.ingest")

SUBSCRIPTIONS = [(f"maille/v1/+/{channel}", 1) for channel in contract.UP_CHANNELS]
SHARED_CHANNELS = [c for c in contract.UP_CHANNELS if c != "state"]


def subscriptions(worker: int, workers: int, group: str) -> list[tuple[str, int]]:
    """One worker takes everything; several split the stream with an MQTT shared subscription
    (`$share/<group>/…`). Brokers send no retained messages on shared subscriptions, and presence wants
    one ordered view of each device's births and wills, so `state` goes to worker 0 alone."""
    if workers == 1:
        return SUBSCRIPTIONS
    shared = [(f"$share/{group}/maille/v1/+/{channel}", 1) for channel in SHARED_CHANNELS]
    return shared + ([("maille/v1/+/state", 1)] if worker == 0 else [])


class Received(NamedTuple):
    """One message as ingest got it: the raw bytes (for reject excerpts) and what they decoded to.
    (A named tuple: one is made per message received, and a tuple is the cheapest to make.)"""

    topic: str
    payload: bytes
    at: datetime
    msg: Uplink | contract.Reject

    @property
    def accepted(self) -> bool:
        return not isinstance(self.msg, contract.Reject)


@dataclass
class BatchResult:
    stored_readings: int = 0
    stored_messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    watermarks: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass
class IngestStats:
    received: int = 0
    stored_readings: int = 0
    stored_messages: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {str(r): 0 for r in RejectReason})
    last_commit_at: datetime | None = None
    lag_s: float = 0.0  # receipt of the oldest message of the last batch → its commit

    def add(self, result: BatchResult, oldest: datetime, committed: datetime) -> None:
        self.stored_readings += result.stored_readings
        self.stored_messages += result.stored_messages
        for reason, n in result.rejected.items():
            self.rejected[reason] += n
        self.last_commit_at = committed
        self.lag_s = max(0.0, (committed - oldest).total_seconds())


_device = Device.__table__.c
REGISTERED = select(_device.id, _device.site_id).where(_device.id.in_(bindparam("ids", expanding=True)))
WATERMARKS = select(_device.id, _device.stored_seq).where(_device.id.in_(bindparam("ids", expanding=True)))
READING_COLUMNS = "device_id, seq, name, unit, value, ts, received_at"
# SQLite: one prepared statement run by executemany; its summed rowcount says whether every row was
# new (the usual case), else the batch is replayed row by row inside a savepoint (see _insert_readings).
SQLITE_INSERT = (
    f"INSERT INTO reading ({READING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id, seq, name) DO NOTHING"
)
# PostgreSQL: the whole batch as one array per column, one statement, RETURNING the new keys.
PG_INSERT = (
    f"INSERT INTO reading ({READING_COLUMNS}) "
    "SELECT * FROM unnest(%b::varchar[], %b::bigint[], %b::varchar[], %b::varchar[], "
    "%b::float8[], %b::timestamptz[], %b::timestamptz[]) "
    "ON CONFLICT (device_id, seq, name) DO NOTHING RETURNING device_id, seq, name"
)
# Devices that sent only telemetry in a batch are updated without the ORM: last seen, lifecycle, and
# the watermark, which only goes up, also when two ingest workers commit for one device at once (the
# database takes the maximum, not the value this transaction read).
_SEEN = "last_seen = {ph}, lifecycle = CASE WHEN lifecycle = 'provisioned' THEN 'active' ELSE lifecycle END"
_RAISE = "stored_seq = {greatest}(coalesce(stored_seq, -1), {ph})"
DEVICE_SEEN_SQL = {
    "sqlite": f"UPDATE device SET {_SEEN}, {_RAISE} WHERE id = ?".format(ph="?", greatest="max"),
    "postgresql": f"UPDATE device SET {_SEEN}, {_RAISE} WHERE id = %s".format(ph="%s", greatest="greatest"),
}
DEVICE_RAISE_SQL = {
    "sqlite": f"UPDATE device SET {_RAISE} WHERE id = ?".format(ph="?", greatest="max"),
    "postgresql": f"UPDATE device SET {_RAISE} WHERE id = %s".format(ph="%s", greatest="greatest"),
}


def store_batch(
    session: Session, batch: Sequence[Received], rules: PresenceRules | None = None, *, events: bool = True
) -> BatchResult:
    """Apply a batch in one transaction: readings (idempotent) with their rollups and channels,
    presence, health, acks, rejects. `events=False` skips building live-stream events (no hub)."""
    rules = rules or PresenceRules()
    result = BatchResult()
    conn = session.connection()
    dialect = conn.dialect.name
    # (device id read once per message: pydantic's private-attribute access is slow)
    owners = [None if isinstance(r.msg, contract.Reject) else r.msg.device_id for r in batch]
    accepted = set(owners) - {None}
    sites = dict(conn.execute(REGISTERED, {"ids": sorted(accepted)}).all()) if accepted else {}
    # Devices with a state, health or ack in the batch go through the ORM (presence, control);
    # devices that sent only telemetry, the hot path, are updated with one executemany.
    heavy_ids = {
        d for r, d in zip(batch, owners, strict=True) if d in sites and not isinstance(r.msg, Telemetry)
    }
    heavy = devices_by_id(session, heavy_ids) if heavy_ids else {}
    rows: list[tuple] = []
    rejects: list[contract.Reject] = []
    acks: list[tuple[Ack, datetime]] = []
    vitals: list[dict] = []  # health history rows
    top_seq: dict[str, int] = {}
    seen: dict[str, datetime] = {}
    births: set[str] = set()
    base: dict[float, datetime] = {}  # bt → its time: records without an offset share it
    for r, device_id in zip(batch, owners, strict=True):
        msg = r.msg
        if isinstance(msg, contract.Reject):
            rejects.append(msg)
            continue
        if device_id not in sites:
            rejects.append(
                contract.Reject(
                    RejectReason.unknown_device,
                    f"device {device_id!r} is not registered",
                    r.topic,
                    r.payload,
                    device_id,
                )
            )
            continue
        result.stored_messages += 1
        device = heavy.get(device_id)
        if device is None:
            seen[device_id] = r.at
        else:
            device.last_seen = r.at
            if device.lifecycle == Lifecycle.provisioned:
                device.lifecycle = Lifecycle.active
        if isinstance(msg, Telemetry):
            at, seq = r.at, msg.seq
            for rec in msg.e:
                ts = base.get(msg.bt) if not rec.t else None
                if ts is None:
                    ts = msg.time_of(rec)
                    if not rec.t:
                        base[msg.bt] = ts
                rows.append((device_id, seq, rec.n, rec.u, rec.v, ts, at))
            if seq > top_seq.get(device_id, -1):
                top_seq[device_id] = seq
        elif isinstance(msg, contract.State):
            presence.apply_state(device, msg, r.at, rules)
            if msg.state == "online":
                births.add(device_id)  # answered with `stored`: the watermark and the fleet's clock
        elif isinstance(msg, Ack):
            acks.append((msg, r.at))
        else:
            presence.apply_health(device, msg)
            vitals.append(health.row(device_id, msg, r.at))
    # Devices first, in id order, as every worker does (concurrent workers lock rows in one order):
    # the ORM's (their flush cannot overwrite the watermark: it writes only what it changed), then the
    # raw updates. On SQLite this first write also opens the transaction and takes the write lock.
    session.flush()
    t = rollups.db_time(dialect)
    if seen:
        conn.exec_driver_sql(DEVICE_SEEN_SQL[dialect], [(t(seen[d]), top_seq[d], d) for d in sorted(seen)])
    raised = sorted(d for d in top_seq if d not in seen)
    if raised:
        conn.exec_driver_sql(DEVICE_RAISE_SQL[dialect], [(top_seq[d], d) for d in raised])
    new = _insert_readings(conn, rows)
    result.stored_readings = len(new)
    if new:
        rollups.upsert(session, rollups.aggregate((n[0], n[2], n[4], n[5]) for n in new))
        presence.update_channels(session, new)
        if events:
            result.events = [_event(n, sites[n[0]]) for n in new]
    health.insert(session, vitals)
    for msg, at in acks:
        control.apply_ack(session, msg, heavy[msg.device_id], at)
    _insert_rejects(session, rejects)
    result.rejected.update(str(rej.reason) for rej in rejects)
    session.flush()
    if top_seq or births:
        result.watermarks = dict(conn.execute(WATERMARKS, {"ids": sorted(set(top_seq) | births)}).all())
    session.commit()
    return result


def _event(row: tuple, site_id: int) -> Event:
    device_id, seq, name, unit, value, ts, _ = row
    data = {"device": device_id, "seq": seq, "name": name, "unit": unit, "value": value, "ts": ts.isoformat()}
    return Event(device_id, site_id, data)


def _insert_readings(conn: Connection, rows: list[tuple]) -> list[tuple]:
    """INSERT … ON CONFLICT DO NOTHING; returns the rows that were new, each key once (a key repeated
    within the batch is inserted once, from its first row)."""
    if not rows:
        return []
    unique: dict[tuple, tuple] = {}
    for row in rows:
        unique.setdefault((row[0], row[1], row[2]), row)
    rows = list(unique.values())
    if conn.dialect.name == "postgresql":
        columns = [list(c) for c in zip(*rows, strict=True)]
        columns[4] = [float(v) for v in columns[4]]  # an int value (1 for 1.0) would make a mixed list
        fresh = {tuple(key) for key in conn.exec_driver_sql(PG_INSERT, tuple(columns))}
        return [r for r in rows if (r[0], r[1], r[2]) in fresh]
    t = rollups.db_time("sqlite")
    text: dict[datetime, str] = {}  # many rows share a time (a message's records, a batch's receipt)

    def fmt(dt: datetime) -> str:
        out = text.get(dt)
        if out is None:
            out = text[dt] = t(dt)
        return out

    bound = [(d, seq, n, u, v, fmt(ts), fmt(at)) for d, seq, n, u, v, ts, at in rows]
    if not conn.connection.driver_connection.in_transaction:
        conn.exec_driver_sql("BEGIN")  # else the savepoint would be the transaction, and RELEASE commit it
    conn.exec_driver_sql("SAVEPOINT ingest_readings")
    if conn.exec_driver_sql(SQLITE_INSERT, bound).rowcount == len(bound):
        conn.exec_driver_sql("RELEASE SAVEPOINT ingest_readings")
        return rows  # every row was new: the usual case
    # Some were stored already (a redelivery): undo, and replay row by row to learn which.
    conn.exec_driver_sql("ROLLBACK TO SAVEPOINT ingest_readings")
    conn.exec_driver_sql("RELEASE SAVEPOINT ingest_readings")
    cursor = conn.connection.driver_connection.cursor()
    try:
        new = []
        for row, params in zip(rows, bound, strict=True):
            cursor.execute(SQLITE_INSERT, params)
            if cursor.rowcount == 1:
                new.append(row)
        return new
    finally:
        cursor.close()


def _insert_rejects(session: Session, rejects: list[contract.Reject]) -> None:
    """Keep the rejects list bounded: trim the oldest as new ones come in."""
    if not rejects:
        return
    session.add_all(
        Reject(
            reason=str(rej.reason),
            topic=contract.db_text(rej.topic)[:256],
            detail=contract.db_text(rej.detail),
            payload=rej.excerpt,
        )
        for rej in rejects
    )
    session.flush()
    newest = session.exec(select(func.max(Reject.id))).one()
    session.exec(delete(Reject).where(col(Reject.id) <= newest - REJECTS_KEPT))


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def fleet_client(target: MqttTarget, client_id: str) -> aiomqtt.Client:
    """The fleet's MQTT connection: its broker account, a persistent session, TLS when mqtts://."""
    return aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=client_id,
        clean_session=False,
        keepalive=30,
        tls_context=ssl.create_default_context() if target.tls else None,
    )


class BrokerLost(ConnectionError):
    """The ingest's MQTT session ended (refused, lost, or timed out); `run` reconnects."""


class _Receiver(mqtt.Client):
    """paho-mqtt for ingest's hot path, driven by the asyncio loop (as aiomqtt drives it) but without
    aiomqtt's per-message wrapper, queue and futures: each message goes straight to `on_message`.

    Two paho 2.x internals are replaced, because they cost more than the rest of the receive path:
    `_sock_recv` serves paho's small reads (a packet is read as 1 + 1..4 + n bytes) from one large
    `recv`, and `_handle_on_message` calls `on_message` without the per-topic matcher and its locks
    (ingest registers no per-topic callbacks). `loop_read` then parses every packet already read."""

    READ_SIZE = 1 << 16
    PACKETS_PER_CALL = 1000  # then the event loop runs other work before reading on

    def __init__(self, client_id: str) -> None:
        super().__init__(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # PUBACK only once the message's batch is committed (see Ingest._commit)
        )
        self._buffer = b""
        self._at = 0

    @property
    def buffered(self) -> bool:
        """Bytes already read from the socket and not yet parsed (the socket may not be readable)."""
        return self._at < len(self._buffer)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._at >= len(self._buffer):
            self._buffer, self._at = super()._sock_recv(self.READ_SIZE), 0
        out = self._buffer[self._at : self._at + bufsize]
        self._at += len(out)
        return out

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        for _ in range(self.PACKETS_PER_CALL):
            if self._sock is None:
                return mqtt.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTT_ERR_AGAIN:
                break
        return mqtt.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        self.on_message(self, self._userdata, message)


class Ingest:
    """Subscribes to every device's up-topics on a persistent session and stores what arrives."""

    CONNECT_TIMEOUT = 10.0

    def __init__(
        self,
        engine: Engine,
        mqtt_url: str,
        client_id: str = "maille-ingest",
        batch_size: int = 500,
        batch_interval: float = 0.05,
        max_payload: int = contract.MAX_PAYLOAD,
        reconnect_interval: float = 1.0,
        *,
        topics: list[tuple[str, int]] = SUBSCRIPTIONS,
        clock: Callable[[], datetime] = utcnow,
        hub: Hub | None = None,
        rules: PresenceRules | None = None,
    ) -> None:
        self.engine = engine
        self.mqtt_url = mqtt_url
        self.target = parse_mqtt_url(mqtt_url)
        self.client_id = client_id
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.max_payload = max_payload
        self.reconnect_interval = reconnect_interval
        self.topics = topics
        self.clock = clock
        self.hub = hub
        self.rules = rules or PresenceRules()
        self.stats = IngestStats()
        self.subscribed = asyncio.Event()  # set while connected and subscribed

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, reconnecting to the broker (and waiting out the database) as needed."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (BrokerLost, OSError) as e:
                log.warning("MQTT %s: %s; reconnecting", mask_url(self.mqtt_url), e)
            except OperationalError as e:
                # Unacknowledged messages come back from the broker once we reconnect.
                log.warning("database unavailable (%s); reconnecting", e.orig)
            finally:
                self.subscribed.clear()
            await _sleep_unless(stop, self.reconnect_interval)

    async def _session(self, stop: asyncio.Event) -> None:
        """One MQTT session: connect, subscribe, then receive and store until `stop` or a failure."""
        loop = asyncio.get_running_loop()
        client = _Receiver(self.client_id)
        lost: asyncio.Future = loop.create_future()  # set with the reason the session ended
        connected: asyncio.Future = loop.create_future()
        subscribed: asyncio.Future = loop.create_future()
        wake: list[asyncio.Future] = [loop.create_future()]  # the pump's current wait, set by on_message
        pending: list[tuple[int, int, Received]] = []  # (mid, qos, message) received, not yet stored
        first_at = [0.0]  # loop time of the oldest pending message
        t = self.target

        def end(why: str) -> None:
            if not lost.done():
                lost.set_exception(BrokerLost(why))

        def read() -> None:
            try:
                rc = client.loop_read()
            except Exception as e:  # a broken socket: paho may raise instead of returning a code
                end(f"{type(e).__name__}: {e}")
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                end(mqtt.error_string(rc))
            elif client.buffered:  # more already read than one call parses: go on after other work
                loop.call_soon(read)

        def write() -> None:
            try:
                client.loop_write()
            except Exception as e:
                end(f"{type(e).__name__}: {e}")

        loop_thread = threading.get_ident()

        def in_loop(f: Callable, *args) -> None:
            """paho calls the socket callbacks from the connecting thread too (`connect` runs there)."""
            if threading.get_ident() == loop_thread:
                f(*args)
            else:
                loop.call_soon_threadsafe(f, *args)

        def on_socket_open(_c, _u, sock) -> None:
            in_loop(loop.add_reader, sock.fileno(), read)

        def on_socket_close(_c, _u, sock) -> None:
            if sock.fileno() >= 0:
                in_loop(loop.remove_reader, sock.fileno())
                in_loop(loop.remove_writer, sock.fileno())

        def on_socket_register_write(_c, _u, sock) -> None:
            in_loop(loop.add_writer, sock.fileno(), write)

        def on_socket_unregister_write(_c, _u, sock) -> None:
            in_loop(loop.remove_writer, sock.fileno())

        def on_connect(_c, _u, _flags, reason, _props) -> None:
            if not connected.done():
                connected.set_result(reason)

        def on_subscribe(_c, _u, _mid, reasons, _props) -> None:
            if not subscribed.done():
                subscribed.set_result(reasons)

        def on_disconnect(_c, _u, _flags, reason, _props) -> None:
            end(f"disconnected ({reason})")

        def on_message(_c, _u, message: mqtt.MQTTMessage) -> None:
            if stop.is_set():
                return  # not acknowledged: the broker sends it again to the next session
            if not pending:
                first_at[0] = loop.time()
            pending.append((message.mid, message.qos, self._decode(message)))
            self.stats.received += 1
            if (len(pending) == 1 or len(pending) >= self.batch_size) and not wake[0].done():
                wake[0].set_result(None)

        client.on_socket_open, client.on_socket_close = on_socket_open, on_socket_close
        client.on_socket_register_write = on_socket_register_write
        client.on_socket_unregister_write = on_socket_unregister_write
        client.on_connect, client.on_subscribe = on_connect, on_subscribe
        client.on_disconnect, client.on_message = on_disconnect, on_message
        if t.username is not None:
            client.username_pw_set(t.username, t.password)
        if t.tls:
            client.tls_set_context(ssl.create_default_context())
        misc: asyncio.Task | None = None
        try:
            connecting = asyncio.to_thread(client.connect, t.host, t.port, 30)
            await asyncio.wait_for(connecting, self.CONNECT_TIMEOUT)
            misc = asyncio.ensure_future(self._keepalive(client, end))
            reason = await self._until(connected, lost, "CONNACK")
            if reason.is_failure:
                raise BrokerLost(f"connection refused: {reason}")
            rc, _ = client.subscribe(self.topics)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerLost(f"subscribe: {mqtt.error_string(rc)}")
            refused = [r for r in await self._until(subscribed, lost, "SUBACK") if r.is_failure]
            if refused:
                raise BrokerLost(f"subscription refused: {refused}")
            log.info("ingest subscribed on %s as %s", mask_url(self.mqtt_url), self.client_id)
            self.subscribed.set()
            await self._pump(client, stop, lost, wake, pending, first_at)
        finally:
            if misc is not None:
                misc.cancel()
            if client.is_connected():
                # Acks queued by the last commit, then DISCONNECT; what is not acknowledged stays with
                # the broker (persistent session) for the next one.
                client.disconnect()
                with contextlib.suppress(OSError):
                    client.loop_write()
            sock = client.socket()
            if sock is not None:
                on_socket_close(client, None, sock)
                sock.close()
            if lost.done():
                lost.exception()  # the reason was told (or the session ended on purpose)

    async def _until(self, what: asyncio.Future, lost: asyncio.Future, name: str):
        done, _ = await asyncio.wait(
            [what, lost], timeout=self.CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if what in done:
            return what.result()
        if lost in done:
            lost.result()  # raises BrokerLost
        raise BrokerLost(f"no {name} within {self.CONNECT_TIMEOUT:g} s")

    @staticmethod
    async def _keepalive(client: _Receiver, end: Callable[[str], None]) -> None:
        """paho's housekeeping (PINGREQ, keepalive timeout) once a second, as its own loop would."""
        while True:
            await asyncio.sleep(1)
            rc = client.loop_misc()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                end(f"keepalive: {mqtt.error_string(rc)}")
                return

    async def _pump(
        self,
        client: _Receiver,
        stop: asyncio.Event,
        lost: asyncio.Future,
        wake: list[asyncio.Future],
        pending: list[tuple[int, int, Received]],
        first_at: list[float],
    ) -> None:
        """Store what `on_message` gathers in `pending`: a batch on size, on age, and on stop.

        Receiving and storing overlap: while one batch is stored (in a thread, committed, then its
        messages acknowledged in order), the next one is gathered. Only one batch is stored at a time,
        so batches commit and are acknowledged in the order they were received."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        storing: asyncio.Task | None = None  # the batch being stored, if any
        try:
            while True:
                if storing is not None and storing.done():
                    storing.result()  # a database error ends the session: the broker redelivers
                    storing = None
                if lost.done():
                    lost.result()  # raises: unacknowledged messages come back to the next session
                due = first_at[0] + self.batch_interval
                if pending and storing is None:
                    if len(pending) >= self.batch_size or loop.time() >= due or stop.is_set():
                        batch = pending[: self.batch_size]
                        del pending[: self.batch_size]
                        first_at[0] = loop.time() - self.batch_interval  # the rest is due at once
                        storing = asyncio.ensure_future(self._commit(client, batch))
                        continue
                if stop.is_set() and not pending and storing is None:
                    return
                if wake[0].done():
                    wake[0] = loop.create_future()
                # A batch being stored is waited for; else the next message, or the age of the pending.
                waits = [lost, storing if storing is not None else wake[0]]
                if not stopping.done():
                    waits.append(stopping)
                timeout = max(0.0, due - loop.time()) if pending and storing is None else None
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if storing is not None and not storing.done():
                # Let the batch in the database thread finish (its acks may fail: then it comes back).
                await asyncio.wait([storing])
            if storing is not None and storing.done() and not storing.cancelled() and storing.exception():
                log.debug("batch store failed while ingest stopped: %s", storing.exception())

    def _decode(self, message: mqtt.MQTTMessage) -> Received:
        topic = message._topic.decode("utf-8", "replace")  # bytes as received: `topic` raises on bad UTF-8
        payload = message.payload
        return Received(topic, payload, self.clock(), contract.parse(topic, payload, self.max_payload))

    async def _commit(self, client: _Receiver, batch: list[tuple[int, int, Received]]) -> None:
        result = await asyncio.to_thread(self._store, [received for _, _, received in batch])
        for mid, qos, _ in batch:
            if qos > 0:
                client.ack(mid, qos)
        self.stats.add(result, batch[0][2].at, self.clock())
        if self.hub and result.events:
            self.hub.publish(result.events)
        # One watermark per device per batch, published without waiting for each PUBACK (paho sends
        # them in the background; the next batch is not held up). A watermark lost to a disconnect
        # is replaced by the next one: it is retained and only ever goes up.
        now = int(time.time())
        for device_id, seq in result.watermarks.items():
            info = client.publish(
                contract.topic_of(device_id, "stored"),
                Stored(t=now, **({} if seq is None else {"seq": seq})).model_dump_json(exclude_none=True),
                qos=1,
                retain=True,
            )
            if info.rc != 0:
                log.debug("watermark for %s not sent: %s", device_id, info.rc)

    def _store(self, batch: list[Received]) -> BatchResult:
        with Session(self.engine) as session:
            return store_batch(session, batch, self.rules, events=self.hub is not None)
