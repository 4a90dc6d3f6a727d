# Loader: starts the active application slot. Kept tiny and never updated over the air.
#
# It counts crashes: the app raising out of main(), or a watchdog reset (a hung task). A power
# cut is no crash: a building whose power and network fail together must not lose its sensors.
# The app writes 0 to data/crashes once it is online and the fleet stores its data. MAX_CRASHES
# without such a confirmation and the app is started in safe mode: network, health, config and
# commands only, no sensors.
#
# Slots and trial boots (over-the-air updates, node/ota.py). app/active, the slot pointer, is
# either the plain "a" or "b" of the first loader, or JSON written in one atomic rename:
#   {"slot": "b", "trial": true, "prev": "a", "tries": 0, "version": "0.2.0", "from": "0.1.0"}
# A trial slot runs at most MAX_TRIAL_BOOTS times without being confirmed (the app sets trial
# false once it is online and the fleet stores its data). One more boot, a watchdog reset during
# the trial or a slot without an app, and the loader goes back to `prev` by itself, leaving
# {"slot": "a", "rolled_back": {"version": .., "from": "b", "reason": ..}} for the app to report.
import json
import os
import sys

LOADER_VERSION = 2  # the app reads it from data/loader (manifest min_loader)
MAX_CRASHES = 3
MAX_TRIAL_BOOTS = 3
POINTER = "app/active"


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def halt(step):
    # Test hook of virtual boards (never on the chip): a `halt-at` file naming this step freezes
    # the board here, and the test cuts its power at that exact point.
    if sys.platform == "esp32" or read_text("halt-at") != step:
        return
    os.remove("halt-at")
    print("halt: " + step)
    import time

    while True:
        time.sleep(1)


def write_atomic(path, text, step=None):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    if step:
        halt(step)
    os.rename(path + ".tmp", path)


def read_pointer():
    text = read_text(POINTER)
    if text in ("a", "b"):
        return {"slot": text}
    try:
        p = json.loads(text)
    except (TypeError, ValueError):
        p = None
    if not isinstance(p, dict) or p.get("slot") not in ("a", "b"):
        return {"slot": "a"}
    return p


def has_app(slot):
    try:
        os.stat("app/" + slot + "/node")
        return True
    except OSError:
        return False


def reset_cause():
    if sys.platform == "esp32":
        import machine

        return "watchdog" if machine.reset_cause() == machine.WDT_RESET else "other"
    return os.getenv("MAILLE_RESET_CAUSE") or "power_on"


def trial_step(p):
    """Count a trial boot, or roll back; returns the slot to start."""
    slot = p["slot"]
    prev = p.get("prev")
    tries = p.get("tries", 0)
    reason = None
    if prev not in ("a", "b") or prev == slot or not has_app(prev):
        p["trial"] = False  # nothing to go back to: the trial slot is all there is
        write_atomic(POINTER, json.dumps(p))
        return slot
    if not has_app(slot):
        reason = "slot %s holds no app" % slot
    elif tries >= MAX_TRIAL_BOOTS:
        reason = "crash loop: %d trial boots without confirmation" % tries
        last = read_text("data/last_crash")
        if last:
            reason += "; last crash: " + last
    elif tries > 0 and reset_cause() == "watchdog":
        reason = "watchdog reset during trial boot %d" % tries
    if reason is None:
        p["tries"] = tries + 1
        write_atomic(POINTER, json.dumps(p), "loader:count-tmp")
        halt("loader:counted")
        return slot
    back = {"slot": prev, "rolled_back": {"version": p.get("version"), "from": slot, "reason": reason}}
    if p.get("from"):
        back["version"] = p["from"]
    write_atomic(POINTER, json.dumps(back), "loader:rollback-tmp")
    write_atomic("data/crashes", "0")
    print("loader: trial of slot %s rolled back to slot %s: %s" % (slot, prev, reason))
    halt("loader:rolled-back")
    return prev


def code_path(slot):
    """Where the slot's code is imported from: its ROMFS image mounted at /rom and executed in
    place (bytecode stays in flash, out of the heap), or its folder when it has no image. The app
    writes a slot's image after installing it (node/romfs.py). On a chip built with two romfs
    partitions, segment 0 is slot a's and 1 slot b's; a virtual board run by `provisioning.romfs`
    is told where each slot's image is mapped."""
    try:
        import vfs

        if sys.platform == "esp32":
            if vfs.rom_ioctl(1) < 2:
                return "app/" + slot
            image = vfs.rom_ioctl(2, "ab".index(slot))
        else:
            import uctypes

            addr, size = os.getenv("MAILLE_ROMFS_" + slot.upper()).split(":")
            image = uctypes.bytearray_at(int(addr), int(size))
        try:
            vfs.umount("/rom")  # the port mounts segment 0 at boot
        except OSError:
            pass
        vfs.mount(vfs.VfsRom(image), "/rom")
    except (ImportError, AttributeError, ValueError, OSError):  # CPython, no image, an erased one
        return "app/" + slot
    return "/rom"


def reset():
    if sys.platform == "esp32":
        import machine

        machine.reset()
    sys.exit(75)  # the virtual board's supervisor restarts the process, as a chip reset would


def report(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        import traceback

        traceback.print_exception(e)


try:
    os.mkdir("data")
except OSError:
    pass
if read_int("data/loader") != LOADER_VERSION:
    write_atomic("data/loader", str(LOADER_VERSION))
pointer = read_pointer()
trial = bool(pointer.get("trial"))
slot = trial_step(pointer) if trial else pointer["slot"]
trial = trial and slot == pointer["slot"] and bool(pointer.get("trial"))
crashes = read_int("data/crashes")
if reset_cause() == "watchdog":
    crashes += 1
    write_atomic("data/crashes", str(crashes))
safe = crashes >= MAX_CRASHES
code = code_path(slot)
sys.path.insert(0, code)
print("loader: starting app slot %s%s%s%s" % (
    slot, " (trial boot %d)" % pointer.get("tries", 0) if trial else "",
    " in SAFE MODE after %d crashes" % crashes if safe else "", " from ROM" if code == "/rom" else ""))
try:
    import node.app

    node.app.main(safe)
except Exception as e:
    print("loader: the app crashed:")
    report(e)
    write_atomic("data/crashes", str(crashes + 1))
    if trial:
        write_atomic("data/last_crash", ("%s: %s" % (type(e).__name__, e))[:120])
    import time

    time.sleep(1)
    reset()
