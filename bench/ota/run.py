"""OTA on the node: Ed25519 verify time of a signed release manifest on the unix-port `micropython`,
and the bytes of a full and a one-file (delta) update of the real app.

The verify runs the firmware's own node.ed25519 (pure Python, with node.sha512) on the manifest of
a real bundle (the app compiled by mpy-cross for xtensawin), repeated; the median is reported.
Bytes are the compressed files a node fetches: all of them for a full update, the ones whose
SHA-256 differs from its running slot for a delta (a one-file source change plus node/__init__,
whose VERSION the build stamps). With `--nodes N` (default 100; 0 skips it), the rollout of a
one-file fix to N virtual nodes with its reboot baseline (bench/ota/rollout.py). Prints one JSON
line; details go to bench/results/.
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
from bench.ota.rollout import run_rollout  # noqa: E402
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


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="signature verifications timed")
    ap.add_argument("--quick", action="store_true", help="a tiny run (3 nodes) that only shows it works")
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--nodes", type=int, default=100, help="virtual nodes rolled out to (0: no rollout)")
    ap.add_argument("--sites", type=int, default=4, help="sites the nodes are spread over")
    ap.add_argument("--batch", type=int, default=10, help="nodes started at once")
    ap.add_argument("--batch-pause", type=float, default=2.0, help="seconds between batches")
    ap.add_argument("--heap", default="1m", help="MicroPython heap of each node (-X heapsize)")
    ap.add_argument("--sample-interval", type=float, default=10.0)
    ap.add_argument("--health-interval", type=float, default=60.0)
    ap.add_argument("--confirm-s", type=float, default=5.0, help="node: healthy this long to confirm")
    ap.add_argument("--canary", type=int, default=2)
    ap.add_argument("--waves", default="10,50,100", help="cumulative percentages after the canary")
    ap.add_argument("--site-cap", type=int, default=5)
    ap.add_argument("--jitter", type=float, default=10.0, help="random start delay per device, up to (s)")
    ap.add_argument("--rollout-interval", type=float, default=1.0, help="the engine's pass interval (s)")
    ap.add_argument("--bundle-max-concurrent", type=int, default=8)
    ap.add_argument("--bundle-rate-bps", type=int, default=0)
    args = ap.parse_args()
    args.waves = [float(w) for w in args.waves.split(",")]
    if args.quick:
        args.runs, args.nodes, args.sites, args.batch, args.canary = 3, min(args.nodes, 3), 1, 3, 1
        args.waves, args.jitter, args.sample_interval, args.confirm_s = [100.0], 1.0, 1.0, 1.0
        args.rollout_interval = 0.5
    return args


def main() -> None:
    args = arguments()
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
    summary: dict = {
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
    details: dict = {"verify_times_ms": times}
    if args.nodes:
        with tempfile.TemporaryDirectory() as d:
            fields, more = run_rollout(args, Path(d), args.db)
        summary.update(fields, db=args.db)
        details.update(more)
    finish("ota", summary, details)


if __name__ == "__main__":
    main()
