# The node: sample sensors, queue telemetry, keep one MQTT link alive and publish through it.
import random

import asyncio

from node import VERSION, codec, config, sensors, store
from node.mqtt import ConnectRefused, MQTTClient, MQTTError
from node.outbox import Outbox
from node.port import port

BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.id = cfg["device_id"]
        store.ensure_dir("data")
        self.boot = store.bump("data/boot")
        self.reset_cause = port.reset_cause()
        self.seq = store.SeqCounter("data/seq")
        self.outbox = Outbox(cfg.get("outbox_ram", 500))
        self.sensors = sensors.build(cfg["sensors"], port.epoch)
        self.faults = []
        self.control = []  # non-telemetry messages for the publishing task: (channel, payload)
        self.wake = asyncio.Event()
        self.reconnects = 0
        self.started = port.ticks_ms()
        self.heap_min = port.mem_free()

    def topic(self, channel):
        return codec.topic(self.id, channel)

    # --- sampling ---------------------------------------------------------------------------
    def sample(self):
        records = []
        faults = []
        for s in self.sensors:
            try:
                records.extend(s.read())
            except Exception as e:
                faults.append("%s: %s" % (s.__class__.__name__, e))
        self.faults = faults
        if records:
            seq = self.seq.take()
            self.outbox.put(seq, codec.telemetry(seq, port.epoch(), records))
            self.wake.set()

    async def sample_loop(self):
        for s in self.sensors:
            s.setup()
        while True:
            self.sample()
            await port.sleep_ms(int(self.cfg["sample_interval_s"] * 1000))

    async def health_loop(self):
        while True:
            await port.sleep_ms(int(self.cfg["health_interval_s"] * 1000))
            free = port.mem_free()
            if free is not None and (self.heap_min is None or free < self.heap_min):
                self.heap_min = free
            uptime = port.ticks_diff(port.ticks_ms(), self.started) // 1000
            self.control.append(("health", codec.health(
                uptime, free, self.heap_min, self.reset_cause, port.rssi(), self.reconnects,
                len(self.outbox), self.faults)))
            self.wake.set()

    # --- link -------------------------------------------------------------------------------
    def on_message(self, topic, payload, retained):
        if topic == self.topic("stored"):
            seq = codec.stored_seq(payload)
            if seq is not None:
                self.outbox.release(seq)

    def new_client(self):
        m = self.cfg["mqtt"]
        return MQTTClient(
            self.id, m["host"], m["port"], user=m.get("user"), password=m.get("password"),
            keepalive=m["keepalive"], clean=False, on_message=self.on_message,
            will=(self.topic("state"), codec.state_offline(), 1, True),
        )

    async def link_loop(self):
        backoff = BACKOFF_MIN_MS
        while True:
            if not port.connect_network(self.cfg):
                port.log("net: link down")
            else:
                client = self.new_client()
                try:
                    await client.connect()
                except ConnectRefused as e:
                    port.log("mqtt: " + str(e))
                except (OSError, MQTTError, asyncio.TimeoutError) as e:
                    port.log("mqtt: cannot reach broker %s:%d (%r)" % (client.host, client.port_no, e))
                else:
                    backoff = BACKOFF_MIN_MS
                    await self.online(client)
                    self.reconnects += 1
            # Exponential backoff with jitter, so a building's nodes do not reconnect in step.
            await port.sleep_ms(backoff // 2 + random.getrandbits(16) % (backoff // 2 + 1))
            backoff = min(backoff * 2, BACKOFF_MAX_MS)

    async def online(self, client):
        port.log("mqtt: connected to %s:%d as %s" % (client.host, client.port_no, self.id))
        try:
            await client.subscribe(self.topic("stored"))
            birth = codec.state_online(VERSION, self.cfg["board"], self.boot, self.reset_cause, port.epoch())
            await client.publish(self.topic("state"), birth, qos=1, retain=True)
            self.outbox.rewind()
            await self.publish_loop(client)
        except (OSError, MQTTError, asyncio.TimeoutError) as e:
            port.log("mqtt: publish failed (%s)" % e)
        await client.disconnect()
        port.log("mqtt: link lost: %s" % (client.error or "disconnected"))

    async def publish_loop(self, client):
        """The one task that publishes: control messages first, then telemetry in order."""
        while client.connected:
            if self.control:
                channel, payload = self.control.pop(0)
                await client.publish(self.topic(channel), payload, qos=1)
                continue
            item = self.outbox.next_unsent()
            if item is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1)
                except asyncio.TimeoutError:
                    pass
                continue
            seq, payload = item
            await client.publish(self.topic("telemetry"), payload, qos=1)
            self.outbox.mark_sent(seq)
            port.log("sent seq=%d" % seq)

    async def run(self):
        port.log("node %s fw %s boot %d (%s) on %s" % (self.id, VERSION, self.boot, self.reset_cause, port.NAME))
        await asyncio.gather(self.sample_loop(), self.health_loop(), self.link_loop())


def main():
    try:
        cfg = config.load()
    except config.ConfigError as e:
        port.log("config: " + str(e))
        return
    asyncio.run(Node(cfg).run())
