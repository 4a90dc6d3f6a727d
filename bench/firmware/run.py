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

from provisioning import romfs  # noqa: E402
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
        "sensors": [dict(spec, name=key) for key, spec in b["sensors"].items()],
        "building": dict(b["building"]),
        "world": True,  # the chips and the building in a process beside the node (provisioning/world.py)
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


def run_probe(heapsize: str, cycles: int, noise_s: float, mode: str) -> subprocess.CompletedProcess:
    """The probe under `-X heapsize` with the app as `mode`: its .py files, the .mpy files on the
    filesystem, or the .mpy files in a ROMFS image mapped outside the heap (executed in place);
    its world in a process of its own, as a virtual board has it."""
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "config.json"
        cfg.write_text(json.dumps(classroom_config()))
        args = ["probe", str(cfg), str(cycles), str(noise_s)]
        code = f"ARGS = {args!r}\n"
        if mode == "romfs":
            image = Path(d) / "app.romfs"
            image.write_bytes(romfs.build_image(compiled_app(Path(d) / "app")))
            launcher = [sys.executable, "-m", "provisioning.romfs", "--rom", f"app={image}"]
            code = romfs.mount_code("app") + code
        else:
            app = compiled_app(Path(d) / "app") if mode == "mpy" else FIRMWARE / "app"
            launcher = [micropython_executable()]
            code = f"import sys\nsys.path.insert(0, {str(app)!r})\n" + code
        cmd = [*launcher, "-X", f"heapsize={heapsize}", "-c", code + PROBE.read_text()]
        world = subprocess.Popen(
            [sys.executable, "-P", "-m", "provisioning.world", d],
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=600)
        finally:
            world.terminate()
            world.wait()


def probe(heapsize: str, cycles: int, noise_s: float, mode: str = "source") -> dict:
    r = run_probe(heapsize, cycles, noise_s, mode)
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


NODE_UNTIL_H = 19.0  # a school day, from the building's 07:00


def node_day_runs(broker, heapsize: str, mode: str, work: Path) -> bool:
    """The whole node (classroom board, MQTT link to a real broker, its world beside it) through an
    accelerated school day in `heapsize`, its app as `mode`: no MemoryError, no reset, no sensor
    fault (a driver that cannot get its buffers at boot is a fault, not a crash), reports sent."""
    import uuid

    from provisioning.virtual import VirtualBoard

    device, password = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    broker.users.set_user(device, password)
    broker.reload()
    cfg = classroom_config() | {
        "device_id": device,
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 30},
        "sample_interval_s": 0.25,
        "report_interval_s": 0.5,
        "health_interval_s": 2,
    }
    cfg["building"]["speed"] = 1800
    root = work / device
    vb = VirtualBoard.create(root, cfg, {"user": device, "password": password}, heapsize=heapsize,
                             rom=mode == "romfs")
    if mode == "mpy":  # the slot as an ESP32 gets it today: .mpy files on the filesystem
        slot = root / "app" / "a"
        sources = {p.relative_to(slot).as_posix(): p.read_bytes() for p in slot.rglob("*.py")}
        for rel, data in compile_sources(sources, "host").items():
            (slot / rel).write_bytes(data)
            (slot / rel).with_suffix(".py").unlink()
    vb.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            console = vb.console()
            if "MemoryError" in console or "sensors: " in console or console.count("--- board start") > 1:
                return False
            log = root / "building.log"
            last = log.read_text().strip().rsplit("\n", 1)[-1] if log.exists() else ""
            if last and (int(last.split()[0]) % 86400) / 3600 >= NODE_UNTIL_H:
                return len(vb.sent_seqs()) > 20 and "Traceback" not in console
            time.sleep(0.5)
        return False
    finally:
        vb.close()
        broker.users.remove_user(device)


def node_smallest_heap_kb(broker, mode: str, work: Path, lo: int = 64, hi: int = 320, step: int = 8) -> int:
    """The whole node's smallest -X heapsize (KB, to `step`) for a school day, by bisection."""
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if node_day_runs(broker, f"{mid}k", mode, work):
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
            code = romfs.mount_code("app") + IN_PLACE_PROBE.format(where=where)
            cmd = [sys.executable, "-m", "provisioning.romfs", "--rom", f"app={image}", "-c", code]
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
    if m["sim_modules"]:
        raise SystemExit(f"the simulated world ran in the node's heap: {m['sim_modules']}")
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
        # .mpy, after load: the noise driver, the node's core, the sensing path with its objects
        "heap_parts_kb": {k: round(v / 1024, 1) for k, v in m["heap_parts_bytes"].items()},
        "smallest_heap_kb": smallest_heap_kb(cycles, "source"),
        # .mpy executed in place from a ROMFS image outside the heap (`app_file`: where it came from)
        "romfs": {k: round(r[f"heap_{k}_bytes"] / 1024, 1) for k in heap}
        | {"parts_kb": {k: round(v / 1024, 1) for k, v in r["heap_parts_bytes"].items()}, "app_file": r["app_file"]}
        | code_kb()
        | {"in_place_check": in_place_check()},
    }
    summary["mpy"]["smallest_heap_kb"] = smallest_heap_kb(cycles, "mpy")
    summary["romfs"]["smallest_heap_kb"] = smallest_heap_kb(cycles, "romfs")
    if not args.quick:
        # The whole node with its link, as tests/firmware/sampling/test_heap.py runs it, per mode.
        from fleet.broker import LocalBroker

        with tempfile.TemporaryDirectory(prefix="maille-bench-node-") as d:
            broker = LocalBroker(Path(d) / "mosquitto").start()
            try:
                summary["node_smallest_heap_kb"] = {
                    mode: node_smallest_heap_kb(broker, mode, Path(d)) for mode in ("source", "mpy", "romfs")
                }
            finally:
                broker.stop()
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
