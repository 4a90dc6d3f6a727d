"""The node's Ed25519 verify and SHA-512 (RFC 8032 vectors, under micropython and CPython), and
release bundles built, signed and verified on the host."""

from __future__ import annotations

import hashlib
import json

import pytest

from provisioning import release
from tests.firmware.conftest import RUNTIMES, run_firmware
from tests.ota.rfc8032 import VECTORS


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param


def test_rfc8032_vectors_verify_and_altered_ones_do_not(runtime):
    code = f"""
import binascii
from node import ed25519
u = binascii.unhexlify
for sk, pk, msg, sig in {VECTORS!r}:
    pk, msg, sig = u(pk), u(msg), u(sig)
    bad_sig = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
    big_s = sig[:32] + (int.from_bytes(sig[32:], "little") + ed25519.L).to_bytes(32, "little")
    print(ed25519.verify(pk, sig, msg), ed25519.verify(pk, sig, msg + b"x"), ed25519.verify(pk, bad_sig, msg),
          ed25519.verify(pk, big_s, msg), ed25519.verify(b"\\xff" * 32, sig, msg))
"""
    r = run_firmware(runtime, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["True False False False False"] * 3


def test_sha512_matches_hashlib(runtime):
    msgs = [b"", b"abc", b"a" * 111, b"a" * 112, b"a" * 239, bytes(range(256)) * 3]
    code = f"""
import binascii
from node.sha512 import sha512
for m in {msgs!r}:
    h = sha512(m[:5]); h.update(m[5:])
    print(binascii.hexlify(h.digest()).decode())
"""
    r = run_firmware(runtime, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [hashlib.sha512(m).hexdigest() for m in msgs]


def test_a_bundle_is_built_signed_and_verified_offline(tmp_path):
    keyfile, pub = release.generate_key(tmp_path / "release.pem")
    assert keyfile.stat().st_mode & 0o777 == 0o600
    bundle = release.build(release.FIRMWARE_APP, "2.0.0", "xtensawin", tmp_path / "bundle")
    release.sign(bundle, keyfile)
    m = release.verify(bundle, pub)
    assert m["version"] == "2.0.0" and m["arch"] == "xtensawin" and m["rollback"] is False
    paths = [f["path"] for f in m["files"]]
    assert (
        "node/app.mpy" in paths
        and "node/ota.mpy" in paths
        and "node/port/esp32.mpy" in paths
        and not any(p.endswith(".py") for p in paths)
    )
    assert all(f["zsize"] == (bundle / "files" / (f["path"] + ".z")).stat().st_size for f in m["files"])

    seed = tmp_path / "seed.bin"  # a raw 32-byte seed signs the same as its PEM
    seed.write_bytes(bytes(range(32)))
    release.sign(bundle, seed)
    with pytest.raises(release.ReleaseError, match="unknown key"):
        release.verify(bundle, pub)

    release.sign(bundle, keyfile)
    (bundle / "files" / "node" / "app.mpy.z").write_bytes(release.compress(b"x"))
    with pytest.raises(release.ReleaseError, match="node/app.mpy"):
        release.verify(bundle, pub)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["rollback"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(release.ReleaseError, match="bad signature"):
        release.verify(bundle, pub)


def test_the_host_port_refuses_firmware_image_updates_clearly(runtime):
    code = """
from node.port import port
for fn, args in ((port.fw_next_partition, ()), (port.fw_mark_valid, ()), (port.fw_running, ()),
                 (port.fw_info, (None,)), (port.fw_read_block, (None, 0, None))):
    try:
        fn(*args)
    except OSError as e:
        print(e)
"""
    r = run_firmware(runtime, code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert len(lines) == 5 and all(
        line.startswith("firmware image updates need esp32.Partition") for line in lines
    )
