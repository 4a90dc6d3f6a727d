# Loader: starts the active application slot. Kept tiny and never updated over the air.
#
# It counts boots that the app has not yet confirmed healthy (the app writes 0 to data/crashes
# once it is online and the fleet stores its data). More than MAX_CRASHES in a row and the app is
# started in safe mode: network, health, config and commands only, no sensors.
import os
import sys

MAX_CRASHES = 3


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def active_slot():
    try:
        with open("app/active") as f:
            slot = f.read().strip()
    except OSError:
        slot = "a"
    return slot if slot in ("a", "b") else "a"


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
crashes = read_int("data/crashes") + 1
write_atomic("data/crashes", str(crashes))
slot = active_slot()
safe = crashes > MAX_CRASHES
sys.path.insert(0, "app/" + slot)
print("loader: starting app slot %s%s" % (slot, " in SAFE MODE after %d failed boots" % (crashes - 1) if safe else ""))
try:
    import node.app

    node.app.main(safe)
except Exception as e:
    print("loader: the app crashed:")
    report(e)
    import time

    time.sleep(1)
    reset()
