# The hardware watchdog is fed only while every task shows it is alive. A task that hangs (a bus
# that never answers, a deadlock) stops the feeding, and the chip resets itself; the loader's
# crash counter then takes over.
from node.port import port


class Liveness:
    def __init__(self):
        self.beats = {}  # task name -> [last beat ticks, allowed silence ms]
        self.stuck = None

    def beat(self, name, allowed_ms):
        b = self.beats.get(name)
        if b is None:
            self.beats[name] = [port.ticks_ms(), allowed_ms]
        else:
            b[0] = port.ticks_ms()
            b[1] = allowed_ms

    def stale(self):
        """Names of the tasks silent for longer than they are allowed."""
        now = port.ticks_ms()
        return [n for n in self.beats if port.ticks_diff(now, self.beats[n][0]) > self.beats[n][1]]


async def feed_loop(liveness, timeout_ms, log):
    wdt = port.Watchdog(timeout_ms)
    while True:
        stale = liveness.stale()
        if not stale:
            wdt.feed()
            liveness.stuck = None
        elif stale != liveness.stuck:
            liveness.stuck = stale
            log("error", "watchdog: %s stuck, no longer feeding the watchdog" % ", ".join(stale))
        await port.sleep_ms(1000)
