# Payloads of docs/contract.md. Times are whole Unix seconds: the ESP32's floats are 32-bit.
import json


def topic(device_id, channel):
    return "maille/v1/" + device_id + "/" + channel


def telemetry_into(buf, at, seq, bt, records):
    """Write the telemetry payload of records [(name, unit, value)] into buf from `at`, a piece at a
    time: where it ends, or -1 when it does not fit. A node never makes a payload-sized string: its
    heap has few holes that big (the outbox keeps payloads in one buffer, node/outbox.py)."""
    at = _piece(buf, at, '{"seq": %d, "bt": %d, "e": [' % (seq, bt))
    sep = ""
    for n, u, v in records:
        at = _piece(buf, at, '%s{"n": %s, "u": %s, "v": %s}' % (sep, json.dumps(n), json.dumps(u), json.dumps(v)))
        sep = ", "
    return _piece(buf, at, "]}")


def _piece(buf, at, text):
    if at < 0:
        return -1
    b = text.encode()
    end = at + len(b)
    if end > len(buf):
        return -1
    buf[at:end] = b
    return end


def telemetry(seq, bt, records):
    """The telemetry payload as bytes (fleet-side tools and tests; the node writes in place)."""
    size = 256
    while True:
        buf = bytearray(size)
        end = telemetry_into(buf, 0, seq, bt, records)
        if end >= 0:
            return bytes(buf[:end])
        size *= 2


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
