"""The `maille` command: one entry point for technicians, operators and integrators."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from fleet.settings import SETTINGS_SOURCES, get_settings

app = typer.Typer(
    help="Maille: set up, run and watch a fleet of ESP32 sensor nodes in public buildings.\n\n"
    + SETTINGS_SOURCES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Look after the fleet's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


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
def serve() -> None:
    """Run the fleet service: store what nodes send (ingest) and answer the web API."""
    from fleet.service import serve as run_service

    settings = get_settings()
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
