# Remote configuration and commands from the fleet: validated here, so a bad message is refused
# with a reason and the node keeps running as before.
import json

LEVELS = ("debug", "info", "warning", "error")
COMMANDS = ("reboot", "identify", "co2_recalibrate", "time_sync", "flush_outbox", "log_level")


def _number(v, lo, hi):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and lo < v <= hi


def _number_map(v, lo):
    if not isinstance(v, dict):
        return False
    for k in v:
        if not isinstance(v[k], (int, float)) or isinstance(v[k], bool) or v[k] < lo:
            return False
    return True


CHECKS = {
    "sample_interval_s": (lambda v: _number(v, 0, 86400), "a number > 0 and <= 86400"),
    "health_interval_s": (lambda v: _number(v, 0.999, 86400), "a number >= 1 and <= 86400"),
    "log_level": (lambda v: v in LEVELS, "one of debug, info, warning, error"),
    "sensors": (lambda v: isinstance(v, list) and all(isinstance(s, dict) and "type" in s for s in v),
                "a list of objects with a type"),
    "calibration": (lambda v: _number_map(v, -1e9), "an object of numbers"),
    "thresholds": (lambda v: _number_map(v, 0), "an object of numbers >= 0"),
}


def parse_config(payload, known_sensor_types):
    """(version, settings) from a `config` message, or raise ValueError with the reason."""
    try:
        msg = json.loads(payload)
    except ValueError:
        raise ValueError("config is not valid JSON")
    if not isinstance(msg, dict):
        raise ValueError("config must be an object")
    version = msg.get("version")
    settings = msg.get("settings")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("version must be an integer >= 1")
    if not isinstance(settings, dict):
        raise ValueError("settings must be an object")
    for key in settings:
        check = CHECKS.get(key)
        if check is None:
            raise ValueError("unknown setting %r" % key)
        if not check[0](settings[key]):
            raise ValueError("%s must be %s" % (key, check[1]))
    for s in settings.get("sensors", ()):
        if known_sensor_types is not None and s["type"] not in known_sensor_types:
            raise ValueError("unknown sensor type %r" % s["type"])
    return version, settings


def parse_command(payload):
    """(id, cmd, args, expires) from a `cmd` message, or raise ValueError with the reason."""
    try:
        msg = json.loads(payload)
    except ValueError:
        raise ValueError("command is not valid JSON")
    if not isinstance(msg, dict) or not isinstance(msg.get("id"), str):
        raise ValueError("command must be an object with a string id")
    cmd = msg.get("cmd")
    if cmd not in COMMANDS:
        raise ValueError("unknown command %r" % (cmd,))
    args = msg.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError("args must be an object")
    return msg["id"], cmd, args, msg.get("expires")


def ack(id, cmd, ok, result=None, error=None):
    out = {"id": id, "cmd": cmd, "ok": ok}
    if result is not None:
        out["result"] = result
    if error is not None:
        out["error"] = error[:200]
    return json.dumps(out)
