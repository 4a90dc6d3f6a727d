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
from sqlalchemy import Engine, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from fleet import contract, control, presence, rollups
from fleet.contract import Ack, RejectReason, Stored, Telemetry, Uplink
from fleet.models import REJECTS_KEPT, Device, Lifecycle, Reading, Reject, utcnow
from fleet.presence import PresenceRules
from fleet.registry import devices_by_id
from fleet.settings import mask_url, parse_mqtt_url
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


INSERT_CHUNK = 500  # rows per INSERT statement, well under SQLite's bound-parameter limit
DIALECT_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


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


def store_batch(
    session: Session, batch: Sequence[Received], rules: PresenceRules | None = None
) -> BatchResult:
    """Apply a batch in one transaction: readings (idempotent) with their rollups and channels,
    presence, health, acks, rejects."""
    rules = rules or PresenceRules()
    result = BatchResult()
    devices = devices_by_id(session, {r.msg.device_id for r in batch if r.accepted})
    rows: list[dict] = []
    rejects: list[contract.Reject] = []
    acks: list[tuple[Ack, datetime]] = []
    top_seq: dict[str, int] = {}
    births: set[str] = set()
    for r in batch:
        msg = r.msg
        if not isinstance(msg, contract.Reject) and msg.device_id not in devices:
            msg = contract.Reject(
                RejectReason.unknown_device,
                f"device {msg.device_id!r} is not registered",
                r.topic,
                r.payload,
                msg.device_id,
            )
        if isinstance(msg, contract.Reject):
            rejects.append(msg)
            continue
        device = devices[msg.device_id]
        device.last_seen = r.at
        if device.lifecycle == Lifecycle.provisioned:
            device.lifecycle = Lifecycle.active
        result.stored_messages += 1
        if isinstance(msg, Telemetry):
            rows.extend(_reading_rows(msg, r.at))
            top_seq[device.id] = max(top_seq.get(device.id, -1), msg.seq)
        elif isinstance(msg, contract.State):
            presence.apply_state(device, msg, r.at, rules)
            if msg.state == "online":
                births.add(device.id)  # answered with `stored`: the watermark and the fleet's clock
        elif isinstance(msg, Ack):
            acks.append((msg, r.at))
        else:
            presence.apply_health(device, msg)
    new = _insert_readings(session, rows)
    result.stored_readings = len(new)
    if new:
        rollups.upsert(
            session, rollups.aggregate((n["device_id"], n["name"], n["value"], n["ts"]) for n in new)
        )
        presence.update_channels(session, new)
        result.events = [_event(n, devices[n["device_id"]].site_id) for n in new]
    for msg, at in acks:
        control.apply_ack(session, msg, devices[msg.device_id], at)
    _raise_watermarks(session, top_seq)
    _insert_rejects(session, rejects)
    result.rejected.update(str(rej.reason) for rej in rejects)
    session.flush()
    if top_seq or births:
        result.watermarks = dict(
            session.exec(
                select(Device.id, Device.stored_seq).where(col(Device.id).in_(set(top_seq) | births))
            ).all()
        )
    session.commit()
    return result


def _reading_rows(msg: Telemetry, at: datetime) -> list[dict]:
    return [
        {
            "device_id": msg.device_id,
            "seq": msg.seq,
            "name": rec.n,
            "unit": rec.u,
            "value": rec.v,
            "ts": msg.time_of(rec),
            "received_at": at,
        }
        for rec in msg.e
    ]


def _event(row: dict, site_id: int) -> Event:
    data = {
        "device": row["device_id"],
        "seq": row["seq"],
        "name": row["name"],
        "unit": row["unit"],
        "value": row["value"],
        "ts": row["ts"].isoformat(),
    }
    return Event(row["device_id"], site_id, data)


def _raise_watermarks(session: Session, top_seq: dict[str, int]) -> None:
    """stored_seq only goes up, also when two ingest workers commit for one device at once: the
    database takes the maximum, not the value this transaction read."""
    greatest = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest
    for device_id in sorted(top_seq):
        session.exec(
            update(Device)
            .where(Device.id == device_id)
            .values(stored_seq=greatest(func.coalesce(Device.stored_seq, -1), top_seq[device_id]))
            .execution_options(synchronize_session=False)
        )


def _insert_readings(session: Session, rows: list[dict]) -> list[dict]:
    """INSERT … ON CONFLICT DO NOTHING; returns the rows that were new (RETURNING gives only those,
    where rowcount is not reliable across drivers)."""
    insert = DIALECT_INSERT[session.get_bind().dialect.name]
    new: list[dict] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        stmt = (
            insert(Reading)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["device_id", "seq", "name"])
            .returning(Reading.device_id, Reading.seq, Reading.name)
        )
        fresh = {tuple(key) for key in session.exec(stmt).all()}
        for r in chunk:  # a key repeated within the batch was inserted once, from its first row
            key = (r["device_id"], r["seq"], r["name"])
            if key in fresh:
                fresh.discard(key)
                new.append(r)
    return new


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
        client = aiomqtt.Client(
            self.target.host,
            self.target.port,
            username=self.target.username,
            password=self.target.password,
            identifier=self.client_id,
            clean_session=False,
            keepalive=30,
            tls_context=ssl.create_default_context() if self.target.tls else None,
        )
        # aiomqtt 2.x has no public switch for paho's manual acknowledgement, so we reach its paho
        # client (`_client`). With it, PUBACK goes out only after the batch holding the message is
        # committed (see `_commit`); without it, paho would acknowledge on receipt and a crash before
        # the commit would lose the message. If aiomqtt renames `_client`, this fails loudly here.
        client._client.manual_ack_set(True)
        return client

    async def _pump(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Gather messages into batches; commit on size, on age, and on stop."""
        loop = asyncio.get_running_loop()
        messages = aiter(client.messages)
        incoming = asyncio.ensure_future(anext(messages))
        stopping = asyncio.ensure_future(stop.wait())
        batch: list[tuple[aiomqtt.Message, Received]] = []
        deadline = 0.0
        try:
            while True:
                timeout = max(0.0, deadline - loop.time()) if batch else None
                await asyncio.wait((incoming, stopping), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if incoming.done():
                    message = incoming.result()  # raises MqttError once disconnected
                    incoming = asyncio.ensure_future(anext(messages))
                    if not batch:
                        deadline = loop.time() + self.batch_interval
                    batch.append((message, self._decode(message)))
                    self.stats.received += 1
                full = len(batch) >= self.batch_size or loop.time() >= deadline
                if batch and (full or stopping.done()):
                    await self._commit(client, batch)
                    batch = []
                if stopping.done():
                    return
        finally:
            incoming.cancel()
            stopping.cancel()

    def _decode(self, message: aiomqtt.Message) -> Received:
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        topic = message.topic.value
        return Received(topic, payload, self.clock(), contract.parse(topic, payload, self.max_payload))

    async def _commit(self, client: aiomqtt.Client, batch: list[tuple[aiomqtt.Message, Received]]) -> None:
        result = await asyncio.to_thread(self._store, [received for _, received in batch])
        for message, _ in batch:
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)
        self.stats.add(result, batch[0][1].at, self.clock())
        if self.hub and result.events:
            self.hub.publish(result.events)
        now = int(time.time())
        await asyncio.gather(
            *(
                client.publish(
                    contract.topic_of(device_id, "stored"),
                    Stored(t=now, **({} if seq is None else {"seq": seq})).model_dump_json(exclude_none=True),
                    qos=1,
                    retain=True,
                )
                for device_id, seq in result.watermarks.items()
            )
        )

    def _store(self, batch: list[Received]) -> BatchResult:
        with Session(self.engine) as session:
            return store_batch(session, batch, self.rules)
