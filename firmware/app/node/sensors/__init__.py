# Sensors: each one small unit with `setup()` and `read()` -> list of (name, SenML unit, value).
from node.sensors.sim import SimClimate

KINDS = {"sim_climate": SimClimate}


def build(specs, clock):
    out = []
    for spec in specs:
        kind = KINDS.get(spec.get("type"))
        if kind is None:
            raise ValueError("unknown sensor type %r" % spec.get("type"))
        out.append(kind(spec, clock))
    return out
