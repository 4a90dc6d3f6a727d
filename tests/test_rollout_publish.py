"""The fleet's side of releases: ota/status parsing held to the schema's fixtures, `publish` checking
signatures with public keys only, and the bundle server's global throttling."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from sqlmodel import Session, select

from fleet import bundles, contract
from fleet.db import make_engine, upgrade
from fleet.models import AuditLog, Release
from provisioning import release
from tests.ota.conftest import BASE, Releases

FIXTURES = Path(__file__).parent / "fixtures"
SCHEMAS = Path(__file__).parent.parent / "docs" / "schemas"


@pytest.mark.parametrize(
    "path",
    sorted((FIXTURES / "contract").glob("ota_status-*.json"))
    + sorted((FIXTURES / "contract-invalid").glob("ota_status-*.json")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_ota_status_parser_agrees_with_the_schema(path):
    schema = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "ota_status.schema.json").read_text()))
    payload = path.read_bytes()
    valid = schema.is_valid(json.loads(payload))
    got = contract.parse_ota_status("maille/v1/node-01/ota/status", payload)
    assert valid == (path.parent.name == "contract")
    assert isinstance(got, contract.OtaStatus) == valid, got
    assert (
        contract.parse_ota_status("maille/v1/node-01/ota", payload).reason == contract.RejectReason.bad_topic
    )


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Releases:
    d = tmp_path_factory.mktemp("publish")
    keyfile, pub = release.generate_key(d / "release.pem")
    r = Releases(d, keyfile, pub.read_text().strip())
    r.make(BASE, BASE)
    return r


def test_publish_verifies_with_public_keys_and_registers_the_release(signed, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    other, other_pub = release.generate_key(tmp_path / "other.pem")
    src = signed.root / "releases" / BASE
    store = tmp_path / "store"
    with Session(engine) as s:
        with pytest.raises(bundles.PublishError, match="unknown key"):
            bundles.publish(s, store, src, [other_pub.read_text().strip()], "cli")
        tampered = tmp_path / "tampered"
        import shutil

        shutil.copytree(src, tampered)
        m = json.loads((tampered / "manifest.json").read_text())
        m["rollback"] = True
        (tampered / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(bundles.PublishError, match="bad signature"):
            bundles.publish(s, store, tampered, [signed.pub], "cli")
        rel = bundles.publish(s, store, src, [other_pub.read_text().strip(), signed.pub], "ops")
        assert (rel.version, rel.arch, rel.rollback) == (BASE, "host", False)
        assert (store / "releases" / f"{BASE}-host" / "manifest.sig").is_file()
        assert len(s.exec(select(Release)).all()) == 1
        assert s.exec(select(AuditLog)).one().action == "publish"
    engine.dispose()


def test_bundle_server_caps_transfers_and_bandwidth(tmp_path):
    (tmp_path / "releases" / "x").mkdir(parents=True)
    (tmp_path / "releases" / "x" / "big").write_bytes(b"z" * 40_000)
    server = bundles.BundleHTTPServer(tmp_path, max_concurrent=2, rate_bps=100_000).start()
    try:
        results = []

        def get(headers=None):
            results.append(httpx.get(f"{server.url}/releases/x/big", headers=headers or {}, timeout=30))

        started = time.monotonic()
        threads = [threading.Thread(target=get) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        assert all(r.status_code == 200 and len(r.content) == 40_000 for r in results)
        assert server.peak == 2  # never more than 2 at once; the others waited their turn
        assert took > 1.5  # 200 kB at 100 kB/s (after the first burst)
        part = httpx.get(f"{server.url}/releases/x/big", headers={"Range": "bytes=39000-"})
        assert part.status_code == 206 and len(part.content) == 1000
        assert httpx.get(f"{server.url}/../etc/passwd").status_code == 404
    finally:
        server.stop()
