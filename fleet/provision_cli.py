"""The technician's commands: `maille provision` (one board or a batch), `maille device replace`,
`maille board start|stop` for virtual boards. Thin: the work is in provisioning.provision."""

from __future__ import annotations

import csv
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleet.settings import get_settings

STEPS = ("register", "broker", "write", "start", "online", "label")
board_app = typer.Typer(
    help="Virtual boards started by `maille provision --port sim:DIR`.", no_args_is_help=True
)


def _provisioner():
    from fleet.db import make_engine, upgrade
    from provisioning.provision import Provisioner

    settings = get_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return Provisioner(engine, settings), engine


def _read_batch(path: Path, timeout: float) -> list:
    """Rows of a batch file: TOML `[[board]]` tables or CSV with a header, both with the columns
    port, site, room, board, name (board and name optional)."""
    from provisioning.provision import Job

    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
        else:
            rows = tomllib.loads(path.read_text()).get("board", [])
    except (OSError, tomllib.TOMLDecodeError, csv.Error) as e:
        raise typer.BadParameter(f"{path}: {e}", param_hint="--batch") from None
    jobs = []
    for i, row in enumerate(rows, 1):
        try:
            jobs.append(Job(timeout=timeout, **row))
        except (ValidationError, TypeError) as e:
            raise typer.BadParameter(f"{path}: row {i}: {e}", param_hint="--batch") from None
    if not jobs:
        raise typer.BadParameter(f"{path}: no rows (TOML: [[board]] tables; CSV: a header and rows)")
    return jobs


def run_jobs(jobs: list, replace: str | None = None, console: Console | None = None) -> list:
    """Provision every job in parallel with one progress view, then print the table; returns the
    outcomes (ProvisionFailed for the jobs that failed)."""
    from provisioning.provision import ProvisionFailed

    console = console or Console()
    provisioner, engine = _provisioner()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.fields[port]}"),
        BarColumn(bar_width=12),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            tasks = [progress.add_task("queued", port=j.port, total=len(STEPS)) for j in jobs]

            def one(i: int):
                def report(step: str, message: str) -> None:
                    progress.update(tasks[i], description=message, completed=STEPS.index(step))

                try:
                    outcome = provisioner.run(jobs[i], report, replace=replace)
                except ProvisionFailed as e:
                    progress.update(tasks[i], description=f"[red]failed at {e.step}")
                    return e
                progress.update(tasks[i], description="[green]done", completed=len(STEPS))
                return outcome

            with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                results = list(pool.map(one, range(len(jobs))))
    finally:
        engine.dispose()
    _print_table(console, jobs, results)
    return results


def _print_table(console: Console, jobs: list, results: list) -> None:
    from provisioning.provision import ProvisionFailed

    table = Table(title="maille provision")
    for column in ("port", "device", "site", "room", "credentials", "written", "state", "label"):
        table.add_column(column)
    for job, r in zip(jobs, results, strict=True):
        if isinstance(r, ProvisionFailed):
            table.add_row(job.port, "", job.site, job.room, "", "", f"[red]{r.step}: {r.code}", "")
        else:
            written = r.firmware if r.written else "unchanged"
            table.add_row(r.port, r.device_id, r.site, r.room, r.credentials, written, r.online, str(r.label))
    console.print(table)
    for job, r in zip(jobs, results, strict=True):
        if isinstance(r, ProvisionFailed):
            console.print(f"[red]{job.port}[/red]: {r}", soft_wrap=True)


def provision(
    port: str = typer.Option(None, "--port", help="Serial port (/dev/ttyUSB0, COM3) or sim:DIR."),
    site: str = typer.Option(None, "--site", help="Site slug, from its site file (maille site apply)."),
    room: str = typer.Option(None, "--room", help="Room name (2.14), or building/floor/room."),
    board: str = typer.Option(
        None, "--board", help="Board file in boards/ (default: sim, or esp32-devkitc)."
    ),
    name: str = typer.Option(None, "--name", help="Name on the label; also tells two nodes of a room apart."),
    firmware: Path = typer.Option(
        None, "--firmware", help="MicroPython .bin (default: the newest cached one)."
    ),
    push: bool = typer.Option(False, "--push", help="The board runs MicroPython: copy files with mpremote."),
    new_credentials: bool = typer.Option(
        False, "--new-credentials", help="Issue a new broker password even if the board holds a valid one."
    ),
    batch: Path = typer.Option(
        None, "--batch", help="TOML or CSV of boards (port, site, room, board, name)."
    ),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for the node to come online."),
) -> None:
    """From a blank ESP32 (or a sim:DIR folder) to a registered node online in its room, with a label.

    Safe to run again: the same device, the same credentials where the board holds them, nothing
    rewritten that is already there. Virtual boards keep running afterwards (`maille board stop DIR`).
    """
    from provisioning.provision import Job

    if batch is not None:
        if port or site or room:
            raise typer.BadParameter(
                "--batch takes ports, sites and rooms from the file", param_hint="--batch"
            )
        jobs = _read_batch(batch, timeout)
    else:
        if not (port and site and room):
            raise typer.BadParameter("give --port, --site and --room (or --batch FILE)")
        jobs = [
            Job(
                port=port,
                site=site,
                room=room,
                board=board,
                name=name,
                firmware=firmware,
                push=push,
                new_credentials=new_credentials,
                timeout=timeout,
            )
        ]
    results = run_jobs(jobs)
    if any(isinstance(r, Exception) for r in results):
        raise typer.Exit(1)


def replace(
    old: str = typer.Argument(..., help="Id of the device whose board is replaced."),
    port: str = typer.Option(..., "--port", help="Serial port of the new board, or sim:DIR."),
    board: str = typer.Option(
        None, "--board", help="Board file of the new board (default: sim or esp32-devkitc)."
    ),
    firmware: Path = typer.Option(
        None, "--firmware", help="MicroPython .bin (default: the newest cached one)."
    ),
    push: bool = typer.Option(
        False, "--push", help="The new board runs MicroPython: copy files with mpremote."
    ),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for the new board to come online."),
) -> None:
    """Put a device on a new board: same id, room, sensors and history; the old board's credentials
    are revoked at once (the broker drops and then refuses it)."""
    from provisioning.provision import Job

    job = Job(port=port, board=board, firmware=firmware, push=push, timeout=timeout)
    if any(isinstance(r, Exception) for r in run_jobs([job], replace=old)):
        raise typer.Exit(1)


@board_app.command("stop")
def board_stop(
    directory: Path = typer.Argument(..., help="The board's folder (the DIR of sim:DIR)."),
) -> None:
    """Stop a virtual board that `maille provision` left running."""
    from provisioning.virtual import stop_detached

    typer.echo(f"maille: {directory} {'stopped' if stop_detached(directory) else 'was not running'}")


@board_app.command("start")
def board_start(
    directory: Path = typer.Argument(..., help="The board's folder (the DIR of sim:DIR)."),
) -> None:
    """Start a provisioned virtual board again (after a reboot of this computer), detached."""
    from provisioning.virtual import detached_pid, start_detached

    pid = detached_pid(directory) or start_detached(directory)
    typer.echo(f"maille: {directory} runs (pid {pid})")
