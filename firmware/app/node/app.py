# The node: sample sensors, queue telemetry, keep one MQTT link alive and publish through it,
# take configuration and commands from the fleet.
import json
import random
import sys

import asyncio

from node import VERSION, codec, store
from node.mqtt import ConnectRefused, MQTTClient, MQTTError, tls_context
from node.outbox import Outbox
from node.port import port
from node.watchdog import Liveness, feed_loop

BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000
HEALTHY_AFTER_MS = 20000  # online this long with data stored by the fleet: the boot counts as good
UNTIMED_MAX = 360  # readings held while the clock is unknown
POLL_MS = 100  # streaming sensors (noise, edges) are drained this often
LEVELS = ("debug", "info", "warning", "error")
OTA_MODULES = ("node.ota", "node.install", "node.fwimage", "node.httpget", "node.ed25519", "node.sha512",
               "node.romfs")
REMOTE_MODULES = ("node.remote", "node.config")


def unload(names):
    """Let modules imported for an occasion go, so their code is collected (their names stay
    interned). Only on MicroPython, where the heap is the limit: CPython's simulated nodes share them."""
    if sys.implementation.name != "micropython":
        return
    for name in names:
        if sys.modules.pop(name, None) is not None:
            pkg, _, attr = name.rpartition(".")
            try:
                delattr(sys.modules[pkg], attr)
            except (KeyError, AttributeError):
                pass


class Node:
    def __init__(self, cfg, safe=False):
        self.cfg = cfg
        self.safe = safe
        self.id = cfg["device_id"]
        store.ensure_dir("data")
        self.boot = store.bump("data/boot")
        self.reset_cause = port.reset_cause()
        self.seq = store.SeqCounter("data/seq")
        self.outbox = Outbox("data/outbox", ram_bytes=cfg.get("outbox_ram_bytes", 4096),
                             flash_capacity=cfg.get("outbox_flash", 20000), clock=port.ticks_ms, diff=port.ticks_diff)
        self.sensors = []
        self.sampler = None  # node.sampler.Sampler, built with the sensors
        self.faults = []
        self.untimed = []  # [seq, records, ticks] taken before the clock was known
        self.untimed_dropped = 0
        self.control = []  # (channel, payload) for the publishing task, before telemetry
        self.wake = asyncio.Event()
        self.client = None
        self.reconnects = 0
        self.started = port.ticks_ms()
        self.heap_min = port.mem_free()
        self.loop_lag = 0
        self.healthy = False
        self.online_since = None
        self.pending_reset = False
        self.config_version = cfg.get("config_version", 0)
        self.live = Liveness()
        self.ota = None  # node.ota.Updater while it has something to do

    def topic(self, channel):
        return codec.topic(self.id, channel)

    def log(self, level, msg):
        if LEVELS.index(level) >= LEVELS.index(self.cfg.get("log_level", "info")):
            port.log(msg)

    # --- sampling ---------------------------------------------------------------------------
    def build_sensors(self):
        # Imported here so that safe mode never loads sensor code, the likeliest cause of a crash.
        from node import sampler, sensors

        if self.cfg.get("world"):
            # A virtual board: its simulated chips and building run in a process beside it
            # (provisioning/world.py), as a real board's chips are outside its MCU.
            from node import simlink

            if not simlink.connect():
                self.log("error", "world: no answer, the simulated sensors are gone")
        elif "building" in self.cfg:  # a building in the node's heap (no world process), on its clock
            from node.sim import building

            building.install(self.cfg["building"])
        self.sampler = sampler.build(self.cfg, sensors, port.epoch, port.ticks_ms, port.ticks_diff)
        self.sensors = [e.s for e in self.sampler.entries]
        self.faults = []

    def sample(self):
        """One sampling tick: read the sensors that are due; queue a report when the window ends."""
        records = self.sampler.tick()
        if self.sampler.faults != self.faults:  # a change, said once on the console (and in health)
            self.log("warning", "sensors: %s" % ("; ".join(self.sampler.faults) or "all good again"))
        self.faults = self.sampler.faults
        if not records:
            return
        seq = self.seq.take()
        if not port.time_synced():
            self.untimed.append([seq, records, port.ticks_ms()])
            if len(self.untimed) > UNTIMED_MAX:
                self.untimed.pop(0)
                self.untimed_dropped += 1
            return
        self.flush_untimed()
        self.queue(seq, port.epoch(), records)

    def flush_untimed(self):
        """The clock is known now: date what was sampled before, from its age, and queue it."""
        now_s = port.epoch()
        now_ms = port.ticks_ms()
        for seq, records, ticks in self.untimed:
            self.queue(seq, now_s - port.ticks_diff(now_ms, ticks) // 1000, records)
        self.untimed = []

    def queue(self, seq, bt, records):
        link = self.client is not None and self.client.connected

        def encode(buf, at):
            return codec.telemetry_into(buf, at, seq, bt, records)

        self.outbox.put(seq, encode, link)
        self.wake.set()

    async def sample_loop(self):
        if self.sampler.pollers:  # only nodes with a streaming sensor pay for the 100 ms wake-ups
            asyncio.create_task(self.poll_loop())
        while True:
            self.live.beat("sampler", 30000)  # the loop turns at least every second (wait_ms is capped)
            self.sample()
            self.outbox.maintain()
            self.check_healthy()
            await port.sleep_ms(self.sampler.wait_ms())

    async def poll_loop(self):
        # Streaming sensors are drained every POLL_MS so the microphone's DMA buffer and the edge
        # rings never overflow between two reads.
        while True:
            t0 = port.ticks_ms()
            self.sampler.poll()
            await port.sleep_ms(max(10, POLL_MS - port.ticks_diff(port.ticks_ms(), t0)))

    async def health_loop(self):
        while True:
            period = int(self.cfg["health_interval_s"] * 1000)
            self.live.beat("health", 2 * period + 10000)
            t0 = port.ticks_ms()
            await port.sleep_ms(period)
            lag = port.ticks_diff(port.ticks_ms(), t0) - period
            if lag > self.loop_lag:
                self.loop_lag = lag
            # Offline, only the latest health waits: older ones say nothing new and cost heap.
            self.control = [m for m in self.control if m[0] != "health"]
            self.control.append(("health", self.health()))
            self.loop_lag = 0
            self.wake.set()

    def health(self):
        free = port.mem_free()
        if free is not None and (self.heap_min is None or free < self.heap_min):
            self.heap_min = free
        ob = self.outbox
        return json.dumps({
            "uptime": port.ticks_diff(port.ticks_ms(), self.started) // 1000, "heap_free": free,
            "heap_min": self.heap_min, "reset": self.reset_cause, "rssi": port.rssi(),
            "reconnects": self.reconnects, "outbox": len(ob) + len(self.untimed), "outbox_flash": ob.flash_count,
            "outbox_dropped": ob.dropped + self.untimed_dropped, "flash_writes": ob.flash_writes,
            "loop_lag_ms": self.loop_lag, "faults": self.faults, "mode": "safe" if self.safe else "normal",
            "boot": self.boot,
        })

    def check_healthy(self):
        """Tell the loader this boot is good: online for a while, and the fleet stores our data."""
        if self.healthy or self.safe or self.online_since is None or self.outbox.stored_upto < 0:
            return
        if port.ticks_diff(port.ticks_ms(), self.online_since) >= HEALTHY_AFTER_MS:
            store.write_atomic("data/crashes", "0")
            self.healthy = True
            self.log("info", "node: healthy, boot confirmed")

    # --- messages from the fleet ------------------------------------------------------------
    def on_message(self, topic, payload, retained):
        if topic == self.topic("stored"):
            self.on_stored(payload, retained)
        elif topic == self.topic("config"):
            self.on_remote(payload, True)
        elif topic == self.topic("cmd"):
            self.on_remote(payload, False)
        elif topic == self.topic("ota"):
            self.on_ota(payload)

    def on_stored(self, payload, retained=False):
        # The fleet answers each birth with a live `stored` carrying its clock: a node without NTP
        # sets its clock from that, never from the retained copy, which may be hours old.
        if not retained and not port.time_synced():
            t = codec.stored_time(payload)
            if t:
                port.set_time(t)
                self.log("info", "time: set from the fleet's clock")
        seq = codec.stored_seq(payload)
        if seq is None:
            return
        self.outbox.release(seq)
        # A board that took over this identity (a replacement, a wiped flash) must not reuse
        # numbers the fleet already holds: they would be taken for repeats.
        self.seq.advance(seq + 1)

    def on_remote(self, payload, is_config):
        # node.remote is loaded for the message and let go after: a node spends its life sampling.
        from node import remote

        (remote.on_config if is_config else remote.on_command)(self, payload)
        unload(REMOTE_MODULES)

    def on_ota(self, payload):
        if self.ota is None:
            if not payload:
                return  # an offer withdrawn while no update runs: nothing to stop
            self.start_ota(False)
        self.ota.on_offer(payload)

    def ota_due(self):
        """The updater has work at boot: a trial to watch, a rollback or the last job to report
        (app/active is JSON once an update has happened; data/ota.json holds the last job)."""
        pointer = store.read_text("app/active") or "a"
        return pointer not in ("a", "b") or store.read_text("data/ota.json") is not None

    def start_ota(self, boot):
        # Loaded only for the occasion: node.ota and, for an install, node.install with the
        # signature code are about a third of the app's code.
        from node import ota

        self.ota = ota.Updater(self)
        asyncio.create_task(self.ota_task(boot))

    async def ota_task(self, boot):
        try:
            await self.ota.run(boot)
        except Exception as e:  # a failed update must not take the node down
            self.log("error", "ota: %r" % (e,))
        finally:
            self.ota = None
            unload(OTA_MODULES)

    def reply(self, payload):
        self.control.append(("ack", payload))
        self.wake.set()

    # --- link -------------------------------------------------------------------------------
    def new_client(self):
        m = self.cfg["mqtt"]
        ctx = None
        if m.get("tls"):
            with open(m.get("ca", "ca.der"), "rb") as f:
                ctx = tls_context(f.read())
        return MQTTClient(
            self.id, m["host"], m["port"], user=m.get("user"), password=m.get("password"),
            keepalive=m["keepalive"], clean=False, on_message=self.on_message, ssl=ctx,
            will=(self.topic("state"), codec.state_offline(), 1, True),
        )

    async def link_loop(self):
        backoff = BACKOFF_MIN_MS
        while True:
            self.live.beat("link", BACKOFF_MAX_MS + 60000)
            if not port.connect_network(self.cfg):
                self.log("warning", "net: link %s" % port.link_status())
            else:
                client = self.new_client()
                try:
                    await client.connect()
                except (ConnectRefused, MQTTError) as e:
                    self.log("error", "mqtt: " + str(e))
                except Exception as e:  # whatever the network throws, the node keeps trying
                    self.log("warning", "mqtt: cannot reach broker %s:%d (%r)" % (client.host, client.port_no, e))
                else:
                    backoff = BACKOFF_MIN_MS
                    self.client = client
                    await self.online(client)
                    self.client = None
                    self.online_since = None
                    self.outbox.spill()
                    self.reconnects += 1
                    if self.pending_reset:
                        port.reset()
            # Exponential backoff with jitter, so a building's nodes do not reconnect in step.
            await port.sleep_ms(backoff // 2 + random.getrandbits(16) % (backoff // 2 + 1))
            backoff = min(backoff * 2, BACKOFF_MAX_MS)

    async def online(self, client):
        self.log("info", "mqtt: connected to %s:%d as %s" % (client.host, client.port_no, self.id))
        try:
            for channel in ("stored", "config", "cmd", "ota"):
                await client.subscribe(self.topic(channel))
            birth = codec.state_online(VERSION, self.cfg["board"], self.boot, self.reset_cause, port.epoch(),
                                       "safe" if self.safe else "normal", self.config_version)
            await client.publish(self.topic("state"), birth, qos=1, retain=True)
            self.online_since = port.ticks_ms()
            self.outbox.rewind()
            await self.publish_loop(client)
        except Exception as e:  # a broken link must never take the node down
            self.log("warning", "mqtt: publish failed (%r)" % (e,))
        if self.pending_reset and client.connected:
            await client.publish(self.topic("state"), codec.state_offline("reboot"), qos=1, retain=True)
        await client.disconnect()
        self.log("warning", "mqtt: link lost: %s" % (client.error or "disconnected"))

    async def publish_loop(self, client):
        """The one task that publishes: control messages first, then telemetry in order."""
        while client.connected:
            self.live.beat("link", 60000)
            if not port.link_up():
                raise OSError("network link %s" % port.link_status())
            if self.control:
                channel, payload = self.control[0]
                await client.publish(self.topic(channel), payload, qos=1)
                self.control.pop(0)
                continue
            if self.pending_reset:
                return
            item = self.outbox.next_unsent()
            if item is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1)
                except asyncio.TimeoutError:
                    pass
                continue
            seq, payload = item
            # No re-send with DUP on a lost PUBACK (payload may be a view of the outbox's buffer,
            # reused meanwhile): the link is dropped instead, and the outbox re-sends on the next.
            await client.publish(self.topic("telemetry"), payload, qos=1, retries=0)
            self.outbox.mark_sent(seq)
            self.log("info", "sent seq=%d" % seq)

    async def run(self):
        mode = " SAFE MODE (sensors off)" if self.safe else ""
        self.log("info", "node %s fw %s boot %d (%s) on %s%s" % (
            self.id, VERSION, self.boot, self.reset_cause, port.NAME, mode))
        tasks = [self.health_loop(), self.link_loop(),
                 feed_loop(self.live, self.cfg.get("watchdog_ms", 60000), self.log)]
        if self.ota_due():
            self.start_ota(True)
        if not self.safe:
            self.build_sensors()
            tasks.append(self.sample_loop())
        else:
            tasks.append(self.safe_loop())
        await asyncio.gather(*tasks)

    async def safe_loop(self):
        while True:
            await port.sleep_ms(1000)
            self.outbox.maintain()


def main(safe=False):
    from node import config

    try:
        cfg = config.load()
    except config.ConfigError as e:
        port.log("config: " + str(e))
        return
    config = None
    unload(REMOTE_MODULES)  # read once at boot; node.remote brings it back to save a new config
    asyncio.run(Node(cfg, safe).run())
