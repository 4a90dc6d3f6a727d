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


def state_online(fw, board, boot, reset, ts):
    return json.dumps({"state": "online", "fw": fw, "board": board, "boot": boot, "reset": reset, "ts": ts})


def state_offline(reason=None):
    if reason is None:
        return json.dumps({"state": "offline"})
    return json.dumps({"state": "offline", "reason": reason})


def health(uptime, heap_free, heap_min, reset, rssi, reconnects, outbox, faults):
    return json.dumps({"uptime": uptime, "heap_free": heap_free, "heap_min": heap_min, "reset": reset,
                       "rssi": rssi, "reconnects": reconnects, "outbox": outbox, "faults": faults})


def stored_seq(payload):
    """The fleet's watermark from a `stored` message, or None if it is not one."""
    try:
        seq = json.loads(payload)["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) and seq >= 0 else None
