# Node configuration: config.json (identity, network, broker, sensors) and creds.json (secrets),
# merged over defaults and validated so a bad file gives one clear message, not a traceback later.
import json

DEFAULTS = {
    "sample_interval_s": 10,
    "health_interval_s": 60,
    "mqtt": {"port": 1883, "keepalive": 30, "tls": False},
    "sensors": [{"type": "sim_climate"}],
    "board": "sim",
}


class ConfigError(Exception):
    pass


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        raise ConfigError("%s is missing" % path)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)


def validate(cfg):
    did = cfg.get("device_id")
    if not isinstance(did, str) or not (3 <= len(did) <= 32):
        raise ConfigError("device_id must be a string of 3 to 32 characters")
    for ch in did:
        if not (ch.isdigit() or ("a" <= ch <= "z") or ch == "-"):
            raise ConfigError("device_id %r: only a-z, 0-9 and '-' are allowed" % did)
    mqtt = cfg.get("mqtt")
    if not isinstance(mqtt, dict) or not isinstance(mqtt.get("host"), str):
        raise ConfigError("mqtt.host is required")
    for key in ("port", "keepalive"):
        if not isinstance(mqtt.get(key), int) or mqtt[key] <= 0:
            raise ConfigError("mqtt.%s must be a positive integer" % key)
    for key in ("sample_interval_s", "health_interval_s"):
        v = cfg.get(key)
        if not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError("%s must be a positive number" % key)
    if not isinstance(cfg.get("sensors"), list):
        raise ConfigError("sensors must be a list")
    return cfg


REMOTE_PATH = "data/remote.json"


def save_remote(version, settings):
    """Persist the fleet's config so it survives a reboot (config.json itself is never rewritten)."""
    from node.store import write_atomic

    write_atomic(REMOTE_PATH, json.dumps({"version": version, "settings": settings}))


def load(config_path="config.json", creds_path="creds.json"):
    cfg = _merge(DEFAULTS, _read_json(config_path))
    try:
        remote = _read_json(REMOTE_PATH)
        cfg.update(remote["settings"])
        cfg["config_version"] = remote["version"]
    except (ConfigError, KeyError, TypeError):
        pass
    creds = _read_json(creds_path)
    cfg["mqtt"] = _merge(cfg["mqtt"], {"user": creds.get("user"), "password": creds.get("password")})
    return validate(cfg)
