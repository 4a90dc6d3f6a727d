"""The fleet's decoder against the shared fixtures and the JSON Schemas: both must agree."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.contract import (
    Ack,
    Cmd,
    Config,
    Health,
    Reject,
    RejectReason,
    State,
    Stored,
    Telemetry,
    describe_errors,
    parse,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SCHEMAS = {
    p.name.split(".")[0]: jsonschema.Draft202012Validator(json.loads(p.read_text()))
    for p in (ROOT / "docs" / "schemas").glob("*.json")
}
UP = {"telemetry": Telemetry, "state": State, "health": Health, "ack": Ack}
DOWN = {"stored": Stored, "config": Config, "cmd": Cmd}
# Channels the fleet decodes (up) or encodes (down); other fixtures belong to later contract pages.
KNOWN = {*UP, *DOWN}


def channel_of(path: Path) -> str:
    return path.name.split("-")[0]


def fixtures(folder: str) -> list[Path]:
    return [p for p in sorted((FIXTURES / folder).glob("*.json")) if channel_of(p) in KNOWN]


VALID = fixtures("contract")
INVALID = fixtures("contract-invalid")


def schema_accepts(channel: str, data) -> bool:
    return SCHEMAS[channel].is_valid(data)


def test_every_channel_has_fixtures_both_ways():
    assert {channel_of(p) for p in VALID} == KNOWN <= set(SCHEMAS)
    assert {channel_of(p) for p in INVALID} >= set(UP)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixture_decodes_to_its_values_and_matches_schema(path):
    raw = path.read_bytes()
    data = json.loads(raw)
    channel = channel_of(path)
    assert schema_accepts(channel, data)
    if channel in DOWN:
        assert DOWN[channel].model_validate(data).model_dump(exclude_unset=True, mode="json") == data
        return
    msg = parse(f"maille/v1/bliiida-2-14-a/{channel}", raw)
    assert isinstance(msg, UP[channel])
    assert msg.device_id == "bliiida-2-14-a"
    assert msg.model_dump(exclude_unset=True) == data


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_fixture_is_refused_by_parser_and_schema(path):
    raw = path.read_bytes()
    channel = channel_of(path)
    assert not schema_accepts(channel, json.loads(raw))
    msg = parse(f"maille/v1/bliiida-2-14-a/{channel}", raw)
    assert isinstance(msg, Reject)
    assert msg.reason == RejectReason.invalid
    assert msg.detail.startswith(f"{channel}.")


def test_ack_names_the_config_version_it_answers():
    assert parse("maille/v1/dev-1/ack", b'{"id": "config-4", "ok": true}').config_version == 4
    assert parse("maille/v1/dev-1/ack", b'{"id": "config", "ok": false, "error": "x"}').config_version is None
    assert (
        parse("maille/v1/dev-1/ack", b'{"id": "c-1", "cmd": "identify", "ok": true}').config_version is None
    )


def test_telemetry_values_and_times():
    msg = parse(
        "maille/v1/dev-1/telemetry",
        b'{"seq": 7, "bt": 1700000000, "e": [{"n": "co2", "u": "ppm", "v": 612, "t": 1.5}]}',
    )
    assert isinstance(msg, Telemetry)
    assert (msg.seq, msg.e[0].n, msg.e[0].u, msg.e[0].v) == (7, "co2", "ppm", 612.0)
    assert msg.time_of(msg.e[0]).isoformat() == "2023-11-14T22:13:21.500000+00:00"


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        (
            "maille/v1/dev-1/telemetry",
            b'{"seq": 1, "bt": 1, "e": [{"n": "t", "v": "hot"}]}',
            RejectReason.invalid,
            "telemetry.e[0].v: Input should be a valid number",
        ),
        (
            "maille/v1/dev-1/telemetry",
            b'{"seq": 1, "bt": 1, "e": [{"n": "t", "v": true}]}',
            RejectReason.invalid,
            "telemetry.e[0].v: Input should be a valid number",
        ),
        (
            "maille/v1/dev-1/telemetry",
            b'{"seq": 1.5, "bt": 1, "e": [{"n": "t", "v": 1}]}',
            RejectReason.invalid,
            "telemetry.seq: Input should be a valid integer",
        ),
        (
            "maille/v1/dev-1/state",
            b'{"state": "online", "colour": "red"}',
            RejectReason.invalid,
            "state.colour: Extra inputs are not permitted",
        ),
        (
            "maille/v1/dev-1/health",
            b'{"uptime": 1, "heap_free": 2, "faults": ["x"' + b', "y"' * 40 + b"]}",
            RejectReason.invalid,
            "health.faults: List should have at most 32 items",
        ),
        (
            "maille/v1/dev-1/telemetry",
            b'{"seq": 1, "bt": 1e300, "e": [{"n": "t", "v": 1}]}',
            RejectReason.invalid,
            "telemetry: e[0]: time bt+t is out of range",
        ),
        (
            "maille/v1/dev-1/telemetry",
            b'{"seq": 1, "bt": NaN, "e": [{"n": "t", "v": 1}]}',
            RejectReason.bad_json,
            "NaN is not JSON",
        ),
        ("maille/v1/dev-1/telemetry", b"\xff\xfe", RejectReason.bad_json, "UnicodeDecodeError"),
        ("maille/v1/dev-1/telemetry", b"[1, 2]", RejectReason.bad_json, "expected a JSON object, got list"),
        (
            "maille/v1/dev-1/telemetry",
            b"{" + b" " * 5000 + b"}",
            RejectReason.oversized,
            "5002 bytes, limit 4096",
        ),
        ("maille/v1/dev-1/stored", b'{"seq": 1}', RejectReason.bad_topic, "not a maille/v1/"),
        ("maille/v1/Dev_1/telemetry", b"{}", RejectReason.bad_topic, "not a maille/v1/"),
        ("maille/v2/dev-1/telemetry", b"{}", RejectReason.bad_topic, "not a maille/v1/"),
        ("maille/v1/dev-1/telemetry/x", b"{}", RejectReason.bad_topic, "not a maille/v1/"),
    ],
)
def test_rejects_say_why(topic, payload, reason, detail):
    msg = parse(topic, payload)
    assert isinstance(msg, Reject)
    assert msg.reason == reason
    assert detail in msg.detail
    assert len(msg.excerpt) <= 256


def test_reject_excerpt_is_safe_text():
    msg = parse("maille/v1/dev-1/telemetry", b"\x00\xff" + b"a" * 1000)
    assert isinstance(msg, Reject)
    assert "\x00" not in msg.excerpt and len(msg.excerpt) == 256


def test_oversized_limit_is_a_parameter():
    assert (
        parse("maille/v1/dev-1/state", b'{"state": "offline"}', max_payload=10).reason
        == RejectReason.oversized
    )


def test_describe_errors_paths():
    errors = [{"loc": ("query", "since"), "msg": "Input should be a valid datetime"}]
    assert describe_errors(errors) == "query.since: Input should be a valid datetime"


def test_integral_floats_are_integers_as_in_json_schema():
    data = {"seq": 3.0, "bt": 1, "e": [{"n": "t", "v": 1}]}
    assert schema_accepts("telemetry", data)
    msg = parse("maille/v1/dev-1/telemetry", json.dumps(data).encode())
    assert isinstance(msg, Telemetry) and msg.seq == 3 and isinstance(msg.seq, int)


def assert_agree(channel: str, payload) -> None:
    msg = parse(f"maille/v1/dev-1/{channel}", json.dumps(payload).encode(), max_payload=1 << 20)
    if isinstance(msg, Reject) and "out of range" in msg.detail:
        return  # beyond the schema on purpose: a time no datetime can hold is refused
    assert isinstance(msg, UP[channel]) == schema_accepts(channel, payload), getattr(msg, "detail", msg)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
numbers = st.integers(-(2**31), 2**31) | st.floats(-1e10, 1e10)


def mostly(good, bad=json_values):
    """Nine in ten well-formed, so accepted payloads are common enough to compare both ways."""
    return st.integers(0, 9).flatmap(lambda i: good if i else bad)


names = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)
record = st.fixed_dictionaries(
    {"n": mostly(names, st.sampled_from(["a" * 33, "T", "a b", ""])), "v": mostly(numbers)},
    optional={"u": mostly(st.text("Cel%RH", max_size=16), st.just("x" * 17)), "t": mostly(numbers)},
)
records = mostly(record, st.builds(lambda r, v: {**r, "zz": v}, record, json_values))
telemetry_like = st.fixed_dictionaries(
    {
        "seq": mostly(st.integers(0, 2**53 - 1), st.sampled_from([2**53, -1, 1.0, 1.5, "1", True])),
        "bt": mostly(st.integers(0, 2**31) | st.floats(0, 2e9), numbers | json_values),
        "e": mostly(
            st.lists(records, min_size=1, max_size=3),
            st.sampled_from([[], [{"n": "t", "v": 1}] * 64, [{"n": "t", "v": 1}] * 65]) | json_values,
        ),
    },
)
telemetry_like = mostly(
    telemetry_like, st.builds(lambda d, v: {**d, "extra": v}, telemetry_like, json_values)
)


@settings(max_examples=200, deadline=None, database=None)
@given(telemetry_like)
def test_parser_and_schema_agree_on_telemetry_like_payloads(data):
    assert_agree("telemetry", data)


edge_values = st.sampled_from([None, True, False, 0, -1, 1.0, 1.5, "", "x" * 65, [], {}, [""], 2**53])


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from([p for p in VALID if channel_of(p) in UP]), st.data())
def test_parser_and_schema_agree_on_mutated_fixtures(path, data):
    channel = channel_of(path)
    payload = json.loads(path.read_bytes())
    key = data.draw(st.sampled_from([*sorted(SCHEMAS[channel].schema["properties"]), "other"]))
    if data.draw(st.booleans()):
        payload.pop(key, None)
    else:
        payload[key] = data.draw(edge_values | json_values)
    assert_agree(channel, payload)


def full_model(data: dict) -> Telemetry | None:
    try:
        return Telemetry.received("dev-1", data)
    except ValueError:  # pydantic's ValidationError
        return None


def test_usual_telemetry_takes_the_fast_path_and_decodes_as_the_model():
    """The firmware's own payloads are what the fast path is for: it must take them, not fall back."""
    from fleet.contract import _usual_telemetry
    from fleet.sim import telemetry_payloads

    for raw in [*telemetry_payloads(3), *(p.read_bytes() for p in VALID if channel_of(p) == "telemetry")]:
        data = json.loads(raw)
        fast = _usual_telemetry("dev-1", data)
        assert fast is not None, raw
        assert fast == full_model(data) and fast.device_id == "dev-1"
        assert fast.model_dump(exclude_unset=True) == full_model(data).model_dump(exclude_unset=True)


@settings(max_examples=300, deadline=None, database=None)
@given(telemetry_like)
def test_fast_path_accepts_only_what_the_model_accepts_and_decodes_the_same(data):
    """Anything the fast path builds, the model accepts with the same values and the same fields set;
    whatever it leaves, the model decides (and words the rejection)."""
    from fleet.contract import _usual_telemetry

    fast = _usual_telemetry("dev-1", data)
    if fast is None:
        return
    full = full_model(data)
    assert full is not None, data
    assert fast == full and fast.device_id == full.device_id
    assert fast.model_dump(exclude_unset=True) == full.model_dump(exclude_unset=True)
    assert [fast.time_of(r) for r in fast.e] == [full.time_of(r) for r in full.e]


@pytest.mark.parametrize(
    "data",
    [
        {"seq": True, "bt": 1, "e": [{"n": "t", "v": 1}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t", "v": False}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t\n", "v": 1}]},  # `$` in a Python regex allows a final \n
        {"seq": 1, "bt": 1, "e": [{"n": "t", "u": None, "v": 1}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t", "v": 1, "t": None}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t", "v": 10**400}]},
        {"seq": 1, "bt": 253402300799, "e": [{"n": "t", "v": 1}]},
        {"seq": 1, "bt": 5, "e": [{"n": "t", "v": 1, "t": -6}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t", "u": "é" * 17, "v": 1}]},
        {"seq": 1, "bt": 1, "e": [{"n": "t", "v": 1}] * 65},
        {"seq": 1, "bt": 1, "e": [], "x": 1},
    ],
)
def test_unusual_telemetry_leaves_the_fast_path(data):
    from fleet.contract import _usual_telemetry

    assert _usual_telemetry("dev-1", data) is None
