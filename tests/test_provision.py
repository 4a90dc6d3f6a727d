"""`maille provision`, `--batch`, `maille device replace` and `maille broker sync`, through the CLI,
against a broker of the test's own (its files are the fleet's to write), the fleet service, real
virtual boards (micropython) and, for the serial steps, the fake serial port of tests/provisioning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from fleet.broker import LocalBroker, verify_password
from fleet.cli import app
from fleet.models import AuditLog, Device, DeviceCredential, Reading
from provisioning.virtual import detached_pid, stop_detached
from tests.helpers import wait_until
from tests.provisioning import fakeesp, standin

SITE = """\
[site]
slug = "test-site"
name = "Test site"

[[building]]
slug = "main"
name = "Main"

[[building.floor]]
name = "1"
level = 1

[[building.floor.room]]
name = "1.01"

[[building.floor.room]]
name = "1.02"

[[building.floor.room]]
name = "1.03"
"""


class Bench:
    """A technician's bench: settings in the environment, a fleet running, a CLI to call."""

    def __init__(self, tmp_path: Path, broker: LocalBroker, engine, monkeypatch):
        self.tmp, self.broker, self.engine = tmp_path, broker, engine
        self.labels = tmp_path / "labels"
        self.sims: list[Path] = []
        env = {
            "MAILLE_SETTINGS_FILE": str(tmp_path / "no-settings.toml"),
            "MAILLE_MQTT_URL": broker.fleet_url,
            "MAILLE_BROKER_PASSWORD_FILE": str(broker.users.password_file),
            "MAILLE_BROKER_ACL_FILE": str(broker.users.acl_file),
            "MAILLE_BROKER_RELOAD": f"kill -HUP {broker.proc.pid}",
            "MAILLE_NODE_CONFIG": json.dumps(
                {"sample_interval_s": 0.5, "health_interval_s": 2, "mqtt": {"keepalive": 5}}
            ),
            "MAILLE_LABELS_DIR": str(self.labels),
            "COLUMNS": "400",  # Rich: whole table rows, whole messages
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)

    def maille(self, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    def sim(self, name: str) -> Path:
        path = self.tmp / "boards" / name
        self.sims.append(path)
        return path

    def rows(self, model, *order):
        with Session(self.engine) as s:
            return [r.model_dump() for r in s.exec(select(model).order_by(*order)).all()]

    def devices(self) -> dict[str, dict]:
        """Device rows without what the node itself changes while it runs (presence, health, seq)."""
        live = {"status", "last_seen", "last_state_at", "boot", "reset", "mode", "last_health", "fw"}
        live |= {"stored_seq", "lifecycle", "config_version", "boots_base", "boots_since", "sleep_s"}
        return {d["id"]: {k: v for k, v in d.items() if k not in live} for d in self.rows(Device, Device.id)}


@pytest.fixture
def bench(tmp_path, db_url, fleet_service, monkeypatch):
    broker = LocalBroker(tmp_path / "mosquitto").start()
    monkeypatch.setenv("MAILLE_DATABASE_URL", db_url)
    b = Bench(tmp_path, broker, fleet_service.engine, monkeypatch)
    site = tmp_path / "test-site.toml"
    site.write_text(SITE)
    b.maille("site", "apply", site)
    b.fleet = fleet_service(on=broker)
    yield b
    for d in b.sims:
        stop_detached(d)
    broker.stop()


def connack(broker: LocalBroker, user: str, password: str) -> str:
    """How the broker answers a device's CONNECT: "Success", or "Not authorized" (CONNACK 5, which
    paho names by its MQTT 5 reason)."""
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}", protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.on_connect = lambda c_, u, f, rc, p: got.append(str(rc))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        wait_until(lambda: got, 5, what="CONNACK")
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0]


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a board folder but its runtime data: content and mtime."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("data", "console.log", "board.pid")
    }


def test_broker_sync_revocation_drops_a_connected_device(bench):
    """Mosquitto 2.0 re-checks connected clients on SIGHUP: a revoked device is cut off at once."""
    from fleet import credentials
    from fleet.registry import register_device

    with Session(bench.engine) as s:
        register_device(s, "test-site-probe", "test-site", "1.01")
        password = credentials.issue(s, "test-site-probe", "test")
        s.commit()
    assert "files rewritten, broker reloaded" in bench.maille("broker", "sync")
    assert "unchanged" in bench.maille("broker", "sync")  # the fleet's own hash is kept, not re-salted
    events = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-site-probe", protocol=mqtt.MQTTv311)
    c.username_pw_set("test-site-probe", password)
    c.on_connect = lambda *a: events.append("connected")
    c.on_disconnect = lambda *a: events.append("dropped")
    c.reconnect_delay_set(30, 30)
    c.connect(bench.broker.host, bench.broker.port)
    c.loop_start()
    try:
        wait_until(lambda: events == ["connected"], 5, what="connected")
        with Session(bench.engine) as s:
            credentials.revoke(s, "test-site-probe", "test")
            s.commit()
        bench.maille("broker", "sync")
        wait_until(lambda: "dropped" in events, 3, what="the broker drops the revoked session")
    finally:
        c.loop_stop()
    assert connack(bench.broker, "test-site-probe", password) == "Not authorized"
    passwd = bench.broker.users.password_file.read_text()
    assert password not in passwd and "test-site-probe" not in passwd


def test_batch_of_three_virtual_boards_twice(bench):
    dirs = [bench.sim(f"node-{i}") for i in range(3)]
    batch = bench.tmp / "floor1.toml"
    batch.write_text(
        "".join(
            f'[[board]]\nport = "sim:{d}"\nsite = "test-site"\nroom = "1.0{i + 1}"\n'
            f'name = "Room 1.0{i + 1}"\n\n'
            for i, d in enumerate(dirs)
        )
    )
    out = bench.maille("provision", "--batch", batch, "--timeout", 60)
    ids = [f"test-site-1-0{i + 1}-a" for i in range(3)]
    for device_id in ids:
        assert device_id in out
    with Session(bench.engine) as s:
        for device_id, d in zip(ids, dirs, strict=True):
            device = s.get(Device, device_id)
            assert device.status == "online" and device.provisioned_from == f"sim:{d}"
            assert s.exec(select(Reading).where(Reading.device_id == device_id)).first() is not None
    creds = bench.rows(DeviceCredential, DeviceCredential.id)
    assert len(creds) == 3 and len({c["hash"] for c in creds}) == 3
    passwords = [json.loads((d / "creds.json").read_text())["password"] for d in dirs]
    assert len(set(passwords)) == 3
    hashes = {c["device_id"]: c["hash"] for c in creds}  # issued in parallel: in any order
    for device_id, pw in zip(ids, passwords, strict=True):
        assert verify_password(pw, hashes[device_id])
    for device_id in ids:
        assert (bench.labels / f"{device_id}.png").exists() and (bench.labels / f"{device_id}.svg").exists()
    audit_text = json.dumps(bench.rows(AuditLog, AuditLog.id), default=str)
    for pw in passwords:
        assert pw not in out and pw not in audit_text
        assert pw not in bench.broker.log_tail(500)

    # the same command again changes nothing
    before = (
        bench.devices(),
        creds,
        [tree(d) for d in dirs],
        {p.name: p.stat().st_mtime_ns for p in bench.labels.iterdir()},
        bench.rows(AuditLog, AuditLog.id),
        [detached_pid(d) for d in dirs],
        bench.broker.users.password_file.stat().st_mtime_ns,
    )
    out = bench.maille("provision", "--batch", batch, "--timeout", 60)
    assert out.count("kept") == 3 and out.count("unchanged") == 3
    after = (
        bench.devices(),
        bench.rows(DeviceCredential, DeviceCredential.id),
        [tree(d) for d in dirs],
        {p.name: p.stat().st_mtime_ns for p in bench.labels.iterdir()},
        bench.rows(AuditLog, AuditLog.id),
        [detached_pid(d) for d in dirs],
        bench.broker.users.password_file.stat().st_mtime_ns,
    )
    assert after == before


def test_replacement_keeps_the_device_and_its_history_and_refuses_the_old_board(bench):
    old_dir, new_dir = bench.sim("old"), bench.sim("new")
    bench.maille(
        "provision", "--port", f"sim:{old_dir}", "--site", "test-site", "--room", "1.02", "--timeout", 60
    )
    device_id = "test-site-1-02-a"
    old_password = json.loads((old_dir / "creds.json").read_text())["password"]
    with Session(bench.engine) as s:
        wait_until(lambda: (s.get(Device, device_id, populate_existing=True).stored_seq or 0) >= 3, 20)
        stored = s.get(Device, device_id, populate_existing=True).stored_seq
    old_console = (old_dir / "console.log").stat().st_size

    out = bench.maille("device", "replace", device_id, "--port", f"sim:{new_dir}", "--timeout", 60)
    assert device_id in out and "issued" in out
    # the old board, still powered, is dropped and then refused (CONNACK 5 in its console)
    wait_until(lambda: "CONNACK 5" in (old_dir / "console.log").read_text()[old_console:], 15)
    assert connack(bench.broker, device_id, old_password) == "Not authorized"
    new_config = json.loads((new_dir / "config.json").read_text())
    assert new_config["device_id"] == device_id and new_config["room"] == "1.02"

    with Session(bench.engine) as s:
        device = s.get(Device, device_id)
        assert device.provisioned_from == f"sim:{new_dir}" and device.room_id is not None
        creds = s.exec(select(DeviceCredential).order_by(DeviceCredential.id)).all()
        assert [c.revoked_at is None for c in creds] == [False, True]
        replaced = s.exec(select(AuditLog).where(AuditLog.action == "replace")).one()
        assert replaced.entity_id == device_id and replaced.before["provisioned_from"] == f"sim:{old_dir}"

    def sent(board: Path) -> list[int]:
        return [int(m) for m in re.findall(r"^sent seq=(\d+)$", (board / "console.log").read_text(), re.M)]

    def stored_seqs() -> set[int]:
        with Session(bench.engine) as s:
            return set(s.exec(select(Reading.seq).where(Reading.device_id == device_id)).all())

    wait_until(lambda: len(sent(new_dir)) >= 5, 20, what="the new board's readings")
    old_sent, new_sent = sent(old_dir), sent(new_dir)
    assert stored < min(new_sent) and max(old_sent) < min(new_sent)  # no sequence number reused
    # one history under one device id: everything either board sent is stored
    wait_until(lambda: stored_seqs() >= set(old_sent) | set(new_sent), 10, what="all readings stored")


# --- the serial steps through the command, against the fake serial port ----------------------
@pytest.fixture
def fake():
    fakeesp.install()
    made = []

    def make(name, **kw):
        chip = fakeesp.FakeChip(name, **kw)
        made.append(chip)
        return chip

    yield make
    for chip in made:
        fakeesp.CHIPS.pop(chip.name, None)


@pytest.fixture
def firmware(tmp_path):
    from provisioning.boards import load_board

    path = tmp_path / "ESP32_GENERIC-20241129-v1.24.1.bin"
    path.write_bytes(standin.firmware(load_board("esp32-devkitc"), version="v1.24.1", build="a"))
    return path


def test_serial_no_answer(bench, fake, firmware):
    chip = fake("mute", answers=False)
    out = bench.maille(
        "provision",
        "--port",
        chip.url,
        "--site",
        "test-site",
        "--room",
        "1.01",
        "--firmware",
        firmware,
        code=1,
    )
    assert f"No answer from a board on {chip.url}" in out and "Hold BOOT" in out
    assert chip.writes == []


def test_serial_wrong_chip(bench, fake, firmware):
    chip = fake("s3", chip="esp32s3", flash_size=8 << 20)
    out = bench.maille(
        "provision",
        "--port",
        chip.url,
        "--site",
        "test-site",
        "--room",
        "1.01",
        "--firmware",
        firmware,
        code=1,
    )
    assert "Wrong chip: the board file esp32-devkitc says ESP32" in " ".join(out.split())
    assert chip.writes == []


def test_serial_board_that_never_comes_online(bench, fake, firmware):
    console = (
        b"loader: starting app slot a\r\nmqtt: broker refused the connection: not authorized (CONNACK 5)\r\n"
    )
    chip = fake("refused", console=console)
    out = bench.maille(
        "provision", "--port", chip.url, "--site", "test-site", "--room", "1.01",
        "--firmware", firmware, "--timeout", 2, code=1,
    )  # fmt: skip
    flat = " ".join(out.split())
    assert "did not come online within 2 s" in flat
    assert "The broker refused the node's credentials (user name or password)." in flat
    assert chip.writes[-1] == (0x310000, 0xF0000)  # the filesystem was written before the wait
    # what was written holds the device's identity and the password the fleet has the hash of
    from provisioning.image import read_fs_image

    files = read_fs_image(bytes(chip.flash[0x310000 : 0x310000 + 0xF0000]))
    creds = json.loads(files["creds.json"])
    with Session(bench.engine) as s:
        active = s.exec(select(DeviceCredential).where(DeviceCredential.revoked_at.is_(None))).one()
    assert creds["user"] == active.device_id == "test-site-1-01-a"
    assert verify_password(creds["password"], active.hash) and creds["password"] not in out


def test_unknown_room_is_explained(bench, tmp_path):
    out = bench.maille(
        "provision", "--port", f"sim:{tmp_path / 'x'}", "--site", "test-site", "--room", "9.99", code=1
    )
    assert "no room '9.99' in site test-site" in " ".join(out.split())


def test_doc_commands_match_the_cli():
    """Every `maille …` option the technicians' and integrators' guides use exists in --help."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "technicians.md").read_text() + (docs / "integrators.md").read_text()
    runner = CliRunner()
    for line in re.findall(r"^maille (.+?)(?:\\)?$", text, re.M):
        words = line.split()
        command = [w for w in words if not w.startswith("-")][:2]
        help_text = runner.invoke(app, [*command[:1], "--help"]).output
        if command[:1] in (["device"], ["site"], ["broker"], ["board"]):
            help_text = runner.invoke(app, [*command, "--help"]).output
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in help_text, (
                f"{option} of `maille {line}` is not in `maille {' '.join(command)} --help`"
            )
