"""The `maille` command: one entry point for technicians, operators and integrators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from fleet.provision_cli import board_app
from fleet.provision_cli import provision as provision_command
from fleet.provision_cli import replace as replace_command
from fleet.release_cli import release_app
from fleet.settings import SETTINGS_SOURCES, get_settings
from fleet.sim import sim as sim_command

app = typer.Typer(
    help="Maille: set up, run and watch a fleet of ESP32 sensor nodes in public buildings.\n\n"
    + SETTINGS_SOURCES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Look after the fleet's database.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: who may use the web API, with which role.", no_args_is_help=True)
device_app = typer.Typer(
    help="Talk to one device through the fleet's API (MAILLE_API_URL, MAILLE_TOKEN); `replace` works on "
    "the fleet's database and broker directly.",
    no_args_is_help=True,
)
broker_app = typer.Typer(help="The broker's users and ACL, owned by the fleet.", no_args_is_help=True)
site_app = typer.Typer(help="Sites as files: buildings, floors, rooms, expected nodes.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(device_app, name="device")
app.add_typer(release_app, name="release")
app.add_typer(broker_app, name="broker")
app.add_typer(site_app, name="site")
app.add_typer(board_app, name="board")
app.command("sim")(sim_command)
app.command("provision")(provision_command)
device_app.command("replace")(replace_command)


def _engine():
    """The fleet database from settings, brought to the latest schema."""
    from fleet.db import make_engine, upgrade

    engine = make_engine(get_settings().database_url)
    upgrade(engine)
    return engine


@broker_app.command("sync")
def broker_sync() -> None:
    """Write the broker's password and ACL files from the fleet database and make it reload them
    (MAILLE_BROKER_PASSWORD_FILE, MAILLE_BROKER_ACL_FILE, MAILLE_BROKER_RELOAD)."""
    from sqlmodel import Session

    from fleet.broker_admin import BrokerAdminError, sync

    engine = _engine()
    try:
        with Session(engine) as s:
            result = sync(s, get_settings())
    except BrokerAdminError as e:
        typer.echo(f"maille: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    state = (
        ("files rewritten, broker reloaded" if result.reloaded else "files rewritten")
        if result.changed
        else "unchanged"
    )
    typer.echo(f"maille: broker users {result.users}, {state}")


@site_app.command("apply")
def site_apply(
    file: Path = typer.Argument(..., help="The site file, e.g. sites/bliiida.toml."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; change nothing."),
    prune: bool = typer.Option(False, "--prune", help="Also delete what the file dropped that holds data."),
) -> None:
    """Create or update a site's buildings, floors, rooms, expected nodes and meters from its file.

    Safe to run again. What the file no longer names is deleted when it holds nothing, kept (and
    listed) when it holds data, unless --prune.
    """
    from rich.console import Console
    from sqlmodel import Session

    from fleet import sites

    console = Console(highlight=False)
    try:
        spec = sites.load(file)
    except sites.SiteError as e:
        console.print(f"[red]{e}", soft_wrap=True)
        raise typer.Exit(1) from None
    engine = _engine()
    try:
        with Session(engine) as s:
            changes = sites.apply(s, spec, f"site-file:{file.name}", prune=prune, dry_run=dry_run)
    except sites.SiteError as e:
        console.print(f"[red]{e}", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    colour = {"create": "green", "update": "yellow", "delete": "red", "keep": "cyan"}
    for change in changes:
        console.print(f"[{colour[change.op]}]{change}", soft_wrap=True)
    done = "would change" if dry_run else "changed"
    console.print(
        f"{spec.site.slug}: {sum(c.op != 'keep' for c in changes)} {done}" + (" (dry run)" if dry_run else "")
    )


@app.command()
def demo(
    nodes: int = typer.Option(3, "--nodes", min=1, max=200, help="How many virtual boards to start."),
    duration: float = typer.Option(
        None, "--duration", min=1, help="Stop by itself after this many seconds (default: run until Ctrl-C)."
    ),
    port: int = typer.Option(8000, "--port", help="Port of the fleet's web API on 127.0.0.1."),
    broker: str = typer.Option(
        None,
        "--broker",
        help="Use this broker (mqtt://user:password@host:port) instead of starting a private one.",
    ),
    summary_json: Path = typer.Option(
        None, "--summary-json", help="Also write the closing summary to this file."
    ),
    workdir: Path = typer.Option(
        None,
        "--workdir",
        help="Keep the demo's database, broker files and board "
        "folders here (default: a temporary folder, removed at the end).",
    ),
) -> None:
    """See Maille work in a minute: a broker, the fleet service and virtual nodes running the real firmware.

    Virtual nodes run the same code as an ESP32 on the MicroPython unix port and send readings through a
    private Mosquitto into the fleet; the API shows them live. Ctrl-C stops everything cleanly.
    """
    from fleet.demo import DemoOptions, run_demo

    summary = asyncio.run(
        run_demo(
            DemoOptions(
                nodes=nodes,
                duration=duration,
                port=port,
                broker_url=broker,
                summary_json=summary_json,
                workdir=workdir,
            )
        )
    )
    if summary["online"] < summary["nodes"]:
        raise typer.Exit(1)


@app.command()
def serve(
    workers: int = typer.Option(
        None, "--workers", min=1, max=64, help="Ingest workers sharing the stream (default: settings, 1)."
    ),
) -> None:
    """Run the fleet service: store what nodes send (ingest) and answer the web API."""
    from fleet.service import serve as run_service

    settings = get_settings()
    if workers is not None:
        settings = settings.model_copy(update={"ingest_workers": workers})
    typer.echo(
        f"maille: API on http://{settings.api_host}:{settings.api_port}, broker {settings.mqtt_url_masked}"
    )
    stop = asyncio.Event()

    async def main() -> None:
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_service(settings, stop)

    asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or bring it to the latest schema (safe to run again)."""
    from fleet.db import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo("maille: database is up to date")


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., "--role", help="admin, operator, technician, integrator or viewer."),
    site: list[str] = typer.Option(None, "--site", help="Limit the token to this site (repeat for more)."),
    metric: list[str] = typer.Option(
        None, "--metric", help="Limit the token to this metric, e.g. co2 (repeat for more; default: all)."
    ),
    broker: bool = typer.Option(
        False, "--broker", help="Also a broker account, token.<name>, reading its sites' topics."
    ),
    name: str = typer.Option(None, "--name", help="Shown in the audit log (default: <role>-<random>)."),
) -> None:
    """Create a token and print it once: only its hash is kept. With --broker, the broker's files are
    synced when the fleet administers them (MAILLE_BROKER_PASSWORD_FILE)."""
    import secrets

    from sqlmodel import Session

    from fleet.auth import Role, broker_user, create_token

    try:
        role_ = Role(role)
    except ValueError:
        raise typer.BadParameter(
            f"unknown role {role!r}; one of {', '.join(Role)}", param_hint="--role"
        ) from None
    engine = _engine()
    try:
        with Session(engine) as s:
            token, secret = create_token(
                s,
                name or f"{role_}-{secrets.token_hex(3)}",
                role_,
                site or (),
                metrics=metric or (),
                broker=broker,
            )
            scope = ", ".join(site) if site else "all sites"
            scope += f"; metrics {', '.join(metric)}" if metric else ""
            if broker:
                scope += f"; broker user {broker_user(token.name)}"
                _sync_broker_if_administered(s)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    finally:
        engine.dispose()
    typer.echo(f"maille: token {token.name!r} ({token.role}, {scope}); shown once, keep it safe:", err=True)
    typer.echo(secret)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token; its broker account goes with the next broker sync (run now when the fleet
    administers the broker)."""
    from sqlmodel import Session

    from fleet.auth import revoke_token

    engine = _engine()
    try:
        with Session(engine) as s:
            token = revoke_token(s, name, "cli")
            if token is None:
                typer.echo(f"maille: no token {name!r}", err=True)
                raise typer.Exit(1)
            if token.broker_hash:
                _sync_broker_if_administered(s)
    finally:
        engine.dispose()
    typer.echo(f"maille: token {name!r} revoked")


def _sync_broker_if_administered(session) -> None:
    """`maille broker sync` after a token's broker account changed, or a hint when not set up here."""
    from fleet.broker_admin import BrokerAdminError, sync

    settings = get_settings()
    if not settings.broker_password_file:
        typer.echo(
            "maille: the broker's files are not administered here; run `maille broker sync` where they are",
            err=True,
        )
        return
    try:
        result = sync(session, settings)
    except BrokerAdminError as e:
        typer.echo(f"maille: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"maille: broker users {result.users}, {'reloaded' if result.reloaded else 'files written'}", err=True
    )


def _api():
    """An HTTP client for the fleet's API from settings (MAILLE_API_URL, MAILLE_TOKEN)."""
    import httpx

    settings = get_settings()
    if settings.token is None:
        raise typer.BadParameter("no API token: set MAILLE_TOKEN (see `maille token create`)")
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    return httpx.Client(base_url=settings.api_url, headers=headers, timeout=10)


def _call(response) -> dict:
    """The JSON body of a successful answer; a problem document is printed and exits 1."""
    body = response.json()
    if response.is_error:
        typer.echo(f"maille: {body.get('title', response.status_code)}: {body.get('detail', body)}", err=True)
        raise typer.Exit(1)
    return body


def _pairs(items: list[str], option: str) -> dict:
    """k=v pairs; each value read as JSON when it is (5, 1.5, true, "x", [..]), else as a string."""
    import json

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not k=v", param_hint=option)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _wait(check, timeout: float, what: str) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        body = check()
        if body is not None:
            return body
        if time.monotonic() > deadline:
            typer.echo(f"maille: no {what} within {timeout:g} s", err=True)
            raise typer.Exit(2)
        time.sleep(0.2)


@device_app.command("cmd")
def device_cmd(
    device: str = typer.Argument(..., help="Device id."),
    cmd: str = typer.Argument(
        ..., help="reboot, identify, co2_recalibrate, time_sync, flush_outbox, log_level"
    ),
    arg: list[str] = typer.Option(None, "--arg", help="A command argument k=v (repeat for more)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the node's ack and show it."),
    timeout: float = typer.Option(30, "--timeout", help="How long --wait waits, seconds."),
) -> None:
    """Send a command to a device; with --wait, show its ack."""
    import json

    with _api() as http:
        body = {"cmd": cmd, "args": _pairs(arg, "--arg")}
        sent = _call(http.post(f"/api/v1/devices/{device}/commands", json=body))
        if wait:
            url = f"/api/v1/devices/{device}/commands/{sent['id']}"

            def acked() -> dict | None:
                found = _call(http.get(url))
                return found if found["status"] != "sent" else None

            sent = _wait(acked, timeout, "ack")
    typer.echo(json.dumps(sent))
    if sent["status"] == "failed":
        raise typer.Exit(1)


@device_app.command("config")
def device_config(
    device: str = typer.Argument(..., help="Device id."),
    set_: list[str] = typer.Option(None, "--set", help="A setting k=v, e.g. sample_interval_s=30 (repeat)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the node reports the new version."),
    timeout: float = typer.Option(30, "--timeout", help="How long --wait waits, seconds."),
) -> None:
    """Show a device's config (desired against reported), or change settings with --set (merged into
    the desired settings)."""
    import json

    with _api() as http:
        url = f"/api/v1/devices/{device}/config"
        body = _call(http.get(url))
        if set_:
            body = _call(http.put(url, json={**(body["settings"] or {}), **_pairs(set_, "--set")}))
        if wait and set_:

            def settled() -> dict | None:
                found = _call(http.get(url))
                return found if found["in_sync"] or found["error"] else None

            body = _wait(settled, timeout, "ack")
    typer.echo(json.dumps(body))
    if body.get("error"):
        raise typer.Exit(1)


rollout_app = typer.Typer(
    help="Roll a published release out to devices in waves, through the fleet's API "
    "(MAILLE_API_URL, MAILLE_TOKEN).",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


@release_app.command("publish")
def release_publish(
    bundle: Path = typer.Argument(..., help="A signed bundle folder (from `maille release sign`)."),
) -> None:
    """Check a signed bundle against the fleet's release public key(s), store it in the bundle store
    (MAILLE_BUNDLE_DIR) and register it; the fleet's bundle server then serves it to the nodes."""
    from sqlmodel import Session

    from fleet import bundles

    settings = get_settings()
    engine = _engine()
    try:
        with Session(engine) as s:
            rel = bundles.publish(s, settings.bundle_dir, bundle, settings.release_keys, "cli")
            typer.echo(
                f"published: release {rel.version} for {rel.arch}{' (rollback)' if rel.rollback else ''}, "
                f"{rel.files} files, {rel.size} bytes, manifest sha256 {rel.manifest_sha256[:16]}…, "
                f"signed by {rel.key_id}\n  {bundles.manifest_url(settings.bundle_base_url, rel)}"
            )
    except (bundles.PublishError, ValueError, OSError) as e:
        typer.secho(f"maille: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def _windows(items: list[str] | None) -> dict:
    """SITE=HH:MM-HH:MM[@TZ] (repeat): maintenance windows per site."""
    out: dict[str, list[dict]] = {}
    for item in items or ():
        site, sep, rest = item.partition("=")
        span, _, tz = rest.partition("@")
        start, dash, end = span.partition("-")
        if not sep or not dash:
            raise typer.BadParameter(f"{item!r} is not SITE=HH:MM-HH:MM[@TZ]", param_hint="--window")
        out.setdefault(site, []).append({"start": start, "end": end, **({"tz": tz} if tz else {})})
    return out


@rollout_app.command("create")
def rollout_create(
    release: str = typer.Option(..., "--release", help="The published release's version."),
    arch: str = typer.Option(None, "--arch", help="When the version is published for several."),
    site: list[str] = typer.Option(None, "--site", help="Target devices of these sites (repeat or a,b)."),
    building: list[str] = typer.Option(None, "--building", help="… of these buildings (slugs)."),
    board: list[str] = typer.Option(None, "--board", help="… with these boards."),
    tag: list[str] = typer.Option(None, "--tag", help="… with any of these tags."),
    from_version: list[str] = typer.Option(None, "--from-version", help="… running these versions now."),
    device: list[str] = typer.Option(None, "--device", help="… these devices."),
    canary: int = typer.Option(1, "--canary", min=1, help="Devices in the first wave."),
    waves: str = typer.Option("50,100", "--waves", help="Then waves up to these cumulative percentages."),
    success: float = typer.Option(0.9, "--success", help="Fraction of a wave that must confirm to advance."),
    failure: float = typer.Option(0.2, "--failure", help="Fraction of a wave failing that halts everything."),
    timeout: float = typer.Option(1800, "--timeout", help="Seconds a device may take."),
    retries: int = typer.Option(1, "--retries", help="Offers again after a failure or a timeout."),
    site_cap: int = typer.Option(5, "--site-cap", help="Devices updating at once per site."),
    jitter: float = typer.Option(60, "--jitter", help="Random start delay per device, up to this many s."),
    window: list[str] = typer.Option(None, "--window", help="SITE=HH:MM-HH:MM[@TZ]: allowed window."),
    ignore_calendar: bool = typer.Option(
        False, "--ignore-calendar", help="Update even while a site's calendar says it is occupied."
    ),
    gate: float = typer.Option(
        600, "--gate", help="Seconds updated nodes have to publish every channel again."
    ),
    name: str = typer.Option("", "--name", help="A name to find it by."),
    watch: bool = typer.Option(False, "--watch", help="Then show its progress live."),
) -> None:
    """Plan a rollout (devices and waves) and start it."""
    body = {
        "release": release,
        "name": name,
        "targets": {
            "sites": _csv(site),
            "buildings": _csv(building),
            "boards": _csv(board),
            "tags": _csv(tag),
            "versions": _csv(from_version),
            "devices": _csv(device),
        },
        "canary": canary,
        "waves": [float(w) for w in waves.split(",")],
        "success_threshold": success,
        "failure_threshold": failure,
        "timeout_s": timeout,
        "retries": retries,
        "site_cap": site_cap,
        "start_jitter_s": jitter,
        "windows": _windows(window),
        "avoid_occupied": not ignore_calendar,
        "gate_s": gate,
        **({"arch": arch} if arch else {}),
    }
    with _api() as http:
        made = _call(http.post("/api/v1/rollouts", json=body))
    typer.echo(
        f"maille: rollout {made['id']} of {made['release']}: {len(made['targets'])} devices in "
        f"{len(made['waves'])} waves ({', '.join(str(w['size']) for w in made['waves'])})"
    )
    if watch:
        rollout_status(made["id"], watch=True, as_json=False, interval=2.0)


def _rollout_view(r: dict):
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    colour = {"running": "cyan", "paused": "yellow", "completed": "green", "halted": "red", "aborted": "red"}
    head = Table.grid(padding=(0, 1))
    total = len(r["targets"])
    done = r["counts"].get("confirmed", 0)
    head.add_row(
        f"[bold]rollout {r['id']}[/] {r['name']} release {r['release']} ({r['arch']})",
        f"[{colour.get(r['status'], 'white')}]{r['status']}[/]",
        f"{done}/{total} confirmed",
    )
    if r["reason"]:
        head.add_row(f"[red]{r['reason']}", "", "")
    for why in r.get("waiting", []):
        head.add_row(f"[yellow]waiting: {why}", "", "")
    waves = Table("wave", "size", "status", "progress", "outcomes", box=None)
    for w in r["waves"]:
        ok = w["counts"].get("confirmed", 0)
        waves.add_row(
            str(w["index"]) + (" (canary)" if w["index"] == 0 else ""),
            str(w["size"]),
            w["status"],
            ProgressBar(total=w["size"], completed=ok, width=24),
            ", ".join(f"{k} {v}" for k, v in sorted(w["counts"].items())),
        )
    devices = Table("device", "wave", "state", "node", "attempt", "running", "reason", box=None)
    for t in r["targets"]:
        if t["state"] in ("pending", "cancelled") and not t["attempt"]:
            continue
        node = t["node_state"] or ""
        if t["node_state"] == "downloading" and t["progress"] is not None:
            node += f" {t['progress']}%"
        devices.add_row(
            t["device"],
            str(t["wave"]),
            t["state"],
            node,
            str(t["attempt"]),
            t["running"] or "",
            (t["reason"] or "")[:60],
        )
    return Group(head, waves, devices)


@rollout_app.command("status")
def rollout_status(
    rollout_id: int = typer.Argument(None, help="Rollout id (default: list them all)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Live view until it ends (Ctrl-C leaves)."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
) -> None:
    """Where a rollout stands: its waves, each device's update, why it halted."""
    import json
    import time

    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    with _api() as http:
        if rollout_id is None:
            found = _call(http.get("/api/v1/rollouts"))
            if as_json:
                typer.echo(json.dumps(found))
                return
            for r in found:
                console.print(
                    f"{r['id']:>4}  {r['release']:<10} {r['status']:<10} wave {r['wave']}  "
                    f"{r['counts'].get('confirmed', 0)}/{len(r['targets'])} confirmed  {r['name']}"
                )
            return
        url = f"/api/v1/rollouts/{rollout_id}"
        r = _call(http.get(url))
        if as_json:
            typer.echo(json.dumps(r))
        elif not watch:
            console.print(_rollout_view(r))
        else:
            with Live(_rollout_view(r), console=console, refresh_per_second=4) as live:
                while r["status"] in ("running", "paused"):
                    time.sleep(interval)
                    r = _call(http.get(url))
                    live.update(_rollout_view(r))
    if r["status"] in ("halted", "aborted"):
        raise typer.Exit(1)


def _rollout_action(rollout_id: int, action: str) -> None:
    with _api() as http:
        r = _call(http.post(f"/api/v1/rollouts/{rollout_id}/{action}"))
    typer.echo(f"maille: rollout {r['id']} is {r['status']}")


@rollout_app.command("pause")
def rollout_pause(rollout_id: int = typer.Argument(...)) -> None:
    """No new offers; devices updating now finish."""
    _rollout_action(rollout_id, "pause")


@rollout_app.command("resume")
def rollout_resume(rollout_id: int = typer.Argument(...)) -> None:
    """Carry on where it paused."""
    _rollout_action(rollout_id, "resume")


@rollout_app.command("abort")
def rollout_abort(rollout_id: int = typer.Argument(...)) -> None:
    """Stop for good; the retained offers of the devices not done are withdrawn."""
    _rollout_action(rollout_id, "abort")
