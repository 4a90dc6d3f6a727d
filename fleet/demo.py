"""`maille demo`: a private broker, the fleet service and virtual boards running the real firmware."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from sqlmodel import Session, func, select

from fleet.auth import Role, broker_user, create_token
from fleet.broker import LocalBroker, new_password
from fleet.broker_admin import token_readers
from fleet.db import make_engine, upgrade
from fleet.models import Device, Reading
from fleet.registry import register_device
from fleet.service import serve
from fleet.settings import Settings, parse_mqtt_url
from provisioning.virtual import VirtualBoard

SITE = "demo"


@dataclass
class DemoOptions:
    nodes: int = 3
    duration: float | None = None
    port: int = 8000
    broker_url: str | None = None
    summary_json: Path | None = None
    workdir: Path | None = None
    sample_interval_s: float = 2.0


def _board_config(device_id: str, room: str, host: str, port: int, seed: int, interval: float) -> dict:
    return {
        "device_id": device_id,
        "site": SITE,
        "room": room,
        "board": "sim",
        "mqtt": {"host": host, "port": port, "keepalive": 15},
        "sample_interval_s": interval,
        "health_interval_s": 10,
        "sensors": [{"type": "sim_climate", "seed": seed, "base_c": 19.0 + seed % 4}],
    }


def summarize(engine, api: str, nodes: int, token: str) -> dict:
    with Session(engine) as s:
        online = s.exec(select(func.count()).select_from(Device).where(Device.status == "online")).one()
        readings = s.exec(select(func.count()).select_from(Reading)).one()
    return {"nodes": nodes, "online": online, "readings_stored": readings, "api": api, "token": token}


async def run_demo(opts: DemoOptions, console: Console | None = None) -> dict:
    console = console or Console()
    tmp = None
    if opts.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="maille-demo-")
        opts.workdir = Path(tmp.name)
    work = opts.workdir
    broker = None
    if opts.broker_url:
        target = parse_mqtt_url(opts.broker_url)
        fleet_url = opts.broker_url
    else:
        broker = LocalBroker(work / "broker")
        fleet_url = broker.fleet_url
    settings = Settings(
        database_url=f"sqlite:///{work / 'maille.db'}", mqtt_url=fleet_url, api_port=opts.port
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    with Session(engine) as s:
        token = create_token(s, f"demo-admin-{secrets.token_hex(3)}", Role.admin)[1]

    boards: list[VirtualBoard] = []
    with Session(engine) as s:
        for i in range(1, opts.nodes + 1):
            device_id = f"demo-node-{i:02d}"
            register_device(s, device_id, SITE, room=f"{1 + (i - 1) // 4}.{(i - 1) % 4 + 1:02d}", board="sim")
            if broker:
                password = new_password()
                broker.users.set_user(device_id, password)
                creds = {"user": device_id, "password": password}
            else:  # an external broker whose users we do not manage: nodes use the URL's account
                creds = {"user": target.username, "password": target.password}
            host, port = (broker.host, broker.port) if broker else (target.host, target.port)
            cfg = _board_config(device_id, f"room-{i}", host, port, i, opts.sample_interval_s)
            boards.append(VirtualBoard.create(work / "boards" / device_id, cfg, creds))
        s.commit()
        if broker:  # a start-up's view: the site topics, read with a scoped token's broker account
            startup_name = f"demo-startup-{secrets.token_hex(3)}"
            startup = create_token(s, startup_name, Role.integrator, [SITE], broker=True)[1]
            token_readers(s, broker.users)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    api = f"http://{settings.api_host}:{settings.api_port}"
    ready = asyncio.Event()
    try:
        if broker:
            broker.start()
            console.print(f"[green]broker[/] private Mosquitto on {broker.host}:{broker.port}")
        service = asyncio.create_task(serve(settings, stop, ready))
        await asyncio.wait([service, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if service.done():
            service.result()  # raises what stopped the service
        for b in boards:
            b.start()
        console.print(f"[green]fleet[/] API at {api}  (OpenAPI: {api}/docs, devices: {api}/api/v1/devices)")
        console.print(f"[green]token[/] admin API token: {token}")
        console.print(
            f"[green]dashboard[/] {api}/login  (log in with the admin token; phone-sized pages too)"
        )
        console.print(f'        curl -H "Authorization: Bearer {token}" {api}/api/v1/devices')
        if broker:
            console.print(
                f"[green]mqtt[/] site topics: mosquitto_sub -h {broker.host} -p {broker.port} "
                f"-u {broker_user(startup_name)} -P {startup} -t 'maille/sites/{SITE}/#' -v"
            )
        console.print(
            f"[green]nodes[/] {len(boards)} virtual boards running the firmware under micropython "
            f"(consoles in {work / 'boards'})"
        )
        console.print(
            "Press Ctrl-C to stop." if opts.duration is None else f"Running for {opts.duration:g} s."
        )
        try:
            await asyncio.wait_for(stop.wait(), opts.duration)
        except TimeoutError:
            pass
        summary = summarize(engine, api, len(boards), token)
    finally:
        for b in boards:
            b.stop()
        stop.set()
        if "service" in locals():
            await asyncio.gather(service, return_exceptions=True)
        if broker:
            broker.stop()
        engine.dispose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if tmp:
            tmp.cleanup()
    console.print_json(json.dumps(summary))
    if opts.summary_json:
        Path(opts.summary_json).write_text(json.dumps(summary) + "\n")
    return summary
