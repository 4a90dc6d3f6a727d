"""Small test tools over real parts: an MQTT observer (paho) and polling."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from fleet.broker import FLEET_USER, LocalBroker


def wait_until(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = ""
):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Observer:
    """A paho-mqtt client (the fleet's user by default) that records what it receives."""

    def __init__(
        self, broker: LocalBroker, topics: list[str], user: str = FLEET_USER, password: str | None = None
    ):
        self.messages: queue.Queue = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user, broker.fleet_password if password is None else password)
        subscribed = []
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, 1) for t in topics]
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.append(mid)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        wait_until(lambda: len(subscribed) >= len(topics), 10, what="SUBACK")

    def wait(self, match: Callable[[str, bytes], bool], timeout: float = 15.0) -> tuple[str, bytes, bool]:
        for t, p, r in self.seen:
            if match(t, p):
                return t, p, r
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; seen: {self.seen[-10:]}")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if match(msg[0], msg[1]):
                return msg

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def drain(self) -> list[tuple[str, bytes, bool]]:
        while True:
            try:
                self.seen.append(self.messages.get_nowait())
            except queue.Empty:
                return self.seen

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def node_config(device_id: str, broker: LocalBroker, **over) -> dict:
    cfg = {
        "device_id": device_id,
        "site": "test-site",
        "room": "1.01",
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "sample_interval_s": 0.5,
        "health_interval_s": 2,
    }
    cfg.update(over)
    return cfg
