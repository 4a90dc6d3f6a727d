"""The outbox under both runtimes: RAM while confirmed promptly, flash when not, whole records only."""

import json

SETUP = """
from node.outbox import Outbox
now = [0]
def clock():
    return now[0]
def box(**kw):
    return Outbox("outbox", clock=clock, **kw)
def drain(ob):
    out = []
    while True:
        item = ob.next_unsent()
        if item is None:
            return out
        ob.mark_sent(item[0])
        out.append(item[0])
"""


def run(fw, tmp_path, code):
    out = fw(SETUP + code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_online_and_confirmed_promptly_never_writes_flash(fw, tmp_path):
    (r,) = run(
        fw,
        tmp_path,
        """
ob = box(ram_bytes=500)
for seq in range(1000):
    ob.put(seq, b'{"seq": %d}' % seq)
    assert ob.next_unsent()[0] == seq
    ob.mark_sent(seq)
    ob.release(seq)
    now[0] += 1000
    ob.maintain()
print('[%d, %d, %d]' % (ob.flash_writes, len(ob), ob.dropped))
""",
    )
    assert r == [0, 0, 0]


def test_ram_holds_payloads_in_its_buffer_moves_them_up_or_spills_them_in_one_write(fw, tmp_path):
    # RAM's share is one buffer: two payloads of 400 fit in 1000. Once the first is confirmed, a
    # third moves the second to the front (no flash write); when nothing was confirmed, a new one
    # spills the waiting ones to flash in one write and takes their place.
    (r,) = run(
        fw,
        tmp_path,
        """
import json
ob = box(ram_bytes=1000)
seen = []
def state():
    seen.append([[e[0], e[1], e[2]] for e in ob.ram] + [ob.ram_used, ob.flash_writes])
ob.put(0, b'0' * 400)
ob.put(1, b'1' * 400)
state()
ob.release(0)
ob.put(2, b'2' * 400)
state()
ob.put(3, b'3' * 400)
state()
got = []
while True:
    item = ob.next_unsent()
    if item is None:
        break
    ob.mark_sent(item[0])
    got.append([item[0], bytes(item[1]) == b'%d' % item[0] * 400])
seen.append(got)
try:
    ob.put(4, b'x' * 1001)
except ValueError as e:
    seen.append(str(e))
print(json.dumps(seen))
""",
    )
    assert r == [
        [[0, 0, 400], [1, 400, 400], 800, 0],
        [[1, 0, 400], [2, 400, 400], 800, 0],
        [[3, 0, 400], 400, 1],
        [[1, True], [2, True], [3, True]],
        "entry 4 is larger than the outbox's RAM (1000 bytes)",
    ]


def test_offline_readings_go_to_flash_and_survive_a_restart(fw, tmp_path):
    first = run(
        fw,
        tmp_path,
        """
ob = box()
for seq in range(100):
    ob.put(seq, b'{"seq": %d}' % seq, False)
print('[%d, %d, %d]' % (len(ob.ram), ob.flash_count, ob.flash_writes))
""",
    )
    assert first == [[0, 100, 100]]
    # a power cut tears the last line of the newest segment
    seg = sorted((tmp_path / "outbox").iterdir())[-1]
    seg.write_bytes(seg.read_bytes()[:-7])
    (after,) = run(
        fw,
        tmp_path,
        """
ob = box()
print(drain(ob))
""",
    )
    assert after == list(range(99))  # the torn record is skipped, all whole ones are back, in order


def test_payloads_come_back_from_flash_byte_for_byte(fw, tmp_path):
    # Records are written in pieces (no copy of the payload): spaces, UTF-8 and a payload that ends
    # like a CRC must all come back whole, and the file format stays `<seq> <payload> <crc32>`.
    (r,) = run(
        fw,
        tmp_path,
        """
import binascii
ps = [b'{"n": "co2", "u": "ppm", "v": 612}', 'salle 2.14 \u00e9t\u00e9'.encode(), b'x 0000abcd', b'']
ob = box()
for seq, p in enumerate(ps):
    ob.put(seq + 7, p, False)
ob = box()  # after a reboot: from flash only
out = []
while True:
    item = ob.next_unsent()
    if item is None:
        break
    ob.mark_sent(item[0])
    out.append([item[0], item[1] == ps[item[0] - 7]])
line = open('outbox/' + ob.segments[0][3], 'rb').readline()
crc = binascii.crc32(line[:line.rfind(b' ')]) & 0xFFFFFFFF
import json
print(json.dumps([out, line.startswith(b'7 {"n": "co2"'), int(line[-9:-1], 16) == crc]))
""",
    )
    assert r == [[[7, True], [8, True], [9, True], [10, True]], True, True]


def test_unconfirmed_entries_spill_after_their_age_in_one_write(fw, tmp_path):
    (r,) = run(
        fw,
        tmp_path,
        """
ob = box(ram_bytes=10000, spill_age_ms=30000)
for seq in range(20):
    ob.put(seq, b'x')
    now[0] += 1000
ob.maintain()
a = ob.flash_writes
now[0] += 20000
ob.maintain()
print([a, ob.flash_writes, ob.flash_count, len(ob.ram)])
""",
    )
    assert r == [0, 1, 20, 0]


def test_watermark_frees_flash_and_rewind_resends_the_rest(fw, tmp_path):
    (sent, resent, files) = run(
        fw,
        tmp_path,
        """
import os
ob = box()
for seq in range(100):
    ob.put(seq, b'p%d' % seq, False)
print(drain(ob)[-1:])
ob.release(69)
ob.rewind()
print(drain(ob))
print(len(os.listdir('outbox')))
""",
    )
    assert sent == [99]
    assert resent == list(range(70, 100))
    assert files == 2  # 0-31 and 32-63 are deleted; 64-95 (partly needed) and 96-99 stay


def test_outbox_bench_runs():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "outbox" / "run.py"
    out = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert {
        "flash_writes_per_hour_online",
        "flash_writes_per_hour_offline",
        "ram_bytes_per_reading_unix_port",
    } <= set(summary)
    assert summary["flash_writes_per_hour_offline"] == summary["readings_per_hour"]
