"""Why a node is not online, read from its console: a real board's serial port or a virtual board's log.

`diagnose(text)` turns console text into a `Diagnosis`: a code, what is wrong in the technician's
words, and what to do. It reads what the firmware and MicroPython print:

* the loader and app (`firmware/loader/main.py`, `node/app.py`): "net: link <status>" (status from
  the port: wrong_password, no_ap, connecting, down...), "mqtt: broker refused the connection: ...
  (CONNACK n)", "mqtt: cannot reach broker HOST:PORT (...)", "mqtt: connected to ...", "sent seq=N",
  "config: ..." (a bad config.json), "loader: the app crashed", SAFE MODE;
* sensor drivers' SensorFault reasons when they are printed ("sht4x: no answer at 0x44", lines
  with "SensorFault" or "sensor fault");
* MicroPython's ESP32 port: "The filesystem appears to be corrupted" (image not mountable),
  "Performing initial setup" (an empty filesystem: our files are not there), and ESP-IDF Wi-Fi
  events when its log is on ("STA_DISCONNECTED, reason:202", "GOT_IP").

Only the console since the board's last start is judged (ROM banner "rst:" or a virtual board's
"--- board start" line), and for the network the latest state wins: a board that could not reach
the broker and then connected is online.

`watch(port, timeout)` reads the console until the node is online, or the time is up, and
returns the diagnosis; `read_serial(port, seconds)` and `read_virtual(dir)` just read.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT_MARKERS = re.compile(r"^(?:rst:0x[0-9a-f]+|--- board start)", re.M)


@dataclass
class Diagnosis:
    code: str  # online, wifi_refused, wifi_no_ap, no_address, link_down, broker_refused, broker_unreachable,
    #            sensor_missing, config_invalid, app_crashed, fs_corrupt, fs_empty, silent, starting
    summary: str
    action: str
    evidence: str = ""  # the console line it was read from
    also: list[Diagnosis] = field(default_factory=list)  # further findings (e.g. a sensor fault)

    @property
    def online(self) -> bool:
        return self.code == "online"

    def __str__(self) -> str:
        return f"{self.summary} {self.action}"


def _last(pattern: str, text: str, flags=re.M) -> re.Match | None:
    found = None
    for found in re.finditer(pattern, text, flags):  # noqa: B007 (the last match is the one wanted)
        pass
    return found


def since_last_boot(text: str) -> str:
    starts = [m.start() for m in BOOT_MARKERS.finditer(text)]
    return text[starts[-1] :] if starts else text


def _sensor_faults(text: str) -> list[Diagnosis]:
    out, seen = [], set()
    for m in re.finditer(
        r"^.*(?:SensorFault|sensor fault|no answer at 0x[0-9a-f]+|: no answer$|"
        r"no audio samples|beam [AB] blocked).*$",
        text,
        re.M | re.I,
    ):
        line = m.group(0).strip()
        sm = re.search(
            r"([a-z0-9_]+): (no answer(?: at 0x[0-9a-f]+)?|no audio samples|beam [AB] blocked)", line, re.I
        )
        name = sm.group(1) if sm else "a sensor"
        if name in seen:
            continue
        seen.add(name)
        out.append(
            Diagnosis(
                "sensor_missing",
                f"Sensor {name} does not answer ({line}).",
                "Check its wiring and power against the pins in the board file (SDA/SCL, UART TX/RX "
                "swapped?), and its address; the node runs and reports the fault meanwhile.",
                line,
            )
        )
    return out


def diagnose(text: str) -> Diagnosis:
    """What the console says about why the node is (not) online, and what to do."""
    t = since_last_boot(text)
    faults = _sensor_faults(t)
    if not t.strip():
        return Diagnosis(
            "silent",
            "Nothing on the console.",
            "Check the board has power and the port is right; press EN (RESET) to see it boot. "
            "A board that stays silent after reset has no firmware: provision it without --push.",
        )

    def pick(d: Diagnosis) -> Diagnosis:
        d.also = [f for f in faults if f.code != d.code]
        return d

    if m := _last(r"^.*filesystem appears to be corrupted.*$", t, re.M | re.I):
        return pick(
            Diagnosis(
                "fs_corrupt",
                "MicroPython cannot mount the filesystem that was written.",
                "Provision the board again; if it repeats, the board file's filesystem offset does "
                "not match the firmware's partition table.",
                m.group(0).strip(),
            )
        )
    if m := _last(r"^Performing initial setup.*$", t):
        return pick(
            Diagnosis(
                "fs_empty",
                "MicroPython found an empty filesystem: the node's files are not there.",
                "Provision the board again (without --push), and check the board file's filesystem offset.",
                m.group(0).strip(),
            )
        )
    if m := _last(r"^config: (.*)$", t):
        return pick(
            Diagnosis(
                "config_invalid",
                f"The node's configuration is refused: {m.group(1)}.",
                "Provision the board again so config.json is rebuilt from the registry.",
                m.group(0),
            )
        )
    online = _last(r"^mqtt: connected to .*$", t)
    net = _last(
        r"^(?:net: link \w+|.*STA_DISCONNECTED, reason:\s*\d+.*|.*\bGOT_IP\b.*|"
        r"mqtt: broker refused the connection.*|mqtt: cannot reach broker.*|mqtt: connected to .*)$",
        t,
    )
    crash = _last(r"^loader: the app crashed:?$", t)
    if crash and (net is None or crash.start() > net.start()):
        tail = t[crash.end() :].strip().splitlines()
        last = next((ln for ln in reversed(tail) if re.match(r"^\w*(Error|Exception)\b", ln.strip())), "")
        return pick(
            Diagnosis(
                "app_crashed",
                f"The app crashed at start{': ' + last.strip() if last else ''}.",
                "Send the console (maille provision keeps it) to the developers; after 3 failed "
                "starts the node comes up in safe mode and can be updated remotely.",
                last.strip() or crash.group(0),
            )
        )
    if net is not None and net.group(0).startswith("mqtt: connected"):
        sent = re.search(r"^sent seq=\d+$", t[net.end() :], re.M)
        d = Diagnosis(
            "online",
            "The node is online"
            + (
                " and its readings are accepted."
                if sent
                else " (connected to the broker; no reading sent yet)."
            ),
            "",
            online.group(0),
        )
        return pick(d)
    if net is not None:
        line = net.group(0).strip()
        if "broker refused" in line:
            code = re.search(r"CONNACK (\d+)", line)
            n = int(code.group(1)) if code else 0
            if n in (4, 5):
                return pick(
                    Diagnosis(
                        "broker_refused",
                        "The broker refused the node's credentials (user name or password).",
                        "The password on the board does not match the fleet's: provision the board again "
                        "(new credentials are issued and written); if the device was replaced, the old "
                        "board's credentials are revoked on purpose.",
                        line,
                    )
                )
            return pick(
                Diagnosis(
                    "broker_refused",
                    f"The broker refused the connection ({line[6:]}).",
                    "Check the broker (its identifier rules and that it accepts MQTT 3.1.1).",
                    line,
                )
            )
        if line.startswith("mqtt: cannot reach broker"):
            hp = re.search(r"broker (\S+?):(\d+)", line)
            where = f"{hp.group(1)}:{hp.group(2)}" if hp else "the broker"
            return pick(
                Diagnosis(
                    "broker_unreachable",
                    f"The node is on the network but cannot reach the broker at {where}.",
                    "Check the broker address in the site settings (a name the site's DNS resolves, not "
                    "localhost), that the broker runs, and that the site's firewall lets the node out to "
                    "that port.",
                    line,
                )
            )
        reason = re.search(r"reason:\s*(\d+)", line)
        status = re.match(r"net: link (\w+)", line)
        st = status.group(1) if status else None
        rc = int(reason.group(1)) if reason else None
        if st == "wrong_password" or rc in (2, 15, 202, 204):
            return pick(
                Diagnosis(
                    "wifi_refused",
                    "The Wi-Fi refused the node: wrong Wi-Fi password.",
                    "Check the site's Wi-Fi password in the site file and provision again.",
                    line,
                )
            )
        if st == "no_ap" or rc == 201:
            return pick(
                Diagnosis(
                    "wifi_no_ap",
                    "The node does not see the site's Wi-Fi network.",
                    "Check the network name (SSID) in the site file, that it is on 2.4 GHz (the "
                    "ESP32 has no 5 GHz radio), and the distance to the access point.",
                    line,
                )
            )
        if st == "connecting" or (rc is None and "GOT_IP" not in line and st is None):
            return pick(
                Diagnosis(
                    "no_address",
                    "The node joins the Wi-Fi but gets no IP address (DHCP).",
                    "Check the DHCP server of that network has free leases and does not filter "
                    "by MAC address; the access point may also block new clients.",
                    line,
                )
            )
        if st in ("down", "idle", "failed"):
            return pick(
                Diagnosis(
                    "link_down",
                    "The node has no network link.",
                    "Ethernet: check the cable and that the switch port is up (PoE powered). "
                    "Wi-Fi: check the site file has the network's name and password.",
                    line,
                )
            )
    if faults:
        first = faults[0]
        first.also = faults[1:]
        return first
    return Diagnosis(
        "starting",
        "The node has started but has not reached the network yet.",
        "Wait a little longer; if nothing changes, look at the console for the last message.",
        t.strip().splitlines()[-1] if t.strip() else "",
    )


# --- reading consoles -------------------------------------------------------------------------
def open_console(port: str, baud: int = 115200):
    """The board's serial console, opened without pulsing EN/IO0 (DTR and RTS stay released)."""
    import serial

    ser = serial.serial_for_url(port, do_not_open=True, baudrate=baud, timeout=0.2)
    ser.dtr = False
    ser.rts = False
    ser.open()
    return ser


def read_serial(port: str, seconds: float, baud: int = 115200) -> str:
    ser = open_console(port, baud)
    try:
        buf = bytearray()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            buf += ser.read(4096)
        return buf.decode("utf-8", "replace").replace("\r\n", "\n")
    finally:
        ser.close()


def read_virtual(directory: str | Path) -> str:
    try:
        return (Path(directory) / "console.log").read_text(errors="replace")
    except OSError:
        return ""


def watch(port: str, timeout: float = 60.0, baud: int = 115200, settle: float = 0.0) -> tuple[Diagnosis, str]:
    """Read the console (a serial port, or `sim:DIR`) until the node is online or `timeout` passes.

    Returns the diagnosis and the console text read. `settle`: once online, keep reading this long
    (to catch a first reading's `sent seq=`).
    """
    deadline = time.monotonic() + timeout
    if port.startswith("sim:"):
        directory = Path(port[4:])
        while True:
            text = read_virtual(directory)
            d = diagnose(text)
            if (d.online and "accepted" in d.summary) or time.monotonic() >= deadline:
                return d, text
            time.sleep(0.1)
    ser = open_console(port, baud)
    buf = bytearray()
    try:
        online_at = None
        while time.monotonic() < deadline:
            buf += ser.read(4096)
            d = diagnose(buf.decode("utf-8", "replace").replace("\r\n", "\n"))
            if d.online:
                online_at = online_at or time.monotonic()
                if "accepted" in d.summary or time.monotonic() - online_at >= settle:
                    break
    finally:
        ser.close()
    text = buf.decode("utf-8", "replace").replace("\r\n", "\n")
    return diagnose(text), text
