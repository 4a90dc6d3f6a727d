"""The node ↔ fleet contract (docs/contract.md) as strict pydantic models, and the decoder of one message.

The models mirror docs/schemas/*.json field for field; tests hold them to the same fixtures as the
JSON Schemas, so the parser and the schemas accept and refuse the same payloads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TOPIC_PREFIX = "maille/v1/"
DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,31}$")
UP_CHANNELS = ("telemetry", "state", "health", "ack")
MAX_PAYLOAD = 4096
EXCERPT = 256
MAX_SEQ = 2**53 - 1


class RejectReason(StrEnum):
    bad_topic = "bad_topic"
    oversized = "oversized"
    bad_json = "bad_json"
    invalid = "invalid"
    unknown_device = "unknown_device"


def _integral(value: Any) -> Any:
    """JSON Schema counts 1.0 as an integer; so do we (the schemas and this parser must agree)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral)]
Count = Annotated[Int, Field(ge=0)]
Mode = Literal["normal", "safe"]


class _Payload(BaseModel):
    """Strict JSON object: no extra keys, no coercion (a "1" is not a seq, a true is not a number),
    and no null unless the schema's type lists it (optional fields are left out, not nulled)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _null_only_where_allowed(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name not in cls.NULLABLE:
            raise ValueError("Input should not be null (leave the field out)")
        return value


class _Uplink(_Payload):
    """A payload a device sent; `device_id` comes from the topic, never from the payload."""

    _device_id: str = PrivateAttr(default="")

    @property
    def device_id(self) -> str:
        return self._device_id

    @classmethod
    def received(cls, device_id: str, data: dict) -> Self:
        msg = cls.model_validate(data)
        msg._device_id = device_id
        return msg


class Record(_Payload):
    n: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
    u: Annotated[str, Field(max_length=16)] | None = None
    v: float
    t: float | None = None


class Telemetry(_Uplink):
    seq: Annotated[Int, Field(ge=0, le=MAX_SEQ)]
    bt: Annotated[float, Field(ge=0)]
    e: Annotated[list[Record], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _times_in_range(self) -> Self:
        # Beyond the schema: a time the database cannot hold is refused here rather than at insert.
        for i, record in enumerate(self.e):
            try:
                self.time_of(record)
            except (OverflowError, OSError, ValueError):
                raise ValueError(f"e[{i}]: time bt+t is out of range") from None
        return self

    def time_of(self, record: Record) -> datetime:
        return datetime.fromtimestamp(self.bt + (record.t or 0.0), UTC)


class State(_Uplink):
    state: Literal["online", "offline"]
    fw: Annotated[str, Field(max_length=32)] | None = None
    board: Annotated[str, Field(max_length=32)] | None = None
    boot: Count | None = None
    reset: Annotated[str, Field(max_length=24)] | None = None
    ts: float | None = None
    reason: Annotated[str, Field(max_length=64)] | None = None
    mode: Mode | None = None
    config: Count | None = None
    sleep: Annotated[Int, Field(ge=1, le=7 * 86400)] | None = None


class Health(_Uplink):
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"heap_free", "heap_min", "rssi"})

    uptime: Count
    heap_free: Count | None  # required, null where the runtime has no bounded heap (CPython)
    heap_min: Count | None = None
    reset: Annotated[str, Field(max_length=24)] | None = None
    rssi: Int | None = None
    reconnects: Count | None = None
    outbox: Count | None = None
    faults: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None = None
    outbox_flash: Count | None = None
    outbox_dropped: Count | None = None
    flash_writes: Count | None = None
    loop_lag_ms: Count | None = None
    mode: Mode | None = None
    boot: Count | None = None


class Ack(_Uplink):
    """The node's answer to a command (`id` = the command's id) or a config (`id` = `config-<v>`, or
    `config` when the message could not even be read)."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset({"result"})

    id: Annotated[str, Field(max_length=48)]
    cmd: Annotated[str, Field(max_length=32)] | None = None
    ok: bool
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=200)] | None = None

    @property
    def config_version(self) -> int | None:
        """The config version this ack is about, if it is about one."""
        prefix, _, version = self.id.partition("-")
        return int(version) if prefix == "config" and version.isdigit() else None


class Stored(_Payload):
    """The fleet's watermark for one device (fleet → node, retained), with the fleet's clock `t` so a
    node without NTP can set its own."""

    seq: Count | None = None  # absent until the fleet has stored something from this device
    t: Int | None = None


class SensorSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    type: str


class ConfigSettings(_Payload):
    """The settings a node accepts remotely (config.schema.json `settings`); all optional."""

    sample_interval_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    health_interval_s: Annotated[float, Field(ge=1, le=86400)] | None = None
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    sensors: Annotated[list[SensorSpec], Field(max_length=16)] | None = None
    calibration: dict[str, float] | None = None
    thresholds: dict[str, Annotated[float, Field(ge=0)]] | None = None


class Config(_Payload):
    """fleet → node, retained: the desired settings and their version."""

    version: Annotated[Int, Field(ge=1)]
    settings: ConfigSettings


CommandName = Literal["reboot", "identify", "co2_recalibrate", "time_sync", "flush_outbox", "log_level"]


class Cmd(_Payload):
    """fleet → node, not retained: one command; the node acks it with the same id."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
    cmd: CommandName
    args: dict[str, Any] | None = None
    expires: Int | None = None


OtaState = Literal[
    "offered",
    "downloading",
    "verifying",
    "installed",
    "rebooting",
    "trial",
    "confirmed",
    "rolled_back",
    "failed",
]
OTA_STATUS = "ota/status"  # not in UP_CHANNELS: the rollout engine takes it (fleet/rollouts.py)
VERSION_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$"


class OtaStatus(_Uplink):
    """Where an update stands on the node (ota_status.schema.json)."""

    state: OtaState
    version: Annotated[str, Field(max_length=32)]
    running: Annotated[str, Field(max_length=32)]
    slot: Literal["a", "b"] | None = None
    progress: Annotated[Int, Field(ge=0, le=100)] | None = None
    reason: Annotated[str, Field(max_length=200)] | None = None
    ts: Int | None = None

    @model_validator(mode="after")
    def _conditional_fields(self) -> Self:
        if self.state in ("failed", "rolled_back") and self.reason is None:
            raise ValueError(f"reason: required when state is {self.state}")
        if self.state == "downloading" and self.progress is None:
            raise ValueError("progress: required when state is downloading")
        return self


class Ota(_Payload):
    """fleet → node, retained: the release the fleet wants the node to run (ota.schema.json)."""

    version: Annotated[str, Field(pattern=VERSION_PATTERN)]
    url: Annotated[str, Field(pattern=r"^https?://[^/]+/", max_length=512)]
    rollback: bool | None = None
    attempt: Count | None = None


MODELS: dict[str, type[_Uplink]] = {"telemetry": Telemetry, "state": State, "health": Health, "ack": Ack}


@dataclass(frozen=True)
class Reject:
    """A message the fleet refuses, with the reason counted and a detail an operator can act on."""

    reason: RejectReason
    detail: str
    topic: str
    payload: bytes
    device_id: str | None = None

    @property
    def excerpt(self) -> str:
        """At most 256 characters of the payload, printable and safe for any database text column."""
        return db_text(self.payload[:EXCERPT].decode("utf-8", "backslashreplace"))[:EXCERPT]


def db_text(text: str) -> str:
    """Text any database takes: PostgreSQL refuses NUL characters, which a hostile payload's keys
    (quoted in a reject's detail) can hold."""
    return text.replace("\x00", "\\x00")


Uplink = Telemetry | State | Health | Ack


def topic_of(device_id: str, channel: str) -> str:
    return f"{TOPIC_PREFIX}{device_id}/{channel}"


def split_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, channel) of an up-topic this contract version knows, else None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    device_id, _, channel = topic[len(TOPIC_PREFIX) :].partition("/")
    if not DEVICE_ID.match(device_id) or channel not in UP_CHANNELS:
        return None
    return device_id, channel


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def describe_errors(errors: Sequence[Mapping[str, Any]], root: str = "") -> str:
    """'telemetry.e[0].v: Input should be a valid number' for each pydantic error, joined by '; '."""
    parts = []
    for err in errors:
        path = root
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else f".{loc}" if path else str(loc)
        parts.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)[:512]


def parse(topic: str, payload: bytes, max_payload: int = MAX_PAYLOAD) -> Uplink | Reject:
    """Decode one MQTT message on an up-topic into its model, or say precisely why it is refused."""
    where = split_topic(topic)
    if where is None:
        return Reject(
            RejectReason.bad_topic,
            f"not a maille/v1/<device_id>/<{'|'.join(UP_CHANNELS)}> topic",
            topic,
            payload,
        )
    device_id, channel = where
    return _decode(topic, payload, device_id, MODELS[channel], channel, max_payload)


def _decode(topic: str, payload: bytes, device_id: str, model, name: str, max_payload: int):
    """Size, JSON and schema checks of one message already routed to `model` (named `name`)."""

    def reject(reason: RejectReason, detail: str) -> Reject:
        return Reject(reason, detail, topic, payload, device_id)

    if len(payload) > max_payload:
        return reject(RejectReason.oversized, f"{len(payload)} bytes, limit {max_payload}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        return reject(RejectReason.bad_json, f"{type(e).__name__}: {e}"[:512])
    if not isinstance(data, dict):
        return reject(RejectReason.bad_json, f"expected a JSON object, got {type(data).__name__}")
    if model is Telemetry:
        usual = _usual_telemetry(device_id, data)
        if usual is not None:
            return usual
    try:
        return model.received(device_id, data)
    except ValidationError as e:
        return reject(RejectReason.invalid, describe_errors(e.errors(), name))


# The fast path for the one message that arrives thousands of times a second. It accepts only what the
# model accepts (tests/fleet/test_contract.py holds both to the same payloads) and hands anything else,
# valid or not, to the model, so every rejection keeps the model's reason and detail.
_TELEMETRY_KEYS = frozenset(("seq", "bt", "e"))
_RECORD_KEYS = frozenset(("n", "u", "v", "t"))
_NAME = re.compile(r"[a-z0-9_]{1,32}")
_LAST_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds
_NUMBER = (int, float)  # exact types: a bool is an int subclass, and no JSON number


def _usual_telemetry(device_id: str, data: dict) -> Telemetry | None:
    """`data` as a Telemetry when it has the usual shape (plain type and range checks), else None."""
    seq, bt, e = data.get("seq"), data.get("bt"), data.get("e")
    if not (
        data.keys() == _TELEMETRY_KEYS
        and type(seq) is int
        and 0 <= seq <= MAX_SEQ
        and type(bt) in _NUMBER
        and 0 <= bt < _LAST_TIME
        and type(e) is list
        and 1 <= len(e) <= 64
    ):
        return None
    records = []
    for r in e:
        if type(r) is not dict or not r.keys() <= _RECORD_KEYS:
            return None
        n, u, v, t = r.get("n"), r.get("u"), r.get("v"), r.get("t", 0)
        if not (
            type(n) is str
            and _NAME.fullmatch(n)
            and (type(u) is str and len(u) <= 16 or u is None and "u" not in r)
            and type(v) in _NUMBER
            and -1e308 < v < 1e308
            and type(t) in _NUMBER
            and 0 <= bt + t < _LAST_TIME
        ):
            return None
        fields = {"n": n, "u": u, "v": float(v), "t": float(t) if "t" in r else None}
        records.append(_built(Record, fields, set(r)))
    return _built(Telemetry, {"seq": seq, "bt": float(bt), "e": records}, set(_TELEMETRY_KEYS), device_id)


def _built(model: type[_Payload], fields: dict, fields_set: set[str], device_id: str | None = None):
    """An instance of `model` from values already checked, set as pydantic's `model_construct` sets
    them, without its per-field overhead."""
    obj = object.__new__(model)
    object.__setattr__(obj, "__dict__", fields)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", None)
    private = None if device_id is None else {"_device_id": device_id}
    object.__setattr__(obj, "__pydantic_private__", private)
    return obj


def parse_ota_status(topic: str, payload: bytes, max_payload: int = MAX_PAYLOAD) -> OtaStatus | Reject:
    """Decode one `maille/v1/<id>/ota/status` message, or say why it is refused."""
    device_id = topic[len(TOPIC_PREFIX) :].partition("/")[0] if topic.startswith(TOPIC_PREFIX) else ""
    if not DEVICE_ID.match(device_id) or topic != topic_of(device_id, OTA_STATUS):
        detail = f"not a maille/v1/<device_id>/{OTA_STATUS} topic"
        return Reject(RejectReason.bad_topic, detail, topic, payload)
    return _decode(topic, payload, device_id, OtaStatus, "ota_status", max_payload)
