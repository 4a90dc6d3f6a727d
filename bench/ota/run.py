"""OTA on the node: Ed25519 verify time of a signed release manifest on the unix-port `micropython`,
and the bytes of a full and a one-file (delta) update of the real app.

The verify runs the firmware's own node.ed25519 (pure Python, with node.sha512) on the manifest of
a real bundle (the app compiled by mpy-cross for xtensawin), repeated; the median is reported.
Bytes are the compressed files a node fetches: all of them for a full update, the ones whose
SHA-256 differs from its running slot for a delta (a one-file source change plus node/__init__,
whose VERSION the build stamps). Prints one JSON line; details go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import finish, log, median  # noqa: E402
from provisioning import release  # noqa: E402
from provisioning.tree import FIRMWARE  # noqa: E402
from provisioning.virtual import micropython_executable  # noqa: E402

SCRIPT = r"""
import sys, time, json, binascii
sys.path.insert(0, %(app)r)
from node import ed25519
manifest = open(%(manifest)r, "rb").read()
sig = binascii.unhexlify(json.loads(open(%(sig)r).read())["sig"])
pub = binascii.unhexlify(%(pub)r)
times = []
for i in range(%(n)d):
    t0 = time.ticks_us()
    ok = ed25519.verify(pub, sig, manifest)
    times.append(time.ticks_diff(time.ticks_us(), t0) / 1000)
    assert ok
print(json.dumps(times))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        keyfile, pub = release.generate_key(d / "key.pem")
        log("building 1.0.0 and a one-file change 1.0.1 (mpy-cross, xtensawin)")
        v1 = release.build(FIRMWARE / "app", "1.0.0", "xtensawin", d / "v1")
        app2 = d / "app2"
        subprocess.run(["cp", "-r", str(FIRMWARE / "app"), str(app2)], check=True)
        codec = app2 / "node" / "codec.py"
        codec.write_text(codec.read_text() + "\nCODEC_NOTE = 'changed'\n")
        v2 = release.build(app2, "1.0.1", "xtensawin", d / "v2")
        release.sign(v2, keyfile)
        m1 = json.loads((v1 / "manifest.json").read_text())
        m2 = json.loads((v2 / "manifest.json").read_text())
        have = {f["path"]: f["sha256"] for f in m1["files"]}
        full = sum(f["zsize"] for f in m2["files"])
        changed = [f for f in m2["files"] if have.get(f["path"]) != f["sha256"]]
        delta = sum(f["zsize"] for f in changed)
        code = SCRIPT % {
            "app": str(FIRMWARE / "app"),
            "manifest": str(v2 / "manifest.json"),
            "sig": str(v2 / "manifest.sig"),
            "pub": pub.read_text().strip(),
            "n": args.runs,
        }
        log(f"verifying the {len((v2 / 'manifest.json').read_bytes())}-byte manifest {args.runs} times")
        r = subprocess.run([micropython_executable(), "-c", code], capture_output=True, text=True, check=True)
        times = json.loads(r.stdout)
    summary = {
        "verify_ms": round(median(times), 2),
        "verify_ms_max": round(max(times), 2),
        "manifest_bytes": len(json.dumps(m2)),
        "files": len(m2["files"]),
        "full_update_bytes": full,
        "app_bytes_uncompressed": sum(f["size"] for f in m2["files"]),
        "delta_one_file_bytes": delta,
        "delta_files": [f["path"] for f in changed],
        "runtime": "micropython unix port",
    }
    finish("ota", summary, {"verify_times_ms": times})


if __name__ == "__main__":
    main()
