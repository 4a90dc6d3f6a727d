# ruff: noqa: E402  (runs as a script under micropython: imports follow the measurements)
# Runs inside the unix-port micropython (or CPython): the node app's sensing path on the classroom
# board in an accelerated simulated building, measuring heap and CPU. Prints one JSON line.
# ARGS (or argv): <config.json> <cycles> <noise seconds>. The board's world (simulated chips and
# building) runs in a process beside it (provisioning/world.py), as sensors sit outside an ESP32.
import gc
import json
import sys
import time

try:
    from time import ticks_diff, ticks_us
except ImportError:  # CPython

    def ticks_us():
        return int(time.perf_counter() * 1e6)

    def ticks_diff(a, b):
        return a - b


MP = sys.implementation.name == "micropython"


def alloc():
    return gc.mem_alloc() if MP else 0


def live():
    gc.collect()
    return alloc()


def empty_loop(n):
    t0 = ticks_us()
    for _ in range(n):
        pass
    return ticks_diff(ticks_us(), t0)


try:
    ARGS  # noqa: B018  (set by bench/firmware/run.py in front of this file)
except NameError:
    ARGS = sys.argv
cfg = json.load(open(ARGS[1]))
cycles = int(ARGS[2])
noise_s = float(ARGS[3])
# The noise pipeline first, on its own: samples per second through the A-weighting.
pre_noise = live()
from node.sensors import noise

noise_code = live() - pre_noise  # node.bus, node.sensors and the noise driver: part of sensing


class Silent:
    def readinto(self, buf):
        return 0


rates = {}
for rate in (16000, 48000):
    m = noise.NoiseMeter({"rate": rate}, None, Silent())
    m.buf = None  # throughput() runs a twin with its own buffer
    rates[str(rate)] = noise.throughput(m, noise_s)
    del m

cycle_us = [0] * cycles  # the probe's own record, allocated up front: no list growing mid-run
gc.collect()
base = alloc()
from node import app  # the whole app, as a node loads it

parts = {"noise_code": noise_code, "node_core": live() - base}
mark = live()
node = app.Node(cfg)
node.build_sensors()
gc.collect()
loaded = alloc()
parts["sensing"] = loaded - mark  # sampler, drivers, the link to the world and their objects
peak_live = loaded
peak = loaded
s = node.sampler
for i in range(cycles):
    # One reporting cycle: drain the streams, read every sensor, aggregate, encode and queue.
    t0 = ticks_us()
    s.poll()
    now = s.now_ms()
    for e in s.entries:
        e.due = now
    s.report_due = now
    node.sample()
    node.outbox.maintain()
    cycle_us[i] = ticks_diff(ticks_us(), t0)
    peak = max(peak, alloc())
    gc.collect()
    peak_live = max(peak_live, alloc())
    time.sleep(0.02)  # let the building's clock move on
ref = min(empty_loop(10000) for _ in range(5))
cycle_us.sort()
med = cycle_us[len(cycle_us) // 2]

gc.collect()
print(
    json.dumps(
        {
            "heap_base_bytes": base,  # interpreter + this probe, before the app
            "heap_app_bytes": loaded - base,
            "heap_loaded_bytes": loaded,  # absolute, like the peaks below
            "heap_peak_bytes": peak,
            "heap_peak_live_bytes": peak_live,
            "heap_after_bytes": alloc(),
            "cycle_us": med,
            "empty_loop_10k_us": ref,
            "cycle_vs_empty_loop": round(med / ref, 2) if ref else None,
            "noise_samples_per_s": rates,
            "heap_parts_bytes": parts,
            "app_file": app.__file__,  # the app's code: a folder or the ROMFS image at /rom
            "sim_modules": sorted(m for m in sys.modules if m == "node.sim" or m.startswith("node.sim.")),
            "faults": s.faults,
            "reports": s.reports,
        }
    )
)
