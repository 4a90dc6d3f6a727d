"""`maille release`: keygen, build, sign (offline, from files) and verify, as an operator runs them."""

import json
import subprocess
import sys
from pathlib import Path

MAILLE = [str(Path(sys.executable).with_name("maille"))]


def maille(*args, cwd):
    return subprocess.run(
        MAILLE + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_release_is_built_signed_offline_and_verified(tmp_path):
    key = tmp_path / "release.key"
    out = maille("release", "keygen", key, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    bundle = tmp_path / "bundle"
    out = maille(
        "release", "build", "--version", "9.1.0", "--board", "esp32-devkitc", "--out", bundle, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["version"] == "9.1.0" and manifest["arch"] == "xtensawin"
    out = maille("release", "verify", bundle, "--pub", f"{key}.pub", cwd=tmp_path)
    assert out.returncode == 1 and "manifest.sig" in (out.stderr + out.stdout)  # not signed yet
    assert maille("release", "sign", bundle, "--key", key, cwd=tmp_path).returncode == 0
    out = maille("release", "verify", bundle, "--pub", f"{key}.pub", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: version 9.1.0 for xtensawin")

    first = sorted((bundle / "files").rglob("*.z"))[0]
    first.write_bytes(first.read_bytes()[:-1] + bytes([first.read_bytes()[-1] ^ 1]))  # one bit flipped
    out = maille("release", "verify", bundle, "--pub", f"{key}.pub", cwd=tmp_path)
    assert out.returncode == 1 and "mismatch" in out.stderr
