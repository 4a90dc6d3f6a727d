"""Firmware bench on the unix port: the node app's heap high-water mark under -X heapsize, per
configuration (the app run from source, compiled on the node; from the .mpy files mpy-cross makes
on the filesystem, which is what an ESP32 gets today; and from those .mpy files in a ROMFS image
mapped outside the heap and executed in place, which is what a romfs partition would give), CPU
time per reporting cycle against an empty loop on the same interpreter, and the noise pipeline's
throughput against the real-time rates it must sustain. One JSON line on stdout (the source
configuration's figures, `mpy` and `romfs` with the others' heap figures); details in
bench/results/firmware-<time>.json.

    python bench/firmware/run.py [--quick] [--heapsize 256k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import romfs  # noqa: E402  (bench/firmware/romfs.py, beside this file)

from provisioning.mpy import compile_sources  # noqa: E402
from provisioning.tree import FIRMWARE  # noqa: E402
from provisioning.virtual import micropython_executable  # noqa: E402

PROBE = Path(__file__).with_name("probe.py")


def classroom_config() -> dict:
    b = tomllib.loads((ROOT / "boards" / "sim-classroom.toml").read_text())
    return {
        "device_id": "bench-node",
        "mqtt": {"host": "127.0.0.1", "port": 1, "keepalive": 30},
        "sample_interval_s": 1,
        "health_interval_s": 60,
        "board": "sim-classroom",
        "outbox_ram": 10,
        "sensors": [dict(spec, name=key) for key, spec in b["sensors"].items()],
        "building": dict(b["building"]),
    }


def compiled_app(into: Path) -> Path:
    """The app package as .mpy files under `into` (mpy-cross for the unix port, as boards get it)."""
    src = FIRMWARE / "app"
    sources = {
        p.relative_to(src).as_posix(): p.read_bytes()
        for p in src.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    for rel, data in compile_sources(sources, "host").items():
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        (into / rel).write_bytes(data)
    return into


def run_probe(
    heapsize: str, cycles: int, noise_s: float, mode: str, first: list[str] | None = None
) -> subprocess.CompletedProcess:
    """The probe under `-X heapsize` with the app as `mode`: its .py files, the .mpy files on the
    filesystem, or the .mpy files in a ROMFS image mapped outside the heap (executed in place)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "config.json"
        cfg.write_text(json.dumps(classroom_config()))
        args = ["probe", str(cfg), str(cycles), str(noise_s)] + ([",".join(first)] if first else [])
        code = f"ARGS = {args!r}\n"
        if mode == "romfs":
            image = Path(d) / "app.romfs"
            image.write_bytes(romfs.build_image(compiled_app(Path(d) / "app")))
            launcher = [sys.executable, romfs.__file__, str(image)]
            code = romfs.MOUNT + code
        else:
            app = compiled_app(Path(d) / "app") if mode == "mpy" else FIRMWARE / "app"
            launcher = [micropython_executable()]
            code = f"import sys\nsys.path.insert(0, {str(app)!r})\n" + code
        cmd = [*launcher, "-X", f"heapsize={heapsize}", "-c", code + PROBE.read_text()]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)


def probe(
    heapsize: str, cycles: int, noise_s: float, mode: str = "source", first: list[str] | None = None
) -> dict:
    r = run_probe(heapsize, cycles, noise_s, mode, first)
    if r.returncode != 0:
        raise SystemExit(f"probe failed ({mode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def smallest_heap_kb(cycles: int, mode: str, lo: int = 64, hi: int = 512, step: int = 8) -> int:
    """The high-water mark that matters: the smallest -X heapsize (KB, to `step`) in which the app
    loads and runs `cycles` reporting cycles without a MemoryError (fragmentation included); `hi` must
    run (512k: three times what any configuration has needed)."""
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if run_probe(f"{mid}k", cycles, 0.05, mode).returncode == 0:
            hi = mid
        else:
            lo = mid
    return hi


def code_kb() -> dict:
    """The code the ROMFS configuration keeps out of the heap: the app's .mpy files and their image."""
    with tempfile.TemporaryDirectory() as d:
        app = compiled_app(Path(d))
        mpy = sum(p.stat().st_size for p in app.rglob("*.mpy"))
        return {"mpy_kb": round(mpy / 1024, 1), "image_kb": round(len(romfs.build_image(app)) / 1024, 1)}


IN_PLACE_PROBE = """import gc, sys
sys.path.insert(0, {where!r})
gc.collect()
b = gc.mem_alloc()
import big
gc.collect()
print(gc.mem_alloc() - b, big.__file__, big.big(1))
"""


def in_place_check() -> dict:
    """Is bytecode executed in place? One module holding one ~20 KB function, imported from a file and
    from the image in two fresh interpreters: copied, it costs its size in heap; in place, ~nothing."""
    src = "def big(x):\n" + "    x = x * 3 + 1 - (x >> 2)\n" * 2000 + "    return x & 0xFF\n"
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "tree"
        tree.mkdir()
        mpy = compile_sources({"big.py": src.encode()}, "host")["big.mpy"]
        (tree / "big.mpy").write_bytes(mpy)
        image = Path(d) / "big.romfs"
        image.write_bytes(romfs.build_image(tree))
        out = {"mpy_bytes": len(mpy)}
        for name, where in (("file", str(tree)), ("rom", "/rom")):
            code = romfs.MOUNT + IN_PLACE_PROBE.format(where=where)
            cmd = [sys.executable, romfs.__file__, str(image), "-c", code]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
            heap, file, _ = r.stdout.split()
            out[f"heap_from_{name}_bytes"] = int(heap)
            assert file.startswith(where), (file, where)  # imported from where it was meant to
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few cycles, short noise runs (smoke test)")
    ap.add_argument("--heapsize", default="1024k")
    args = ap.parse_args()
    cycles, noise_s = (5, 0.2) if args.quick else (200, 2.0)
    p = probe(args.heapsize, cycles, noise_s)
    m = probe(args.heapsize, cycles, noise_s, "mpy")
    r = probe(args.heapsize, cycles, noise_s, "romfs")
    # Again with the simulated world loaded first: its share of the heap against the node proper's.
    parts = probe(args.heapsize, cycles, noise_s, "mpy", first=m["sim_modules"])["heap_parts_bytes"]
    # The same split with the code in ROM: per part, what executing in place leaves in the heap.
    rom_parts = probe(args.heapsize, cycles, noise_s, "romfs", first=m["sim_modules"])["heap_parts_bytes"]
    heap = ("app", "loaded", "peak", "peak_live")
    summary = {
        "bench": "firmware",
        "runtime": "micropython-unix",
        "heapsize": args.heapsize,
        "heap_app_kb": round(p["heap_app_bytes"] / 1024, 1),
        "heap_peak_kb": round(p["heap_peak_bytes"] / 1024, 1),
        "heap_loaded_kb": round(p["heap_loaded_bytes"] / 1024, 1),  # absolute: base + app
        "heap_peak_live_kb": round(p["heap_peak_live_bytes"] / 1024, 1),  # absolute
        "heap_growth_kb": round((p["heap_peak_live_bytes"] - p["heap_loaded_bytes"]) / 1024, 1),
        "cycle_us": p["cycle_us"],
        "cycle_vs_empty_loop": p["cycle_vs_empty_loop"],
        "noise_16k_realtime_x": round(p["noise_samples_per_s"]["16000"] / 16000, 2),
        "noise_48k_realtime_x": round(p["noise_samples_per_s"]["48000"] / 48000, 2),
        "mpy": {k: round(m[f"heap_{k}_bytes"] / 1024, 1) for k in heap},
        # .mpy, after load: the simulated world (sim_*: no such thing on an ESP32) and the node proper
        "heap_parts_kb": {k: round(v / 1024, 1) for k, v in parts.items()},
        "smallest_heap_kb": smallest_heap_kb(cycles, "source"),
        # .mpy executed in place from a ROMFS image outside the heap (`app_file`: where it came from)
        "romfs": {k: round(r[f"heap_{k}_bytes"] / 1024, 1) for k in heap}
        | {"parts_kb": {k: round(v / 1024, 1) for k, v in rom_parts.items()}, "app_file": r["app_file"]}
        | code_kb()
        | {"in_place_check": in_place_check()},
    }
    summary["mpy"]["smallest_heap_kb"] = smallest_heap_kb(cycles, "mpy")
    summary["romfs"]["smallest_heap_kb"] = smallest_heap_kb(cycles, "romfs")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    details = out / f"firmware-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary["details"] = str(details.relative_to(ROOT))
    details.write_text(
        json.dumps(
            {
                "summary": summary,
                "probe": p,
                "probe_mpy": m,
                "probe_romfs": r,
                "cycles": cycles,
                "noise_s": noise_s,
            },
            indent=1,
        )
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
