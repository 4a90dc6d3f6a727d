# Loader: starts the active application slot. Kept tiny and never updated over the air.
import sys


def active_slot():
    try:
        with open("app/active") as f:
            slot = f.read().strip()
    except OSError:
        slot = "a"
    return slot if slot in ("a", "b") else "a"


slot = active_slot()
sys.path.insert(0, "app/" + slot)
print("loader: starting app slot " + slot)
import node.app  # noqa: E402

node.app.main()
