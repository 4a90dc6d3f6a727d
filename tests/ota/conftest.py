"""Release bundles, a release key and a bundle server for the OTA tests (real mpy-cross, real HTTP)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from provisioning import release
from provisioning.bundle_server import BundleServer
from provisioning.mpy import mpy_cross_executable
from provisioning.tree import FIRMWARE
from tests.helpers import Observer, node_config

BASE = "1.0.0"
STATUS_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((FIRMWARE.parent / "docs" / "schemas" / "ota_status.schema.json").read_text())
)


class Releases:
    """Signed bundles under one served directory: releases/<name>/manifest.json ..."""

    def __init__(self, root: Path, keyfile: Path, pub: str):
        self.root = root
        self.keyfile = keyfile
        self.pub = pub
        self.app = root / "src"
        shutil.copytree(FIRMWARE / "app", self.app, ignore=shutil.ignore_patterns("__pycache__"))
        self._compiled: dict = {}

    def compiled(self, version: str, patch: dict[str, str] | None = None) -> dict[str, bytes]:
        """The app compiled at `version`; `patch` appends source text to some files first."""
        key = (version, tuple(sorted((patch or {}).items())))
        if key not in self._compiled:
            src = self.app
            if patch:
                src = self.root / "patched" / str(len(self._compiled))
                shutil.copytree(self.app, src)
                for rel, extra in patch.items():
                    (src / rel).write_text((src / rel).read_text() + "\n" + extra + "\n")
            self._compiled[key] = release.compile_app(src, version, "host")
        return dict(self._compiled[key])

    def make(
        self, name: str, version: str, *, files=None, patch=None, sign_with: Path | None = None, **kw
    ) -> Path:
        out = self.root / "releases" / name
        files = files if files is not None else self.compiled(version, patch)
        release.build(self.app, version, "host", out, files=files, **kw)
        release.sign(out, sign_with or self.keyfile)
        return out


@pytest.fixture(scope="session")
def release_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    keyfile, pub = release.generate_key(d / "release.pem")
    return keyfile, pub.read_text().strip()


@pytest.fixture(scope="session")
def releases(tmp_path_factory, release_key) -> Releases:
    r = Releases(tmp_path_factory.mktemp("bundles"), *release_key)
    r.make(BASE, BASE)
    return r


@pytest.fixture
def bundle_server(releases):
    s = BundleServer(releases.root).start()
    yield s
    s.stop()


def manifest_url(server: BundleServer, name: str) -> str:
    return f"{server.url}/releases/{name}/manifest.json"


def ota_node(boards, broker, device_credentials, releases, tmp_path, base=BASE, rom=False, **ota):
    """A virtual board running release `base` from slot a, the fleet's release key provisioned
    (`rom`: its slots executed in place from ROMFS images)."""
    device, pw = device_credentials()
    settings = {"keys": [releases.pub], "confirm_s": 2, "trial_s": 30}
    settings.update(ota)
    cfg = node_config(device, broker, ota=settings, health_interval_s=5)
    vb = boards(tmp_path / device, cfg, {"user": device, "password": pw}, rom=rom)
    release.unpack(releases.root / "releases" / base, vb.root / "app" / "a")
    return device, vb


class Fleet(Observer):
    """The test plays the fleet: stores (acknowledges) the node's data, offers releases, reads ota/status."""

    def __init__(self, broker, device):
        self.device = device
        super().__init__(broker, [f"maille/v1/{device}/{ch}" for ch in ("state", "ota/status")])
        self.publish(self.topic("stored"), json.dumps({"seq": 0}), retain=True)

    def topic(self, ch):
        return f"maille/v1/{self.device}/{ch}"

    def offer(self, version, url, **kw):
        self.publish(self.topic("ota"), json.dumps({"version": version, "url": url, **kw}), retain=True)

    def statuses(self):
        """Every ota/status seen so far, each checked against the contract's schema."""
        out = [json.loads(p) for t, p, _ in self.drain() if t.endswith("/ota/status")]
        for s in out:
            STATUS_SCHEMA.validate(s)
        return out

    def wait_status(self, state, version=None, timeout=30.0):
        _, p, _ = self.wait(
            lambda t, p: (
                t.endswith("/ota/status")
                and json.loads(p)["state"] == state
                and (version is None or json.loads(p)["version"] == version)
            ),
            timeout,
        )
        return json.loads(p)

    def wait_online(self, fw, timeout=30.0):
        """The node's birth message reporting version `fw`."""

        def match(t, p):
            m = json.loads(p) if t.endswith("/state") else {}
            return m.get("state") == "online" and m.get("fw") == fw

        return json.loads(self.wait(match, timeout)[1])

    def clear(self):
        for ch in ("ota", "stored"):
            self.publish(self.topic(ch), b"", retain=True)
        self.close()


def compile_source(source: str, name: str = "mod.py") -> bytes:
    """One module compiled by the real mpy-cross."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / name
        src.write_text(source)
        out = src.with_suffix(".mpy")
        subprocess.run([mpy_cross_executable(), "-o", str(out), str(src)], check=True)
        return out.read_bytes()
