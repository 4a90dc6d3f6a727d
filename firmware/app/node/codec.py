# Payloads of docs/contract.md. Times are whole Unix seconds: the ESP32's floats are 32-bit.
import json


def topic(device_id, channel):
    return "maille/v1/" + device_id + "/" + channel


def telemetry(seq, bt, records):
    """records: list of (name, unit, value)."""
    e = []
    for n, u, v in records:
        e.append({"n": n, "u": u, "v": v})
    return json.dumps({"seq": seq, "bt": bt, "e": e})


def state_online(fw, board, boot, reset, ts, mode, config_version):
    return json.dumps({"state": "online", "fw": fw, "board": board, "boot": boot, "reset": reset, "ts": ts,
                       "mode": mode, "config": config_version})


def state_offline(reason=None):
    if reason is None:
        return json.dumps({"state": "offline"})
    return json.dumps({"state": "offline", "reason": reason})


def _stored_field(payload, key):
    try:
        value = json.loads(payload)[key]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def stored_seq(payload):
    """The fleet's watermark from a `stored` message, or None if it is not one."""
    return _stored_field(payload, "seq")


def stored_time(payload):
    """The fleet's clock (Unix seconds) from a `stored` message, if it carries one."""
    return _stored_field(payload, "t")
