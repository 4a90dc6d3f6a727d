"""The node's flash as a set of files: one builder for virtual boards, LittleFS images and mpremote."""

from __future__ import annotations

import json
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


def app_files(slot: str = "a") -> dict[str, bytes]:
    """The application package as it lies in an app slot (`app/<slot>/node/...`)."""
    src = FIRMWARE / "app"
    return {
        f"app/{slot}/{p.relative_to(src).as_posix()}": p.read_bytes()
        for p in sorted(src.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def node_files(config: dict, creds: dict) -> dict[str, bytes]:
    """Everything a fresh node's flash holds: loader, slot a (active), config and credentials."""
    files = {
        "boot.py": (FIRMWARE / "loader" / "boot.py").read_bytes(),
        "main.py": (FIRMWARE / "loader" / "main.py").read_bytes(),
        "app/active": b"a",
        "config.json": json.dumps(config, indent=1).encode(),
        "creds.json": json.dumps(creds).encode(),
    }
    files.update(app_files("a"))
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
