# Sensors: each one small unit with `setup()` and `read()` -> list of (name, SenML unit, value).
# A driver that cannot give a trustworthy value raises SensorFault with a short reason.
from node.bus import SensorFault  # noqa: F401


def _lazy(module, cls):
    # Drivers are imported only when a board uses them: RAM on the ESP32 is scarce.
    def make(spec, clock):
        m = __import__("node.sensors." + module, None, None, [cls])
        return getattr(m, cls)(spec, clock)

    return make


KINDS = {
    "sim_climate": _lazy("sim", "SimClimate"),
    "scd4x": _lazy("scd4x", "SCD4x"),
    "sht4x": _lazy("sht4x", "SHT4x"),
    "bme280": _lazy("bme280", "BME280"),
    "mhz19": _lazy("mhz19", "MHZ19"),
    "sdm": _lazy("modbus", "SDM"),
    "s0": _lazy("pulse", "S0Meter"),
    "door": _lazy("presence", "Door"),
    "beams": _lazy("presence", "BeamCounter"),
    "noise": _lazy("noise", "NoiseMeter"),
}


def build(specs, clock):
    out = []
    for spec in specs:
        kind = KINDS.get(spec.get("type"))
        if kind is None:
            raise ValueError("unknown sensor type %r" % spec.get("type"))
        out.append(kind(spec, clock))
    return out
