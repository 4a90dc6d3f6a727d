"""Ingest: the fleet's MQTT subscriber that stores telemetry once, tracks presence and publishes watermarks.

Messages are taken in batches; a batch is committed in one transaction, then its QoS 1 messages are
acknowledged to the broker, then each device that sent telemetry gets its `stored` watermark. A
crash anywhere before the commit loses nothing: the persistent session makes the broker redeliver,
and readings are unique on (device, seq, name), so a redelivery is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import aiomqtt
from sqlalchemy import Connection, Engine, bindparam, delete, func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from fleet import contract, control, presence, rollups
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


@dataclass(frozen=True)
class Received:
    """One message as ingest got it: the raw bytes (for reject excerpts) and what they decoded to."""

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
    "SELECT * FROM unnest(%s::varchar[], %s::bigint[], %s::varchar[], %s::varchar[], "
    "%s::float8[], %s::timestamptz[], %s::timestamptz[]) "
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
        Reject(reason=str(rej.reason), topic=rej.topic[:256], detail=rej.detail, payload=rej.excerpt)
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


class Ingest:
    """Subscribes to every device's up-topics on a persistent session and stores what arrives."""

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
                async with self._client() as client:
                    await client.subscribe(self.topics)
                    log.info("ingest subscribed on %s as %s", mask_url(self.mqtt_url), self.client_id)
                    self.subscribed.set()
                    await self._pump(client, stop)
            except aiomqtt.MqttError as e:
                log.warning("MQTT %s: %s; reconnecting", mask_url(self.mqtt_url), e)
            except OperationalError as e:
                # Unacknowledged messages come back from the broker once we reconnect.
                log.warning("database unavailable (%s); reconnecting", e.orig)
            finally:
                self.subscribed.clear()
            await _sleep_unless(stop, self.reconnect_interval)

    def _client(self) -> aiomqtt.Client:
        client = fleet_client(self.target, self.client_id)
        # aiomqtt 2.x has no public switch for paho's manual acknowledgement, so we reach its paho
        # client (`_client`). With it, PUBACK goes out only after the batch holding the message is
        # committed (see `_commit`); without it, paho would acknowledge on receipt and a crash before
        # the commit would lose the message. If aiomqtt renames `_client`, this fails loudly here.
        client._client.manual_ack_set(True)
        return client

    async def _pump(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Gather messages into batches; commit on size, on age, and on stop.

        Receiving and storing overlap: while one batch is stored (in a thread, committed, then its
        messages acknowledged in order), the next one is gathered. Only one batch is stored at a time,
        so batches commit and are acknowledged in the order they were received."""
        loop = asyncio.get_running_loop()
        # aiomqtt's queue of received messages (private, like `_client` below): what is already
        # queued is taken without a task and an `asyncio.wait` per message; the iterator is awaited
        # only when the queue is empty (it also raises MqttError once disconnected), and while it is
        # awaited the queue is left to it, so messages keep their order.
        queue: asyncio.Queue[aiomqtt.Message] = client._queue
        messages = aiter(client.messages)
        incoming: asyncio.Future | None = None
        stopping = asyncio.ensure_future(stop.wait())
        storing: asyncio.Task | None = None  # the batch being stored, if any
        batch: list[tuple[aiomqtt.Message, Received]] = []
        deadline = 0.0

        def take(message: aiomqtt.Message) -> None:
            nonlocal deadline
            if not batch:
                deadline = loop.time() + self.batch_interval
            batch.append((message, self._decode(message)))
            self.stats.received += 1

        try:
            while True:
                if incoming is not None and incoming.done():
                    message = incoming.result()  # raises MqttError once disconnected
                    incoming = None
                    take(message)
                # Not while `incoming` is pending: it may hold a message already taken off the queue,
                # which must not be overtaken by the ones behind it.
                while incoming is None and len(batch) < self.batch_size and not queue.empty():
                    if stopping.done():
                        break
                    take(queue.get_nowait())
                if storing is not None and storing.done():
                    storing.result()  # a database error ends the session: the broker redelivers
                    storing = None
                full = len(batch) >= self.batch_size
                if batch and storing is None and (full or loop.time() >= deadline or stopping.done()):
                    storing = asyncio.ensure_future(self._commit(client, batch))
                    batch = []
                    continue
                if stopping.done() and not batch and storing is None:
                    return
                waits = [stopping] if not stopping.done() else []
                if storing is not None:
                    waits.append(storing)
                if not full and not stopping.done():  # a full batch waits for the one being stored
                    if incoming is None:
                        incoming = asyncio.ensure_future(anext(messages))
                    waits.append(incoming)
                timeout = max(0.0, deadline - loop.time()) if batch and storing is None else None
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if incoming is not None:
                incoming.cancel()
            stopping.cancel()
            if storing is not None and not storing.done():
                # Let the batch in the database thread finish (its acks may fail: then it comes back).
                await asyncio.wait([storing])
            if storing is not None and storing.done() and not storing.cancelled() and storing.exception():
                log.debug("batch store failed while ingest stopped: %s", storing.exception())

    def _decode(self, message: aiomqtt.Message) -> Received:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        topic = message.topic.value
        return Received(topic, payload, self.clock(), contract.parse(topic, payload, self.max_payload))

    async def _commit(self, client: aiomqtt.Client, batch: list[tuple[aiomqtt.Message, Received]]) -> None:
        result = await asyncio.to_thread(self._store, [received for _, received in batch])
        paho = client._client
        for message, _ in batch:
            if message.qos > 0:
                paho.ack(message.mid, message.qos)
        self.stats.add(result, batch[0][1].at, self.clock())
        if self.hub and result.events:
            self.hub.publish(result.events)
        # One watermark per device per batch, published without waiting for each PUBACK (paho sends
        # them in the background; the next batch is not held up). A watermark lost to a disconnect
        # is replaced by the next one: it is retained and only ever goes up.
        now = int(time.time())
        for device_id, seq in result.watermarks.items():
            info = paho.publish(
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
