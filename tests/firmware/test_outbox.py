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
ob = box(ram_capacity=50)
for seq in range(1000):
    ob.put(seq, '{"seq": %d}' % seq)
    assert ob.next_unsent()[0] == seq
    ob.mark_sent(seq)
    ob.release(seq)
    now[0] += 1000
    ob.maintain()
print('[%d, %d, %d]' % (ob.flash_writes, len(ob), ob.dropped))
""",
    )
    assert r == [0, 0, 0]


def test_offline_readings_go_to_flash_and_survive_a_restart(fw, tmp_path):
    first = run(
        fw,
        tmp_path,
        """
ob = box()
for seq in range(100):
    ob.put(seq, '{"seq": %d}' % seq, False)
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


def test_unconfirmed_entries_spill_after_their_age_in_one_write(fw, tmp_path):
    (r,) = run(
        fw,
        tmp_path,
        """
ob = box(ram_capacity=100, spill_age_ms=30000)
for seq in range(20):
    ob.put(seq, 'x')
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
    ob.put(seq, 'p%d' % seq, False)
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
