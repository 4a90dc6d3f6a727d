"""A virtual board's physical world in a process of its own: the simulated building and sensor chips
(node.sim) that the node's real drivers reach over a socket (firmware/app/node/simlink.py).

`python -m provisioning.world BOARD_DIR` runs in the board folder, as a real board's sensors and
building are outside its MCU: on a virtual board they no longer take the node's heap. It installs
the building of config.json (when there is one), listens on 127.0.0.1 (the port goes to world.port,
written in one rename) and serves one node connection at a time. Devices are made with node.sim's
own functions and kept across connections, keyed by what the node opens (bus, kind, sensor, pin):
when the node reboots or loses power the building goes on with its day, its truth log
(building.log) and its chips' state. The `sim-fault-<sensor>` files still break a sensor (the
devices read them here). It ends on SIGTERM, or when the process that started it is gone.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from provisioning.tree import FIRMWARE

PORT_FILE = "world.port"  # firmware/app/node/simlink.py reads it
LOG_FILE = "world.log"
MAX_DEVICES = 256  # a device is one byte in a request


def with_world(config: dict) -> dict:
    """A virtual board's config.json, with `world` true when it has simulated sensors ("sim" in a
    spec) or stands in a building: they then run in a world process beside the node. A `world`
    the config sets itself is kept."""
    if "building" in config or any("sim" in s for s in config.get("sensors") or ()):
        return {"world": True, **config}
    return config


class World:
    """The building and the devices the node opened; `request` answers one frame of node.simlink."""

    def __init__(self, cfg: dict):
        from node import bus, sim
        from node import simlink as link
        from node.port import port

        self.bus, self.sim, self.clock = bus, sim, port.epoch
        self.building = None
        if "building" in cfg:
            from node.sim import building

            self.building = building.install(cfg["building"])
        self.devices: list = []
        self.ids: dict[tuple, int] = {}
        self.specs: dict[tuple, dict] = {}  # (kind, sensor) -> the spec its devices were made from
        self.samples: dict[int, array.array] = {}  # a microphone's buffer, shaped as the node's
        self.all = link.ALL
        self.ops = {
            link.HELLO: self.hello,
            link.OPEN: self.open,
            link.I2C_WRITE: self.i2c_write,
            link.I2C_READ: self.i2c_read,
            link.UART_WRITE: self.uart_write,
            link.UART_READ: self.uart_read,
            link.I2S_READ: self.i2s_read,
            link.EDGE_POP: self.edge_pop,
        }

    def request(self, op: int, dev: int, data: bytes) -> tuple[int, bytes]:
        """(status, payload): 0; 19 when the device NACKs (gone), as machine.I2C raises; 22 with the
        reason when a request cannot be served (no such simulated device, a bad spec)."""
        try:
            return 0, self.ops[op](dev, data)
        except Exception as e:
            if isinstance(e, OSError) and e.args[:1] == (19,):  # OSError(19): errno is None
                return 19, b""
            if not isinstance(e, ValueError):
                traceback.print_exc()  # a fault of the simulation itself: world.log shows it
            return 22, (str(e) or repr(e)).encode()[:1000]

    def hello(self, dev: int, data: bytes) -> bytes:
        """The simulated ms now, day 0's midnight (0 without a building) and the speed in 1/1000."""
        b = self.building
        if b is None:
            return b"%d 0 1000" % self.bus.ticks_ms()
        return b"%d %d %d" % (b.ms(), b.midnight, round(b.speed * 1000))

    def open(self, dev: int, data: bytes) -> bytes:
        what, kind, spec, pin, rate = json.loads(data)
        name = spec.get("name", kind)
        key = (what, kind, name, pin)
        if key not in self.ids:
            if len(self.devices) == MAX_DEVICES:
                raise ValueError(f"world: more than {MAX_DEVICES} devices")
            spec = self.specs.setdefault((kind, name), spec)  # a beam pair's two pins share one
            self.devices.append(self.sim.device(what, kind, spec, self.clock, pin, rate))
            self.ids[key] = len(self.devices) - 1
        return bytes((self.ids[key],))

    def i2c_write(self, dev: int, data: bytes) -> bytes:
        self.devices[dev].writeto(data[0], data[1:])
        return b""

    def i2c_read(self, dev: int, data: bytes) -> bytes:
        buf = bytearray(data[1] << 8 | data[2])
        self.devices[dev].readfrom_into(data[0], buf)
        return bytes(buf)

    def uart_write(self, dev: int, data: bytes) -> bytes:
        self.devices[dev].write(data)
        return b""

    def uart_read(self, dev: int, data: bytes) -> bytes:
        n = int.from_bytes(data, "big")
        return self.devices[dev].read(None if n == self.all else n) or b""

    def i2s_read(self, dev: int, data: bytes) -> bytes:
        n = int.from_bytes(data, "big")  # int16 items, as the node's buffer holds
        buf = self.samples.get(dev)
        if buf is None or len(buf) != n:
            buf = self.samples[dev] = array.array("h", bytes(2 * n))
        got = self.devices[dev].readinto(buf)
        return memoryview(buf).cast("B")[:got].tobytes()

    def edge_pop(self, dev: int, data: bytes) -> bytes:
        e = self.devices[dev].pop()
        return b"" if e is None else (e[0] << 1 | int(e[1])).to_bytes(8, "big")


def serve(world: World, listener: socket.socket) -> None:
    """One node connection at a time, for ever: a rebooted node connects again."""
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print("world: node connected", flush=True)
        with conn, conn.makefile("rb") as rx:
            try:
                while True:
                    head = rx.read(4)
                    if len(head) < 4:
                        break  # the node reset or lost power
                    n = head[2] << 8 | head[3]
                    data = rx.read(n)
                    if len(data) < n:
                        break
                    status, out = world.request(head[0], head[1], data)
                    conn.sendall(bytes((status, len(out) >> 8, len(out) & 0xFF)) + out)
            except OSError:
                pass
        print("world: node gone", flush=True)


def main(root: str) -> None:
    os.chdir(root)
    sys.path.insert(0, str(FIRMWARE / "app"))
    world = World(json.loads(Path("config.json").read_text()))
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    Path(PORT_FILE + ".tmp").write_text(port)
    os.replace(PORT_FILE + ".tmp", PORT_FILE)

    def end(*_) -> None:
        try:
            if Path(PORT_FILE).read_text() == port:
                os.unlink(PORT_FILE)
        except OSError:
            pass
        os._exit(0)

    def watch(parent: int) -> None:  # a world never outlives what started it (a test, a runner)
        while os.getppid() == parent:
            time.sleep(1)
        end()

    signal.signal(signal.SIGTERM, end)
    threading.Thread(target=watch, args=(os.getppid(),), daemon=True).start()
    print(f"world: {Path.cwd()} on 127.0.0.1:{port}", flush=True)
    serve(world, listener)


if __name__ == "__main__":
    main(sys.argv[1])
