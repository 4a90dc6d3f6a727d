"""The watchdog is fed only while every task beats (both runtimes; the chip's WDT is recorded)."""

CODE = """
import asyncio
from node.port import port
from node.watchdog import Liveness, feed_loop

fed = []
class RecordingWDT:  # the hardware watchdog cannot exist here: record what it would be told
    def __init__(self, timeout_ms):
        pass
    def feed(self):
        fed.append(port.ticks_ms())
port.Watchdog = RecordingWDT

async def main():
    live = Liveness()
    live.beat("sampler", 1500)
    live.beat("link", 60000)
    task = asyncio.create_task(feed_loop(live, 5000, lambda level, msg: print(msg)))
    for _ in range(3):  # the sampler beats for 3 s
        await asyncio.sleep(1)
        live.beat("sampler", 1500)
    healthy = len(fed)
    await asyncio.sleep(3.5)  # then hangs
    print("fed while healthy:", healthy, "after the hang:", len(fed) - healthy)
    print("stale:", live.stale())
    task.cancel()

asyncio.run(main())
"""


def test_a_stuck_task_stops_the_feeding(fw):
    out = fw(CODE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "watchdog: sampler stuck, no longer feeding the watchdog" in lines
    fed = next(x for x in lines if x.startswith("fed while healthy:")).split()
    assert int(fed[3]) >= 3
    assert int(fed[7]) <= 2  # at most the feeds before the 1.5 s allowance ran out
    assert lines[-1] == "stale: ['sampler']"
