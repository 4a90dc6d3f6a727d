"""The serial steps through real esptool against a fake board at the serial port boundary."""

from __future__ import annotations

import fcntl
import os

import pytest

from provisioning.boards import load_board
from provisioning.flash import ProvisionError, firmware_decision, provision_board, push_command, push_tree
from provisioning.image import fs_image, merged_image, read_firmware
from provisioning.serial_log import watch
from tests.provisioning import standin
from tests.provisioning.conftest import PASSWORD


def provision(port, board, files, **kw):
    kw.setdefault("connect_attempts", 3)  # the 3rd is esptool's classic DTR/RTS reset
    return provision_board(port, board, files, **kw)


def test_good_flash_lands_the_merged_image_in_flash(fake, esp32, files, firmware, capsys):
    chip = fake("good")
    steps = []
    r = provision(chip.url, esp32, files, firmware=firmware, progress=lambda s, m, f: steps.append(s))
    assert (r.chip, r.flash_size, r.mac) == ("ESP32", 4 << 20, "24:0a:c4:12:34:56")
    assert r.firmware_written and r.firmware_reason == "no MicroPython on the board"
    assert r.writes == [(0x1000, len(firmware)), (0x310000, 0xF0000)]
    # both regions in one session: one connection, one stub upload, then compressed writes
    assert chip.writes == [(0x1000, len(firmware)), (0x310000, 0xF0000)]
    assert chip.commands.count("MEM_END") == 1 and chip.commands.count("FLASH_DEFL_BEGIN") == 2
    merged = merged_image(esp32, firmware, fs_image(esp32, files))
    assert bytes(chip.flash[: len(merged)]) == merged  # every byte where the merged image says
    assert bytes(chip.flash[len(merged) :]) == b"\xff" * (len(chip.flash) - len(merged))
    assert chip.boots[-2:] == ["download", "app"]  # reset into the bootloader, hard reset after
    assert steps[0] == "connect" and "write" in steps and "reset" in steps
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err + r.esptool_log


def test_same_firmware_is_not_written_again(fake, esp32, files, firmware):
    chip = fake("again")
    provision(chip.url, esp32, files, firmware=firmware)
    r = provision(chip.url, esp32, files, firmware=firmware)
    assert not r.firmware_written and r.installed_version == "v1.24.1"
    assert "already on the board" in r.firmware_reason
    assert r.writes == [(0x310000, 0xF0000)] and chip.writes[-1] == (0x310000, 0xF0000)


def test_older_firmware_is_replaced_newer_kept(fake, esp32, files):
    chip = fake("older")
    provision(chip.url, esp32, files, firmware=standin.firmware(esp32, version="v1.22.0", build="x"))
    r = provision(chip.url, esp32, files, firmware=standin.firmware(esp32, version="v1.24.1", build="y"))
    assert r.firmware_written and r.firmware_reason == "MicroPython v1.22.0 on the board, writing v1.24.1"
    r = provision(chip.url, esp32, files, firmware=standin.firmware(esp32, version="v1.23.0", build="z"))
    assert not r.firmware_written and "newer MicroPython (v1.24.1)" in r.firmware_reason
    r = provision(
        chip.url,
        esp32,
        files,
        firmware=standin.firmware(esp32, version="v1.23.0", build="z"),
        force_firmware=True,
    )
    assert r.firmware_written


def test_decision_rules():
    a = read_firmware(
        standin.firmware(load_board("esp32-devkitc"), "v1.24.1", "a"), load_board("esp32-devkitc")
    ).app
    assert firmware_decision(None, a) == (True, "no MicroPython on the board")
    assert firmware_decision(a, a)[0] is False


def test_no_answer(fake, esp32, files, firmware):
    chip = fake("mute", answers=False)
    with pytest.raises(ProvisionError) as e:
        provision(chip.url, esp32, files, firmware=firmware)
    assert e.value.code == "no_answer"
    assert str(e.value).startswith(f"No answer from a board on {chip.url}")
    assert "Hold BOOT, press and release EN (RESET), release BOOT" in str(e.value)
    assert chip.writes == []


def test_wrong_chip_esp32_found_for_an_s3_board_file(fake, files):
    s3 = load_board("esp32-s3-devkitc-1")
    chip = fake("classic", chip="esp32", flash_size=8 << 20)
    with pytest.raises(ProvisionError) as e:
        provision(chip.url, s3, files)
    assert e.value.code == "wrong_chip"
    assert str(e.value).startswith(
        f"Wrong chip: the board file esp32-s3-devkitc-1 says ESP32-S3, the board on {chip.url} is an ESP32."
    )
    assert "esp32-devkitc" in str(e.value) and "olimex-esp32-poe" in str(e.value)  # the boards that fit
    assert chip.writes == []


def test_wrong_chip_s3_found_for_an_esp32_board_file(fake, esp32, files):
    chip = fake("s3", chip="esp32s3", flash_size=8 << 20)  # detected through GET_SECURITY_INFO's chip id
    with pytest.raises(ProvisionError, match="says ESP32, the board on fakeesp://s3 is an ESP32-S3") as e:
        provision(chip.url, esp32, files)
    assert e.value.code == "wrong_chip"


def test_s3_board_is_written_at_offset_zero(fake, files):
    s3 = load_board("esp32-s3-devkitc-1")
    chip = fake("s3ok", chip="esp32s3", flash_size=8 << 20)
    fw = standin.firmware(s3)
    r = provision(chip.url, s3, files, firmware=fw)
    assert r.writes == [(0x0, len(fw)), (0x310000, 0x4F0000)]
    assert bytes(chip.flash[: len(fw)]) == fw


def test_flash_too_small(fake, esp32, files, firmware):
    chip = fake("small", flash_size=2 << 20)
    with pytest.raises(ProvisionError) as e:
        provision(chip.url, esp32, files, firmware=firmware)
    assert e.value.code == "flash_too_small"
    assert str(e.value).startswith(
        f"Flash too small: the board on {chip.url} has 2 MB of flash, the board file esp32-devkitc needs 4 MB"
    )
    assert chip.writes == []


def test_no_board_on_the_port(esp32, files, tmp_path):
    for port in ("fakeesp://nothing-here", str(tmp_path / "ttyUSB7")):
        with pytest.raises(ProvisionError) as e:
            provision(port, esp32, files)
        assert e.value.code == "no_board"
        assert str(e.value).startswith(f"No board on {port}: nothing is connected there.")


def test_port_busy(fake, esp32, files):
    import serial

    chip = fake("busy")
    other = serial.serial_for_url(chip.url, exclusive=True)  # a serial monitor left open
    try:
        with pytest.raises(ProvisionError) as e:
            provision(chip.url, esp32, files)
    finally:
        other.close()
    assert e.value.code == "port_busy"
    assert str(e.value).startswith(f"Port {chip.url} is busy: another program has it open")


def test_port_busy_on_a_real_tty(esp32, files):
    """A real pseudo-terminal locked by another open file, as a serial monitor's lock would."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    held = os.open(name, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ProvisionError) as e:
            provision(name, esp32, files)
        assert e.value.code == "port_busy"
    finally:
        for fd in (held, slave, master):
            os.close(fd)


def test_unreadable_firmware_is_refused_before_touching_the_board(fake, esp32, files, tmp_path):
    chip = fake("fw")
    bad = tmp_path / "firmware.elf"
    bad.write_bytes(b"\x7fELF" + bytes(64))
    with pytest.raises(ProvisionError) as e:
        provision(chip.url, esp32, files, firmware=bad)
    assert e.value.code == "firmware_unreadable" and "0xE9" in str(e.value)
    assert chip.commands == []


def test_board_that_never_comes_online(fake, esp32, files, firmware):
    console = (
        b"loader: starting app slot a\r\nnode bliiida-2-14-a fw 0.3.0 boot 1 (power_on) on esp32\r\n"
        b"mqtt: broker refused the connection: not authorized: wrong user name or password, or no access "
        b"(CONNACK 5)\r\n"
    )
    chip = fake("refused", console=console * 2)
    provision(chip.url, esp32, files, firmware=firmware)
    d, text = watch(chip.url, timeout=1.0)
    assert "CONNACK 5" in text
    assert d.code == "broker_refused" and not d.online
    assert d.summary == "The broker refused the node's credentials (user name or password)."
    assert d.action.startswith("The password on the board does not match the fleet's")


def test_board_that_comes_online(fake, esp32, files, firmware):
    chip = fake(
        "online",
        console=b"mqtt: cannot reach broker broker.lan:1883 (OSError(113,))\r\n"
        b"mqtt: connected to broker.lan:1883 as bliiida-2-14-a\r\nsent seq=1\r\n",
    )
    provision(chip.url, esp32, files, firmware=firmware)
    d, _ = watch(chip.url, timeout=5.0)
    assert d.online and "accepted" in d.summary


def test_push_copies_the_same_tree_with_mpremote(esp32, files):
    seen = {}

    def runner(cmd, cwd, **kw):
        import subprocess
        from pathlib import Path

        seen["cmd"] = cmd
        seen["tree"] = {
            p.relative_to(cwd).as_posix(): p.read_bytes() for p in Path(cwd).rglob("*") if p.is_file()
        }
        return subprocess.CompletedProcess(cmd, 0, "", "")

    r = push_tree("/dev/ttyUSB0", files, runner=runner)
    assert seen["tree"] == files
    assert r.push_command == seen["cmd"]
    assert seen["cmd"][1:] == [
        "connect",
        "/dev/ttyUSB0",
        "fs",
        "cp",
        "-r",
        "app",
        "boot.py",
        "ca.der",
        "config.json",
        "creds.json",
        "main.py",
        ":",
        "+",
        "reset",
    ]
    assert seen["cmd"][0].endswith("mpremote")
    assert PASSWORD not in " ".join(seen["cmd"])
    assert push_command("COM3", files)[2] == "COM3"


def test_push_failures_are_explained(files):
    import subprocess

    def fail(out):
        return lambda cmd, cwd, **kw: subprocess.CompletedProcess(cmd, 1, "", out)

    with pytest.raises(ProvisionError) as e:
        push_tree("/dev/ttyUSB0", files, runner=fail("mpremote: could not enter raw repl"))
    assert e.value.code == "no_micropython" and "without --push" in str(e.value)
    with pytest.raises(ProvisionError) as e:
        push_tree(
            "/dev/ttyUSB3",
            files,
            runner=fail("mpremote: failed to access /dev/ttyUSB3 (it may be in use by another program)"),
        )
    assert e.value.code == "push_failed"
