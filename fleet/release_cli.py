"""`maille release`: build and sign application releases for over-the-air updates.

Signing needs only files (the bundle and the private key), so it runs offline, on a machine that is
not the fleet server: the fleet never holds the release key and cannot forge a release.
"""

from __future__ import annotations

from pathlib import Path

import typer

from provisioning import release
from provisioning.boards import list_boards, load_board

release_app = typer.Typer(
    help="Build and sign application releases for over-the-air updates.", no_args_is_help=True
)

APP_DIR = Path(__file__).resolve().parent.parent / "firmware" / "app"


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"maille: {e}", fg="red", err=True)
    return typer.Exit(1)


@release_app.command("keygen")
def keygen(
    keyfile: Path = typer.Argument(
        ...,
        help="Where to write the private key (PEM, mode 0600); KEYFILE.pub gets "
        "the public key that provisioning puts on every node.",
    ),
) -> None:
    """Make a new release signing key. Keep the private key off the fleet server."""
    try:
        private, public = release.generate_key(keyfile)
    except (FileExistsError, release.ReleaseError) as e:
        raise _fail(e) from None
    typer.echo(f"private key: {private}\npublic key:  {public} ({public.read_text().strip()})")


@release_app.command("build")
def build(
    app_dir: Path = typer.Argument(APP_DIR, help="The application folder (holding node/)."),
    version: str = typer.Option(
        ..., "--version", help="Release version, like 1.4.2 (higher than the nodes')."
    ),
    board: str = typer.Option(
        "esp32-devkitc",
        "--board",
        help=f"Board the release is compiled for ({', '.join(list_boards())}).",
    ),
    out: Path = typer.Option(None, "--out", help="Bundle folder (default: build/release-VERSION-ARCH)."),
    rollback: bool = typer.Option(
        False,
        "--rollback",
        help="An explicit rollback release: nodes accept it even though it is older than what they run.",
    ),
    firmware: Path = typer.Option(
        None,
        "--firmware",
        help="Also update MicroPython: its app image (micropython.bin / .app-bin) for the board's chip; "
        "nodes need an OTA partition table.",
    ),
) -> None:
    """Compile the app for a board's processor into an unsigned release bundle."""
    try:
        b = load_board(board)
        image = firmware.read_bytes() if firmware else None
        bundle = release.build(
            app_dir,
            version,
            b.arch,
            out or Path("build") / f"release-{version}-{b.arch}",
            rollback=rollback,
            firmware=image,
            chip=b.chip,
        )
    except (release.ReleaseError, ValueError, OSError) as e:
        raise _fail(e) from None
    typer.echo(f"bundle: {bundle}  (next: maille release sign {bundle} --key KEYFILE)")


@release_app.command("sign")
def sign(
    bundle: Path = typer.Argument(..., help="The bundle folder from `maille release build`."),
    key: Path = typer.Option(..., "--key", help="The private release key (from `maille release keygen`)."),
) -> None:
    """Sign a bundle with the release key (works offline)."""
    try:
        sig = release.sign(bundle, key)
    except (release.ReleaseError, OSError) as e:
        raise _fail(e) from None
    typer.echo(f"signed: {sig}")


@release_app.command("verify")
def verify(
    bundle: Path = typer.Argument(..., help="The bundle folder."),
    pub: Path = typer.Option(..., "--pub", help="The public release key (KEYFILE.pub)."),
) -> None:
    """Check a bundle exactly as a node will: signature, then every file's size and hash."""
    try:
        manifest = release.verify(bundle, pub)
    except (release.ReleaseError, OSError) as e:
        raise _fail(e) from None
    typer.echo(f"ok: version {manifest['version']} for {manifest['arch']}, {len(manifest['files'])} files")
