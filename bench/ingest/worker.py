"""The processes of the ingest benchmark (one role each, so they do not share a GIL):

- `ingest`: Maille's `fleet.ingest.Ingest` on the given database, as the fleet service runs it;
- `bare`: a bare paho-mqtt subscriber (QoS 1) counting the same telemetry;
- `publish`: device connections (the firmware's MQTTClient via fleet.sim) publishing their messages;
  `--part I --parts P` takes every P-th of the K devices, so P processes share the publishing.

Each prints `ready` once set up, then a JSON line with its figures. `ingest` and `publish` wait for a
line on stdin (`go`, or end of input to stop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("MAILLE_BENCH_SRC"):  # see bench/common.py
    sys.path.insert(0, os.environ["MAILLE_BENCH_SRC"])


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def say(obj) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


def stdin_event(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Set `event` on the next line (or end) of stdin."""

    def wait() -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(event.set)

    threading.Thread(target=wait, daemon=True).start()


async def run_ingest(a) -> None:
    import inspect

    from fleet.db import make_engine
    from fleet.ingest import Ingest

    engine = make_engine(a.db)
    kwargs = {"client_id": a.client_id}
    params = inspect.signature(Ingest).parameters
    if a.batch_size and "batch_size" in params:
        kwargs["batch_size"] = a.batch_size
    ingest = Ingest(engine, a.mqtt, **kwargs)
    stop = asyncio.Event()
    started, cpu0 = time.time(), cpu_seconds()  # a backlog flows as soon as the session is back
    task = asyncio.create_task(ingest.run(stop))
    await asyncio.wait_for(ingest.subscribed.wait(), 30)
    say("ready")
    stdin_event(asyncio.get_running_loop(), stop)
    await stop.wait()
    cpu = cpu_seconds() - cpu0
    await asyncio.wait_for(task, 30)
    s = ingest.stats
    say(
        {
            "received": s.received,
            "stored_messages": s.stored_messages,
            "stored_readings": s.stored_readings,
            "started": started,
            "cpu_s": cpu,
        }
    )
    engine.dispose()


def run_bare(a) -> None:
    import paho.mqtt.client as mqtt

    from fleet.settings import parse_mqtt_url

    t = parse_mqtt_url(a.mqtt)
    state = {"n": 0, "first": None, "last": None}
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=a.client_id or f"bench-bare-{time.monotonic_ns()}",
        clean_session=not a.persistent,
    )
    c.username_pw_set(t.username, t.password)

    def on_connect(client, userdata, flags, rc, props=None):
        client.subscribe("maille/v1/+/telemetry", qos=1)

    def on_subscribe(client, userdata, mid, rcs, props=None):
        say("ready")
        if a.expect == 0:  # only leave a persistent session subscribed
            client.disconnect()

    def on_message(client, userdata, msg):
        now = time.time()
        if state["first"] is None:
            state["first"] = now
        state["n"] += 1
        state["last"] = now
        if state["n"] >= a.expect:
            client.disconnect()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    connected_at = time.time()
    c.connect(t.host, t.port, keepalive=60)
    cpu0 = cpu_seconds()
    timer = threading.Timer(a.timeout, c.disconnect)
    timer.daemon = True
    timer.start()
    c.loop_forever()
    say(
        {
            "received": state["n"],
            "first_rx": state["first"],
            "last_rx": state["last"],
            "connected_at": connected_at,
            "cpu_s": cpu_seconds() - cpu0,
        }
    )


async def run_publish(a) -> None:
    from fleet.sim import blast, connect_clients, device_ids, raise_nofile_limit

    raise_nofile_limit()
    ids = device_ids(a.devices, a.prefix)[a.part :: a.parts]
    clients = await connect_clients(a.host, a.port, [(d, a.password) for d in ids])
    say("ready")
    go = asyncio.Event()
    stdin_event(asyncio.get_running_loop(), go)
    await go.wait()
    cpu0 = cpu_seconds()
    rep = await blast(clients, a.per_device, window=a.window)
    cpu = cpu_seconds() - cpu0
    for c in clients:
        await c.disconnect()
    say(
        {
            "messages": rep.messages,
            "first_publish": rep.first_publish,
            "last_puback": rep.last_puback,
            "errors": rep.errors,
            "cpu_s": cpu,
        }
    )


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--db", required=True)
    i.add_argument("--mqtt", required=True)
    i.add_argument("--client-id", default="bench-ingest")
    i.add_argument("--batch-size", type=int, default=0)
    b = sub.add_parser("bare")
    b.add_argument("--mqtt", required=True)
    b.add_argument("--expect", type=int, required=True)
    b.add_argument("--timeout", type=float, default=300)
    b.add_argument("--client-id", default="")
    b.add_argument("--persistent", action="store_true", help="a persistent session (clean_session false)")
    u = sub.add_parser("publish")
    u.add_argument("--host", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--password", required=True)
    u.add_argument("--devices", type=int, required=True)
    u.add_argument("--prefix", default="bench")
    u.add_argument("--per-device", type=int, required=True)
    u.add_argument("--window", type=int, default=16)
    u.add_argument("--part", type=int, default=0, help="this publisher takes devices part, part+parts, …")
    u.add_argument("--parts", type=int, default=1)
    a = p.parse_args()
    if a.role == "ingest":
        asyncio.run(run_ingest(a))
    elif a.role == "bare":
        run_bare(a)
    else:
        asyncio.run(run_publish(a))


if __name__ == "__main__":
    main()
