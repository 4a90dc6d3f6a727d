"""Run firmware code under both runtimes it must support: the unix-port `micropython` and CPython."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provisioning.tree import FIRMWARE
from provisioning.virtual import micropython_executable

RUNTIMES = ["micropython", "cpython"]


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    return request.param


def run_firmware(runtime: str, code: str, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
    """Run `code` with the app package importable, as the node's interpreter would."""
    prelude = f"import sys\nsys.path.insert(0, {str(FIRMWARE / 'app')!r})\n"
    exe = micropython_executable() if runtime == "micropython" else sys.executable
    return subprocess.run([exe, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def fw(runtime):
    def run(code: str, **kw) -> subprocess.CompletedProcess:
        return run_firmware(runtime, code, **kw)

    return run
