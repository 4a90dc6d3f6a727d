"""`maille provision` and `maille device replace`: from a blank board (or a `sim:DIR` folder) to a
registered node online in its room, in one call that can be run again.

Steps, each reported through `report(step, message)`: register the device in its room; give it
broker credentials and sync the broker; build its files; write them (esptool, mpremote or the
folder); for a virtual board start it; wait until the fleet has its birth and a reading (the console
says why not); make its label.

Run again, the same command finds the same device (same port or folder and room, or the same name
in the room, or the room's expected node from the site file) and changes nothing it need not:
* credentials: the fleet keeps only their hash, so a password can be kept only where it can be read
  back, a virtual board's creds.json. A serial board's filesystem is rewritten whole on every run (one
  esptool session), so it gets a new password each time and the previous one is revoked; a run that
  fails after that leaves the board refused by the broker until it is run again.
* files: a virtual board's folder that already holds them is not written (nor restarted); esptool
  skips a firmware already on the board;
* label: kept unless something about the device changed.

A replacement (`replace=OLD`) is the same flow for the logical device OLD on a new board: its room,
sensors and readings stay; the old board's credentials are revoked (Mosquitto drops its session on
the reload, see fleet.broker_admin); the new board's sequence numbers start above what the fleet
stored (`data/seq`), so none of its readings collides with the old board's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import ascii_lowercase

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet import audit, broker_admin, credentials, registry
from fleet.contract import DEVICE_ID
from fleet.models import Device, DeviceStatus, Reading, Room, Site, utcnow
from fleet.settings import Settings, parse_mqtt_url
from fleet.sites import SiteError, device_id_for, find_room, site_wifi
from provisioning import label, serial_log
from provisioning.boards import Board, BoardError, load_board
from provisioning.flash import SIM_KEEP, SIM_PREFIX, ProvisionError, provision_board
from provisioning.image import ImageError, build_files, find_cached_firmware, make_config
from provisioning.virtual import detached_pid, start_detached, stop_detached

Report = Callable[[str, str], None]
# Starts (or restarts) the virtual board in a folder: detached for the CLI, owned by a test otherwise.
SimRunner = Callable[[Path, bool], None]

# Registration and broker syncs of a batch's threads one at a time: two boards of one room must not
# take the same letter, and a sync must not write the files from a view missing another's credential.
_registry_lock = threading.Lock()


class ProvisionFailed(Exception):
    """A step failed; str(e) is what the technician reads, `code` names the failure."""

    def __init__(self, step: str, message: str, code: str = ""):
        super().__init__(message)
        self.step, self.code = step, code or step


class Job(BaseModel):
    """One board to provision: the command's options, or a row of a batch file."""

    port: str
    site: str = ""  # from the device for a replacement
    room: str = ""
    board: str | None = None  # default: sim for sim:DIR, else esp32-devkitc
    name: str | None = None
    firmware: Path | None = None
    push: bool = False
    new_credentials: bool = False
    timeout: float = 120.0

    @property
    def sim_dir(self) -> Path | None:
        return Path(self.port[len(SIM_PREFIX) :]).expanduser() if self.port.startswith(SIM_PREFIX) else None

    @property
    def board_name(self) -> str:
        return self.board or ("sim" if self.sim_dir else "esp32-devkitc")


@dataclass
class Outcome:
    device_id: str
    site: str
    room: str
    port: str
    board: str
    credentials: str  # kept, issued
    written: bool  # False: the board already held these files
    firmware: str  # what was decided about MicroPython
    online: str  # the node's state as its console and the fleet show it
    label: Path | None


def detached_runner(root: Path, restart: bool) -> None:
    """The CLI's runner: the board keeps running after the command (stop: `maille sim-stop DIR`)."""
    if restart:
        stop_detached(root)
    if detached_pid(root) is None:
        console = root / "console.log"
        size = console.stat().st_size if console.exists() else 0
        start_detached(root)
        deadline = time.monotonic() + 5  # its start line, so the console is not judged on the last run
        while time.monotonic() < deadline and (not console.exists() or console.stat().st_size == size):
            time.sleep(0.05)


@dataclass
class _Registered:
    device_id: str
    site: str
    room: str
    name: str | None
    password: str
    credentials: str
    seq_seed: int | None
    wifi: dict | None
    changed: bool


def _noop(step: str, message: str) -> None:
    pass


class Provisioner:
    def __init__(
        self, engine: Engine, settings: Settings, who: str = "cli", sim_runner: SimRunner = detached_runner
    ):
        self.engine, self.settings, self.who, self.sim_runner = engine, settings, who, sim_runner

    def run(self, job: Job, report: Report = _noop, replace: str | None = None) -> Outcome:
        started = utcnow()
        try:
            board = load_board(job.board_name)
        except BoardError as e:
            raise ProvisionFailed("board", str(e)) from None
        if board.virtual != bool(job.sim_dir):
            raise ProvisionFailed(
                "board",
                f"the board {board.name} is virtual: use --port sim:DIR"
                if board.virtual
                else f"the board {board.name} is real: a sim:DIR port needs --board sim",
            )
        with _registry_lock:
            reg = self._register(job, board, replace, report)
        if reg.credentials == "issued" and reg.seq_seed is not None:
            report("broker", "waiting for the last readings of the board whose credentials went")
            reg.seq_seed = self._settled_seed(reg.device_id)
        files = self._files(board, reg, job)
        written, fw = self._write(job, board, files, report)
        if job.sim_dir is not None:
            report("start", f"starting the virtual board in {job.sim_dir}")
            self.sim_runner(job.sim_dir, written)
        online = self._wait_online(job, reg.device_id, started, report)
        png = self.settings.labels_dir / f"{reg.device_id}.png"
        if reg.changed or written or not png.exists() or not png.with_suffix(".svg").exists():
            report("label", "making the label")
            png = label.make_label(
                reg.device_id, reg.site, reg.room, self.settings.labels_dir, name=reg.name
            ).png
        else:
            report("label", "label kept")
        return Outcome(
            reg.device_id, reg.site, reg.room, job.port, board.name, reg.credentials, written, fw, online, png
        )

    # --- register and credentials (under the lock) ----------------------------------------------
    def _register(self, job: Job, board: Board, replace: str | None, report: Report) -> _Registered:
        report("register", "registering the device")
        with Session(self.engine) as s:
            if replace:
                device = s.get(Device, replace)
                if device is None:
                    raise ProvisionFailed("register", f"unknown device {replace!r}: nothing to replace")
                changed = self._replace(s, device, job, board)
            else:
                try:
                    site, room = find_room(s, job.site, job.room)
                except SiteError as e:
                    raise ProvisionFailed("register", str(e)) from None
                device, changed = self._device(s, site, room, job, board)
            password, state = self._credentials(s, device, job, bool(replace))
            s.commit()
            if state != "kept":
                report("broker", "syncing the broker's users")
                try:
                    broker_admin.sync(s, self.settings)
                except broker_admin.BrokerAdminError as e:
                    raise ProvisionFailed("broker", str(e)) from None
            site = s.get(Site, device.site_id)
            room = s.get(Room, device.room_id) if device.room_id else None
            return _Registered(
                device_id=device.id,
                site=site.slug,
                room=room.name if room else "",
                name=device.name,
                password=password,
                credentials=state,
                seq_seed=None if device.stored_seq is None else device.stored_seq + 1,
                wifi=site_wifi(s, site),
                changed=changed or state != "kept",
            )

    def _device(self, s: Session, site: Site, room: Room, job: Job, board: Board) -> tuple[Device, bool]:
        """The room's device this job is about (see the module's doc), registered or updated."""
        in_room = s.exec(select(Device).where(Device.room_id == room.id).order_by(Device.id)).all()
        device = (
            next((d for d in in_room if d.provisioned_from == job.port), None)
            or next((d for d in in_room if job.name and d.name == job.name), None)
            or next((d for d in in_room if d.declared and d.provisioned_from is None and not job.name), None)
        )
        wanted = {"board": board.name, "provisioned_from": job.port}
        if job.name:
            wanted["name"] = job.name
        if device is not None:
            changes = {k: v for k, v in wanted.items() if getattr(device, k) != v}
            if changes:
                registry.update_device(s, self.who, device, changes)
            return device, bool(changes)
        taken = set(s.exec(select(Device.id)).all())
        device_id = next(
            (i for i in (device_id_for(site.slug, room.name, c) for c in ascii_lowercase) if i not in taken),
            "",
        )
        if not DEVICE_ID.match(device_id):
            raise ProvisionFailed(
                "register",
                f"no device id fits for {site.slug} room {room.name} ({device_id!r}): shorten the names",
            )
        data = {"id": device_id, "site_id": site.id, "room_id": room.id, **wanted}
        return registry.create_device(s, self.who, data), True

    def _replace(self, s: Session, device: Device, job: Job, board: Board) -> bool:
        """The logical device moves to the new board: recorded; its credentials follow in _credentials."""
        before = audit.snapshot(device)
        device.board, device.provisioned_from = board.name, job.port
        s.add(device)
        s.flush()
        audit.record(s, self.who, "replace", "device", device.id, before, audit.snapshot(device))
        return True

    def _credentials(self, s: Session, device: Device, job: Job, replacing: bool) -> tuple[str, str]:
        """The board's password: kept when a virtual board already holds the active one, else new."""
        if job.sim_dir is not None and not (replacing or job.new_credentials):
            try:
                held = json.loads((job.sim_dir / "creds.json").read_text())
            except (OSError, ValueError):
                held = {}
            if held.get("user") == device.id and credentials.matches(s, device.id, held.get("password", "")):
                return held["password"], "kept"
        return credentials.issue(s, device.id, self.who, issued_for=job.port), "issued"

    def _settled_seed(self, device_id: str, quiet: float = 1.0, limit: float = 10.0) -> int:
        """The first sequence number above everything the fleet will store under this id: the board
        that held the revoked credentials was just dropped, and ingest may still be committing what
        it sent last, so wait until the stored watermark stays put for `quiet` seconds."""
        last, since, deadline = None, time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            with Session(self.engine) as s:
                seq = s.get(Device, device_id).stored_seq
            if seq != last:
                last, since = seq, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.1)
        return last + 1

    # --- files, writing, waiting ----------------------------------------------------------------
    def _files(self, board: Board, reg: _Registered, job: Job) -> dict[str, bytes]:
        target = parse_mqtt_url(self.settings.node_broker_url or self.settings.mqtt_url)
        extra = dict(self.settings.node_config)
        mqtt = {"host": target.host, "port": target.port, **({"tls": True} if target.tls else {})}
        mqtt.update(extra.pop("mqtt", {}))
        config = make_config(
            board, reg.device_id, reg.site, reg.room, mqtt, network=reg.wifi, name=reg.name, **extra
        )
        try:
            files = build_files(
                board,
                config,
                {"user": reg.device_id, "password": reg.password},
                ca=self.settings.node_ca_file if target.tls else None,
                release_pubkey=self.settings.release_public_key,
            )
        except ImageError as e:
            raise ProvisionFailed("build", str(e)) from None
        if reg.seq_seed is not None and _held_seq(job.sim_dir) < reg.seq_seed:
            files["data/seq"] = str(reg.seq_seed).encode()  # SeqCounter's next number
        return files

    def _write(self, job: Job, board: Board, files: dict[str, bytes], report: Report) -> tuple[bool, str]:
        if job.sim_dir is not None and _folder_holds(job.sim_dir, files):
            report("write", "the board already holds these files")
            return False, "virtual board: no firmware"
        firmware = job.firmware
        if firmware is None and not (job.push or board.virtual):
            firmware = find_cached_firmware(board)
        try:
            result = provision_board(
                job.port, board, files, firmware, job.push, lambda step, msg, frac: report("write", msg)
            )
        except ProvisionError as e:
            raise ProvisionFailed("write", e.message, e.code) from None
        return True, result.firmware_reason

    def _wait_online(self, job: Job, device_id: str, started, report: Report) -> str:
        """Success only once the fleet has the device online with a reading from this run."""
        report("online", "waiting for the node's birth and first reading")
        deadline = time.monotonic() + job.timeout
        diagnosis, _ = serial_log.watch(job.port, timeout=job.timeout)
        if not diagnosis.online:
            raise ProvisionFailed(
                "online",
                f"{device_id} did not come online within {job.timeout:g} s. "
                f"{diagnosis.summary} {diagnosis.action}",
                diagnosis.code,
            )
        while time.monotonic() < deadline:
            with Session(self.engine) as s:
                device = s.get(Device, device_id)
                fresh = s.exec(
                    select(Reading.id)
                    .where(Reading.device_id == device_id, col(Reading.received_at) >= started)
                    .limit(1)
                ).first()
                if device.status == DeviceStatus.online and fresh is not None:
                    return "online, readings stored"
            time.sleep(0.2)
        raise ProvisionFailed(
            "online",
            f"{device_id} says it is online and sending, but the fleet stored no reading from it within "
            f"{job.timeout:g} s: check that the fleet service (maille serve) runs on this database "
            "and broker.",
            "not_stored",
        )


def _held_seq(sim_dir: Path | None) -> int:
    """The next sequence number a virtual board's flash already holds (-1 for a serial board)."""
    try:
        return int((sim_dir / "data" / "seq").read_text()) if sim_dir else -1
    except (OSError, ValueError):
        return -1


def _folder_holds(root: Path, files: dict[str, bytes]) -> bool:
    """The folder has exactly these files (its runtime data aside)."""
    for rel, data in files.items():
        path = root / rel
        if not path.is_file() or path.read_bytes() != data:
            return False
    extra = (
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.relative_to(root).parts[0] not in SIM_KEEP
        and p.relative_to(root).as_posix() not in files
    )
    return next(extra, None) is None
