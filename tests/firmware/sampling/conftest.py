"""Sampler tests: each exercise runs as a code string under micropython and CPython (`fw`).

The sampler's own clock (real time on a node) is a variable the code steps, so nothing depends on
how fast the machine is; the simulated devices run on node.sim.Clock.
"""

from __future__ import annotations

import json
import textwrap

import pytest

PRELUDE = """
import json
from node import bus, sampler, sensors
from node.sim import Clock
clk = Clock(1000).install()
T = [0]
def now_ms():
    return T[0]
def diff(a, b):
    return a - b
def out(obj):
    print(json.dumps(obj))
def make(cfg):
    return sampler.build(cfg, sensors, lambda: 1795686126 + T[0] // 1000, now_ms, diff)
def run_to(s, ms, step=100):
    # Step both clocks to ms; returns the reports made on the way, as {name: value} dicts.
    reps = []
    while T[0] < ms:
        T[0] += step
        clk.ms += step
        r = s.tick()
        if r is not None:
            reps.append(dict((n, v) for n, u, v in r))
    return reps

class Series:
    # A stand-in driver that returns the next values of fixed series on each read.
    def __init__(self, spec, clock):
        self.series = spec["series"]
        self.i = 0
    def setup(self):
        pass
    def read(self):
        i = self.i
        self.i += 1
        return [(n, u, vals[i % len(vals)]) for n, u, vals in self.series]
sensors.KINDS["series"] = Series
"""


@pytest.fixture
def fwrun(fw, tmp_path):
    """Run dedented code after PRELUDE in a scratch folder; return the JSON printed on each line."""

    def run(code: str, setup: str = "", **kw):
        kw.setdefault("cwd", tmp_path)
        r = fw(PRELUDE + textwrap.dedent(setup) + textwrap.dedent(code), **kw)
        assert r.returncode == 0, r.stderr + r.stdout
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    return run
