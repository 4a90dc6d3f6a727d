"""The broker as the fleet owns it: users, ACL by device pattern, and a local Mosquitto process.

The fleet is the only writer of the broker's password and ACL files. Tests and `maille demo` run a
private Mosquitto through `LocalBroker`; a production broker gets the same files and a SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

FLEET_USER = "fleet"

# A device writes its own up-topics and reads its own down-topics; %u is its user name = device id.
DEVICE_ACL = """\
pattern write maille/v1/%u/state
pattern write maille/v1/%u/telemetry
pattern write maille/v1/%u/health
pattern write maille/v1/%u/ack
pattern write maille/v1/%u/ota/status
pattern read maille/v1/%u/stored
pattern read maille/v1/%u/config
pattern read maille/v1/%u/cmd
pattern read maille/v1/%u/ota
"""

# Production-fit limits: a persistent ingest session may hold a large queue while ingest restarts,
# and the queue is saved to disk often (Mosquitto's defaults: 1,000 messages, every 30 minutes).
# max_inflight_messages: ingest acknowledges a QoS 1 message only once its batch is committed, and
# Mosquitto sends a client at most this many unacknowledged messages. It must be at least 2 × the
# ingest batch size (500): one batch being stored while the next fills. At 100, a batch could never
# hold more than 100 messages and receiving stalled during every commit.
QUEUE_SETTINGS = """\
max_queued_messages 1000000
max_inflight_messages 1000
max_packet_size 65536
persistence true
autosave_interval 5
autosave_on_changes false
persistent_client_expiration 30d
"""


def hash_password(password: str, *, iterations: int = 101, salt: bytes | None = None) -> str:
    """Mosquitto 2 `$7$` password hash (PBKDF2-HMAC-SHA512), as `mosquitto_passwd` writes it."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash (lets a sync keep a hash instead of re-salting it)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3])
    except ValueError:
        return False
    return secrets.compare_digest(hash_password(password, iterations=int(parts[2]), salt=salt), hashed)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not exe:
        raise RuntimeError("mosquitto is not installed: run `make setup` or `sudo apt-get install mosquitto`")
    return exe


@dataclass
class BrokerUsers:
    """Password and ACL files for Mosquitto, written atomically from the fleet's list of users."""

    root: Path
    hashes: dict[str, str] = field(default_factory=dict)
    admins: set[str] = field(default_factory=set)
    readers: dict[str, list[str]] = field(default_factory=dict)  # API tokens' accounts: what they read
    # The fleet also writes the site topics (under maille/#) and Home Assistant's discovery documents.
    discovery_prefix: str = "homeassistant"

    @property
    def password_file(self) -> Path:
        return self.root / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "acl"

    def set_user(self, name: str, password: str, *, admin: bool = False) -> None:
        self.set_hash(name, hash_password(password), admin=admin)

    def set_hash(self, name: str, hashed: str, *, admin: bool = False) -> None:
        """A user whose `$7$` hash the fleet stored (its password is not known here)."""
        self.hashes[name] = hashed
        if admin:
            self.admins.add(name)

    def set_reader(self, name: str, hashed: str, topics: list[str]) -> None:
        """A read-only user (an API token's broker account) limited to these topic filters."""
        self.hashes[name] = hashed
        self.readers[name] = list(topics)

    def remove_user(self, name: str) -> None:
        self.hashes.pop(name, None)
        self.admins.discard(name)
        self.readers.pop(name, None)

    def render(self) -> tuple[str, str]:
        """The password file's and the ACL file's text."""
        passwd = "".join(f"{u}:{h}\n" for u, h in sorted(self.hashes.items()))
        admin_blocks = "".join(
            f"user {u}\ntopic readwrite maille/#\ntopic readwrite {self.discovery_prefix}/#\n"
            "topic read $SYS/#\n\n"
            for u in sorted(self.admins)
        )
        reader_blocks = "".join(
            f"user {u}\n" + "".join(f"topic read {t}\n" for t in topics) + "\n"
            for u, topics in sorted(self.readers.items())
        )
        return passwd, admin_blocks + reader_blocks + DEVICE_ACL

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        passwd, acl = self.render()
        atomic_write(self.password_file, passwd)
        atomic_write(self.acl_file, acl)


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Readers (Mosquitto on SIGHUP) see the old file or the new one, never half of it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class LocalBroker:
    """A private Mosquitto on a free loopback port, with auth, ACL and persistence under `root`."""

    def __init__(self, root: Path, port: int | None = None, host: str = "127.0.0.1", tls: bool = False):
        self.root = Path(root)
        self.host = host
        self.port = port or free_port()
        # With tls, a second listener speaks MQTT over TLS with a certificate from a private CA
        # (fleet.tls) valid for `localhost`; nodes verify it with tls_files["ca_der"].
        self.tls_port = free_port() if tls else None
        self.tls_files: dict[str, Path] = {}
        self.users = BrokerUsers(self.root)
        self.fleet_password = new_password()
        self.users.set_user(FLEET_USER, self.fleet_password, admin=True)
        self.proc: subprocess.Popen | None = None

    @property
    def conf_file(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def fleet_url(self) -> str:
        return f"mqtt://{FLEET_USER}:{self.fleet_password}@{self.host}:{self.port}"

    def _tls_listener(self) -> str:
        if not self.tls_port:
            return ""
        if not self.tls_files:
            from fleet.tls import make_ca_and_server

            self.tls_files = make_ca_and_server(self.root / "tls", ("localhost", self.host))
        f = self.tls_files
        return (
            f"listener {self.tls_port} {self.host}\n"
            f"cafile {f['ca']}\ncertfile {f['cert']}\nkeyfile {f['key']}\ntls_version tlsv1.2\n"
        )

    def write_config(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.users.write()
        self.conf_file.write_text(
            # Mosquitto started as root drops to user `mosquitto`, which cannot read our private files.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.users.password_file}\n"
            f"acl_file {self.users.acl_file}\n"
            f"persistence_location {self.root / 'data'}/\n"
            + QUEUE_SETTINGS
            + f"log_dest file {self.log_file}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            # per_listener_settings is off: both listeners share the users and the ACL above
             + self._tls_listener()
        )

    def start(self, timeout: float = 10.0) -> LocalBroker:
        self.write_config()
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited at start ({self.proc.returncode}): {err}{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def reload(self) -> None:
        """Re-read users and ACL (after `users` changed): revocations apply to new connections."""
        self.users.write()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: whatever the broker had not saved is lost, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
