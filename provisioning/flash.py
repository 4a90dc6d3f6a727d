"""Writing a node: a real board through esptool (used as a library), mpremote, or a virtual board.

`provision_board(port, board, files, firmware=None, push=False, progress=None)` is the one entry:

* `sim:DIR` — the files are written into DIR as a virtual board folder (`VirtualBoard(DIR)` runs it).
* `push=True` — the board already runs MicroPython: the same tree is copied with mpremote.
* otherwise — one esptool session: detect the chip and flash size and check them against the
  board file, decide whether MicroPython must be written (see `firmware_decision`), write the
  firmware (when needed) and the LittleFS image at the board's filesystem offset, verify (esptool
  checks the MD5 of every region it wrote), hard reset.

Every failure is a `ProvisionError` whose `code` names it and whose message tells the technician
what to do (docs/technicians.md lists them). Nothing here logs config or credentials: esptool sees
the filesystem image as bytes and its output is kept in `ProvisionResult.esptool_log`.
"""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioning import esplog
from provisioning.boards import CHIP_NAMES, Board
from provisioning.image import (
    ImageError,
    check_firmware,
    flash_plan,
    fs_image,
    parse_app_desc,
    read_firmware,
)
from provisioning.tree import write_tree

# progress(step, message, fraction): step is one of connect, check, firmware, write, reset, push, sim.
Progress = Callable[[str, str, float | None], None]

SIM_PREFIX = "sim:"
# Left alone in a virtual board folder when it is provisioned again: its flash's runtime data, and its
# world's (provisioning/world.py).
SIM_KEEP = ("data", "console.log", "link-down", "board.pid", "world.port", "world.log", "building.log")


class ProvisionError(Exception):
    """A step failed. `code` names the failure, str(e) is the technician's message."""

    def __init__(self, code: str, message: str, detail: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail  # esptool's or pyserial's own words, for a bug report


@dataclass
class ProvisionResult:
    port: str
    board: str
    target: str  # "serial", "push" or "sim"
    chip: str | None = None  # as esptool names it ("ESP32")
    mac: str | None = None
    flash_size: int | None = None
    firmware_written: bool = False
    firmware_reason: str = ""
    installed_version: str | None = None  # MicroPython on the board before (app descriptor)
    image_version: str | None = None
    writes: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)
    files: int = 0
    sim_dir: Path | None = None
    push_command: list[str] | None = None
    esptool_log: str = ""


def _noop(step: str, message: str, fraction: float | None = None) -> None:
    pass


# --- failure messages ------------------------------------------------------------------------
def explain(e: BaseException, port: str) -> ProvisionError:
    """esptool's and pyserial's exceptions as the technician's messages."""
    text = str(e)
    low = text.lower()
    err = getattr(e, "errno", None)
    if err == errno.ENOENT or "no such file" in low or "errno 2]" in low or "filenotfounderror" in low:
        return ProvisionError(
            "no_board",
            f"No board on {port}: nothing is connected there. Plug the board in with a data USB cable "
            "(some cables only charge) and check the port name (`ls /dev/ttyUSB* /dev/ttyACM*`; on "
            "Windows, COMn in the Device Manager).",
            text,
        )
    if (
        "exclusively lock" in low
        or "resource temporarily unavailable" in low
        or "resource busy" in low
        or err in (errno.EBUSY, errno.EAGAIN)
    ):
        return ProvisionError(
            "port_busy",
            f"Port {port} is busy: another program has it open (a serial monitor, Thonny, screen, "
            "mpremote, or another maille run). Close it and run the command again.",
            text,
        )
    if "permission denied" in low or err == errno.EACCES:
        return ProvisionError(
            "port_permission",
            f"No permission to open {port}: add yourself to the serial group "
            "(`sudo usermod -aG dialout $USER`, then log out and in again).",
            text,
        )
    if "wrong boot mode" in low:
        return ProvisionError(
            "no_answer",
            f"The board on {port} did not enter download mode by itself: hold its BOOT button, press "
            "and release EN (RESET), release BOOT, and run the command again.",
            text,
        )
    if "failed to autodetect chip" in low or "unexpected chip" in low:
        return ProvisionError(
            "wrong_chip",
            f"The device on {port} answers but is not an ESP chip this tool knows: check that this is "
            "the sensor node and not another USB device.",
            text,
        )
    if (
        "failed to connect" in low
        or "no serial data received" in low
        or "timed out waiting for packet" in low
        or "invalid head of packet" in low
        or "no more data to read" in low
    ):
        return ProvisionError(
            "no_answer",
            f"No answer from a board on {port}: the port opens but no ESP bootloader replies. Hold "
            "BOOT, press and release EN (RESET), release BOOT, and run again; if it persists, try "
            "another USB cable or port (the board may have no power, or its USB chip no driver).",
            text,
        )
    return ProvisionError(
        "esptool_failed", f"esptool failed on {port}: {text.splitlines()[0] if text else e!r}", text
    )


# --- firmware decision -----------------------------------------------------------------------
def firmware_decision(installed, image, force: bool = False) -> tuple[bool, str]:
    """Whether to write MicroPython, and why: from the app descriptors (esp_app_desc_t).

    The descriptor is what the ESP-IDF build of MicroPython stamps at the start of its app: project
    name, version (e.g. "v1.24.1") and the SHA-256 of the ELF it was built from. We write when the
    board has no MicroPython app, an older version, or another build of the same version; we keep
    it when it is the same build (same ELF hash) or newer (unless `force`).
    """
    if image is None:
        return True, "the image has no app descriptor to compare: writing it"
    if force:
        return True, "firmware write forced"
    if installed is None or installed.project != image.project:
        return True, "no MicroPython on the board"
    if installed.elf_sha256 == image.elf_sha256:
        return False, f"MicroPython {installed.version} already on the board (same build)"
    iv, nv = installed.version_tuple, image.version_tuple
    if iv is not None and nv is not None and iv > nv:
        return False, (
            f"the board has a newer MicroPython ({installed.version}) than the image "
            f"({image.version}): kept (force the firmware write to downgrade)"
        )
    return True, f"MicroPython {installed.version} on the board, writing {image.version}"


# --- the serial session ----------------------------------------------------------------------
def _flash_bytes(size: str | None) -> int | None:
    if not size:
        return None
    m = re.fullmatch(r"(\d+)(KB|MB)", size)
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) == "KB" else 1024 * 1024)


def flash_serial(
    port: str,
    board: Board,
    fs: bytes,
    firmware: str | Path | bytes | None = None,
    *,
    force_firmware: bool = False,
    progress: Progress | None = None,
    baud: int = 460800,
    connect_attempts: int = 7,
) -> ProvisionResult:
    """One esptool session on `port`: checks, firmware (when needed) + filesystem, verify, reset."""
    import serial
    from esptool.cmds import attach_flash, detect_chip, detect_flash_size, reset_chip, run_stub, write_flash
    from esptool.util import FatalError

    progress = progress or _noop
    result = ProvisionResult(port=port, board=board.name, target="serial")
    info = None
    if firmware is not None:
        try:
            info = read_firmware(firmware, board)
            check_firmware(info, board)
        except ImageError as e:
            raise ProvisionError("firmware_unreadable", str(e)) from None
        result.image_version = info.app.version if info.app else None

    def bar(done: int, total: int) -> None:
        progress("write", "writing", done / total if total else None)

    with esplog.capture(bar) as sink:
        progress("connect", f"connecting to {port}", None)
        try:
            esp = detect_chip(port, 115200, "default-reset", connect_attempts=connect_attempts)
        except (FatalError, serial.SerialException, OSError) as e:
            raise explain(e, port) from None
        try:
            result.chip = esp.CHIP_NAME
            if esp.CHIP_NAME != board.chip_name:
                raise ProvisionError(
                    "wrong_chip",
                    f"Wrong chip: the board file {board.name} says {board.chip_name}, the board on {port} "
                    f"is an {esp.CHIP_NAME}. Use --board with a board file for this chip "
                    f"({_boards_for(esp.CHIP_NAME)}), or connect the right board.",
                )
            progress("check", f"{esp.CHIP_NAME} found, checking its flash", None)
            esp = run_stub(esp)
            if baud and baud != 115200:
                esp.change_baud(baud)
            attach_flash(esp)
            result.mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            size = _flash_bytes(detect_flash_size(esp))
            result.flash_size = size
            if size is None:
                raise ProvisionError(
                    "flash_unknown",
                    f"The flash size of the board on {port} cannot be read "
                    "(unknown flash chip): check the board is the one in the board file.",
                )
            if size < board.flash_size:
                raise ProvisionError(
                    "flash_too_small",
                    f"Flash too small: the board on {port} has {size // 1048576} MB of flash, the board file "
                    f"{board.name} needs {board.flash_size // 1048576} MB (its filesystem ends at "
                    f"{(board.fs_offset + board.fs_size):#x}). "
                    "Use a board file for this module or another board.",
                )
            write_fw = False
            if info is not None:
                installed = parse_app_desc(esp.read_flash(board.app_offset, 0x200))
                result.installed_version = installed.version if installed else None
                write_fw, result.firmware_reason = firmware_decision(installed, info.app, force_firmware)
            else:
                result.firmware_reason = "no firmware image given: the filesystem only"
            progress("firmware", result.firmware_reason, None)
            plan = flash_plan(board, info.data if write_fw else None, fs)
            result.firmware_written = write_fw
            result.writes = [(off, len(data)) for off, data in plan]
            progress("write", f"writing {sum(len(d) for _, d in plan)} bytes", 0.0)
            # flash_mode/freq/size "keep": the image's bootloader header is written as it is.
            write_flash(esp, plan, flash_freq="keep", flash_mode="keep", flash_size="keep")
            progress("reset", "hard reset", None)
            reset_chip(esp, "hard-reset")
        except ProvisionError:
            raise
        except (FatalError, serial.SerialException, OSError) as e:
            pe = explain(e, port)
            if pe.code in ("no_answer", "esptool_failed"):
                pe = ProvisionError(
                    "write_failed",
                    f"The connection to {port} failed during the session "
                    f"({str(e).splitlines()[0]}): nothing is lost; run the same command "
                    "again, it writes everything again.",
                    str(e),
                )
            raise pe from None
        finally:
            try:
                esp._port.close()
            except Exception:
                pass
        result.esptool_log = sink.text()
    return result


def _boards_for(chip_name: str) -> str:
    from provisioning.boards import list_boards, load_board

    chip = next((k for k, v in CHIP_NAMES.items() if v == chip_name), None)
    names = []
    for n in list_boards():
        try:
            if load_board(n).chip == chip:
                names.append(n)
        except Exception:
            continue
    return ", ".join(names) or "none yet: add one in boards/"


# --- mpremote --------------------------------------------------------------------------------
def mpremote_executable() -> str:
    beside = Path(sys.executable).with_name("mpremote")
    return str(beside) if beside.exists() else (shutil.which("mpremote") or "mpremote")


def push_command(port: str, files: dict[str, bytes]) -> list[str]:
    """The mpremote command line that copies the tree (laid out in its cwd) to the board, then resets it."""
    top = sorted({rel.split("/", 1)[0] for rel in files})
    return [mpremote_executable(), "connect", port, "fs", "cp", "-r", *top, ":", "+", "reset"]


def push_tree(
    port: str,
    files: dict[str, bytes],
    *,
    progress: Progress | None = None,
    runner=subprocess.run,
    timeout: float = 300,
) -> ProvisionResult:
    """Copy the tree to a board that already runs MicroPython (mpremote over its REPL)."""
    progress = progress or _noop
    result = ProvisionResult(port=port, board="", target="push", files=len(files))
    with tempfile.TemporaryDirectory(prefix="maille-push-") as tmp:
        write_tree(Path(tmp), files)
        cmd = push_command(port, files)
        result.push_command = cmd
        progress("push", f"copying {len(files)} files with mpremote", None)
        try:
            r = runner(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise ProvisionError("mpremote_missing", "mpremote is not installed: run `make setup`.") from None
        except subprocess.TimeoutExpired:
            raise ProvisionError(
                "no_answer",
                f"mpremote got no answer from {port} in {timeout:.0f} s: the "
                "board may not run MicroPython (provision without --push) or be busy.",
            ) from None
    if r.returncode != 0:
        out = (r.stderr or "") + (r.stdout or "")
        if "no device found" in out.lower() or "no such file" in out.lower():
            raise explain(FileNotFoundError(errno.ENOENT, out), port)
        if "busy" in out.lower() or "could not exclusively lock" in out.lower():
            raise explain(OSError(errno.EBUSY, out), port)
        if "could not enter raw repl" in out.lower():
            raise ProvisionError(
                "no_micropython",
                f"The board on {port} does not answer as MicroPython "
                "(no raw REPL): provision it without --push to write MicroPython.",
                out,
            )
        raise ProvisionError(
            "push_failed", f"mpremote failed on {port}: {out.strip().splitlines()[-1:]}", out
        )
    return result


# --- virtual boards --------------------------------------------------------------------------
def write_sim(directory: Path, files: dict[str, bytes]) -> None:
    """Lay the tree in a virtual board folder; app files of an earlier run that are gone are removed
    (a stale .py would shadow its new .mpy), the board's runtime data (data/, console) is kept."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in sorted(directory.rglob("*")):
        rel = old.relative_to(directory).as_posix()
        if old.is_file() and rel.split("/", 1)[0] not in SIM_KEEP and rel not in files:
            old.unlink()
    write_tree(directory, files)


# --- the entry point -------------------------------------------------------------------------
def provision_board(
    port: str,
    board: Board,
    files: dict[str, bytes],
    firmware: str | Path | bytes | None = None,
    push: bool = False,
    progress: Progress | None = None,
    *,
    force_firmware: bool = False,
    baud: int = 460800,
    connect_attempts: int = 7,
) -> ProvisionResult:
    """Write the node's files (from `build_files`) to `port` — a serial port, or `sim:DIR`.

    Serial: one esptool session writes MicroPython from `firmware` (when the board lacks it or has
    an older one) and the LittleFS image of `files` at the board's filesystem offset, then resets
    the board. `push=True` copies `files` with mpremote instead (MicroPython already there).
    Raises ProvisionError with the technician's message.
    """
    progress = progress or _noop
    t0 = time.monotonic()
    if port.startswith(SIM_PREFIX):
        directory = Path(port[len(SIM_PREFIX) :]).expanduser()
        if not str(directory):
            raise ProvisionError("bad_port", "sim: needs a folder, e.g. --port sim:./boards/node-1")
        progress("sim", f"writing {len(files)} files into {directory}", None)
        write_sim(directory, files)
        return ProvisionResult(
            port=port,
            board=board.name,
            target="sim",
            files=len(files),
            sim_dir=directory,
            chip="host",
            firmware_reason="virtual board: no firmware",
        )
    if board.virtual:
        raise ProvisionError(
            "bad_board",
            f"the board {board.name} is virtual: use --port sim:DIR, or --board with the real board's file",
        )
    if push:
        r = push_tree(port, files, progress=progress)
        r.board = board.name
        return r
    try:
        fs = fs_image(board, files)
    except ImageError as e:
        raise ProvisionError("fs_too_big", str(e)) from None
    result = flash_serial(
        port,
        board,
        fs,
        firmware,
        force_firmware=force_firmware,
        progress=progress,
        baud=baud,
        connect_attempts=connect_attempts,
    )
    result.files = len(files)
    progress("reset", f"done in {time.monotonic() - t0:.1f} s", 1.0)
    return result
