"""Driver tests: each exercise runs as a code string under micropython and CPython (`fw`)."""

from __future__ import annotations

import json
import textwrap

import pytest

PRELUDE = """
import json
from node import bus
from node.sim import Clock
clk = Clock(1000).install()
def out(obj):
    print(json.dumps(obj))
def fault(f, *a):
    try:
        f(*a)
    except bus.SensorFault as e:
        return str(e)
    return None
"""


@pytest.fixture
def fwrun(fw):
    """Run dedented code after PRELUDE; return the JSON printed on each line."""

    def run(code: str, setup: str = "", **kw):
        r = fw(PRELUDE + textwrap.dedent(setup) + textwrap.dedent(code), **kw)
        assert r.returncode == 0, r.stderr + r.stdout
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    return run
