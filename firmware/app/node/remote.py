# Remote configuration and commands from the fleet: validated here, so a bad message is refused
# with a reason and the node keeps running as before. Loaded by node.app when such a message
# arrives and let go afterwards: a node spends its life sampling, not being reconfigured.
import json

from node import store
from node.app import LEVELS
from node.port import port

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


# --- applying them to the node ---------------------------------------------------------------------
def on_config(node, payload):
    try:
        # Safe mode must not load sensor code (the likely crash), so sensor types go unchecked.
        version, settings = parse_config(payload, None if node.safe else known_kinds())
    except ValueError as e:
        node.reply(ack("config", "config", False, error=str(e)))
        node.log("warning", "config: refused: %s" % e)
        return
    if version == node.config_version:
        return  # the retained copy we already run, seen again after a reconnect
    ident = "config-%d" % version
    try:
        apply_config(node, version, settings)
    except Exception as e:
        node.reply(ack(ident, "config", False, error="not applied: %s" % e))
        return
    node.reply(ack(ident, "config", True, result={"version": version}))
    node.log("info", "config: version %d applied" % version)
    if node.safe:
        # A fix arrived: try a normal boot again.
        store.write_atomic("data/crashes", "0")
        node.log("warning", "node: leaving safe mode, rebooting")
        node.pending_reset = True


def known_kinds():
    from node import sensors

    return tuple(sensors.KINDS)


def apply_config(node, version, settings):
    from node import config

    sensors_changed = "sensors" in settings and settings["sensors"] != node.cfg.get("sensors")
    config.save_remote(version, settings)
    node.cfg.update(settings)
    node.cfg["config_version"] = version
    node.config_version = version
    if sensors_changed and not node.safe:
        node.build_sensors()


def on_command(node, payload):
    try:
        ident, cmd, args, expires = parse_command(payload)
    except ValueError as e:
        node.reply(ack("unknown", "unknown", False, error=str(e)))
        return
    if expires is not None and port.time_synced() and port.epoch() > expires:
        node.reply(ack(ident, cmd, False, error="expired"))
        return
    try:
        result = run_command(node, cmd, args)
    except Exception as e:
        node.reply(ack(ident, cmd, False, error=str(e)))
        return
    node.reply(ack(ident, cmd, True, result=result))


def run_command(node, cmd, args):
    if cmd == "reboot":
        node.pending_reset = True
        return {"rebooting": True}
    if cmd == "identify":
        seconds = args.get("seconds", 10)
        port.identify(seconds)
        node.log("info", "identify: status LED blinking for %d s" % seconds)
        return {"seconds": seconds}
    if cmd == "co2_recalibrate":
        ppm = args.get("ppm")
        if not isinstance(ppm, int) or not 300 <= ppm <= 5000:
            raise ValueError("ppm must be an integer between 300 and 5000")
        for s in node.sensors:
            if hasattr(s, "forced_recalibration"):
                return {"correction_ppm": s.forced_recalibration(ppm)}
        raise ValueError("no CO2 sensor on this node")
    if cmd == "time_sync":
        if not port.sync_time(args.get("server")):
            raise ValueError("no answer from the time server")
        return {"time": port.epoch()}
    if cmd == "flush_outbox":
        node.outbox.rewind()
        node.wake.set()
        return {"waiting": len(node.outbox)}
    if cmd == "log_level":
        level = args.get("level")
        if level not in LEVELS:
            raise ValueError("level must be one of debug, info, warning, error")
        node.cfg["log_level"] = level
        return {"level": level}
    raise ValueError("unknown command %r" % cmd)
