"""What every benchmark shares: the machine's description, results files, a broker, databases."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# MAILLE_BENCH_SRC: a folder holding another `fleet` (and `firmware`) to measure, e.g. a snapshot of a
# commit (`git archive <rev> fleet firmware | tar -x -C DIR`) while the work tree is being changed.
SRC = os.environ.get("MAILLE_BENCH_SRC")
if SRC:
    sys.path.insert(0, SRC)

from fleet.broker import LocalBroker, find_mosquitto  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PYTHON = sys.executable


def source() -> dict:
    """Which fleet code is measured: the commit, and whether fleet/ differs from it."""
    src = SRC or str(ROOT)
    info = {"src": src}
    if SRC and (Path(SRC) / "COMMIT").exists():
        info["snapshot_of"] = (Path(SRC) / "COMMIT").read_text().strip()
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if not SRC:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "fleet", "firmware"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            info["work_tree_changes"] = len(dirty.splitlines())
    except OSError:
        pass
    return info


def machine() -> dict:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    try:
        mosq = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError, RuntimeError):
        mosq = None
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "mosquitto": mosq,
        "load_avg_at_start": os.getloadavg(),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def finish(name: str, summary: dict, details: dict) -> Path:
    """Write details to bench/results/<name>-<timestamp>.json and print the one-line JSON summary."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    summary = {"bench": name, **summary, "details": str(path.relative_to(ROOT))}
    path.write_text(json.dumps({"summary": summary, **details}, indent=1, default=str) + "\n")
    print(json.dumps(summary, default=str), flush=True)
    return path


def log(*args) -> None:
    """Progress goes to stderr: stdout carries only the JSON summary line."""
    print(*args, file=sys.stderr, flush=True)


# --- broker --------------------------------------------------------------------------------------


def _raise_nofile(limit: int | None):
    def pre() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if limit is None else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    return pre


def shipped_inflight() -> int:
    """`max_inflight_messages` of the fleet's shipped broker config (QUEUE_SETTINGS)."""
    from fleet.broker import QUEUE_SETTINGS

    return int(re.search(r"(?m)^max_inflight_messages (\d+)$", QUEUE_SETTINGS).group(1))


class BenchBroker(LocalBroker):
    """The fleet's LocalBroker config (users, ACL, QUEUE_SETTINGS), with two bench-only knobs:

    - `max_inflight`: replaces QUEUE_SETTINGS' `max_inflight_messages` (None keeps the shipped value);
    - the process is started with its open-file limit raised to the hard limit (10,000 nodes need
      10,000 sockets; Mosquitto's own `max_connections` is -1, unlimited, by default, so the
      process's RLIMIT_NOFILE is the real cap).
    """

    def __init__(self, root: Path, max_inflight: int | None = None, log_connections: bool = True):
        super().__init__(root)
        self.max_inflight = max_inflight
        self.log_connections = log_connections

    def write_config(self) -> None:
        super().write_config()
        text = self.conf_file.read_text()
        if self.max_inflight is not None:
            text = re.sub(
                r"(?m)^max_inflight_messages \d+$", f"max_inflight_messages {self.max_inflight}", text
            )
        if not self.log_connections:
            text = text.replace("connection_messages true", "connection_messages false").replace(
                "log_type information\n", ""
            )
        self.conf_file.write_text(text)

    def start(self, timeout: float = 10.0) -> BenchBroker:
        import socket

        self.write_config()
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_raise_nofile(None),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")


# --- databases -----------------------------------------------------------------------------------


def postgres_url() -> str:
    return os.environ.get("MAILLE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@contextmanager
def fresh_database(kind: str, workdir: Path):
    """A new empty database URL: a SQLite file in `workdir`, or a PostgreSQL database dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = postgres_url()
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"maille_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_available() -> bool:
    try:
        from sqlalchemy import create_engine, text

        e = create_engine(postgres_url())
        with e.connect() as c:
            c.execute(text("select 1"))
        e.dispose()
        return True
    except Exception:
        return False


def rss_of(pid: int) -> int | None:
    """Resident memory of a process, bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
