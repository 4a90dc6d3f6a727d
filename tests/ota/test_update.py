"""Signed over-the-air updates on real `micropython` boards: install, trial, confirm; refusals."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re

from mpremote.romfs import make_romfs

from tests.ota.conftest import BASE, Fleet, manifest_url, ota_node


def test_good_update_goes_through_trial_to_confirmed(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    releases.make("1.1.0", "1.1.0")
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("1.1.0", manifest_url(bundle_server, "1.1.0"))
        confirmed = fleet.wait_status("confirmed", "1.1.0", timeout=60)
        assert confirmed["running"] == "1.1.0" and confirmed["slot"] == "b"
        states = [s["state"] for s in fleet.statuses() if s["version"] == "1.1.0"]
        order = ["offered", "downloading", "verifying", "installed", "rebooting", "trial", "confirmed"]
        assert [s for s in order if s in states] == order
        assert states.index("confirmed") > states.index("trial") > states.index("rebooting")
        fleet.wait_online("1.1.0")
        pointer = json.loads((vb.root / "app" / "active").read_text())
        assert pointer["slot"] == "b" and pointer["trial"] is False
    finally:
        fleet.clear()


def test_a_board_running_its_slots_from_rom_updates_into_the_other_image(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    # Slots as ROMFS images executed in place (provisioning.romfs maps them as ROM segments): the
    # node installs the update into slot b's files, writes slot b's image from them
    # (node/romfs.py), and the trial runs from that image.
    releases.make("1.1.1", "1.1.1")
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path, rom=True)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        assert "loader: starting app slot a from ROM" in vb.console()
        fleet.offer("1.1.1", manifest_url(bundle_server, "1.1.1"))
        confirmed = fleet.wait_status("confirmed", "1.1.1", timeout=60)
        assert confirmed["running"] == "1.1.1" and confirmed["slot"] == "b"
        assert re.search(r"ota: slot b written to its ROM image \(\d+ bytes\)", vb.console())
        assert "loader: starting app slot b (trial boot 1) from ROM" in vb.console()
        # The node's image of slot b is the one mpremote's writer makes of the installed files.
        with contextlib.redirect_stdout(io.StringIO()):
            want = make_romfs(str(vb.root / "app" / "b"), mpy_cross=False)
        assert (vb.root / "rom" / "b.img").read_bytes() == want
    finally:
        fleet.clear()


def test_refused_releases_leave_the_node_on_its_version(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    from provisioning import release

    # tampered: one file of the bundle replaced after signing (one the node must fetch: the others
    # are the same as in its running slot and are copied from there)
    tampered = releases.make("1.2.0-tampered", "1.2.0")
    z = tampered / "files" / "node" / "__init__.mpy.z"
    data = bytearray(z.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit flipped: same size, other contents
    z.write_bytes(bytes(data))
    replaced = releases.make("1.2.1-replaced", "1.2.1")
    (replaced / "files" / "node" / "__init__.mpy.z").write_bytes(release.compress(b"VERSION = '9.9.9'\n"))
    # bad signature: the manifest edited after signing
    forged = releases.make("1.3.0-forged", "1.3.0")
    m = json.loads((forged / "manifest.json").read_text())
    m["files"][0]["sha256"] = "0" * 64
    (forged / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    # unknown key: a valid signature by a key the node was not provisioned with
    other, _ = release.generate_key(tmp_path / "other.pem")
    releases.make("1.4.0-other-key", "1.4.0", sign_with=other)
    # downgrade: older than the running 1.0.0, not signed as a rollback release
    releases.make("0.9.0", "0.9.0")
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        cases = [
            (
                "1.2.0",
                "1.2.0-tampered",
                "hash mismatch: node/__init__.mpy is not the file the release signed",
            ),
            ("1.2.1", "1.2.1-replaced", "size mismatch: node/__init__.mpy is "),
            ("1.3.0", "1.3.0-forged", "bad signature (key "),
            ("1.4.0", "1.4.0-other-key", "unknown key "),
            ("0.9.0", "0.9.0", "downgrade refused: 0.9.0 is older than the installed 1.0.0"),
        ]
        for version, name, reason in cases:
            fleet.offer(version, manifest_url(bundle_server, name))
            failed = fleet.wait_status("failed", version, timeout=30)
            assert failed["reason"].startswith(reason), failed
            assert failed["running"] == BASE
        states = {(s["version"], s["state"]) for s in fleet.statuses()}
        for version, _, _ in cases:  # nothing was ever switched
            assert (version, "installed") not in states and (version, "trial") not in states
        pointer = (vb.root / "app" / "active").read_text()
        assert pointer == "a"  # never rewritten
        vb.reboot()
        fleet.wait_online(BASE)
        assert "loader: starting app slot a" in vb.tail(200)
    finally:
        fleet.clear()


def test_an_older_release_signed_as_rollback_is_installed(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    releases.make("0.9.5-rollback", "0.9.5", rollback=True)
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("0.9.5", manifest_url(bundle_server, "0.9.5-rollback"), rollback=True)
        assert fleet.wait_status("confirmed", "0.9.5", timeout=60)["running"] == "0.9.5"
        fleet.wait_online("0.9.5")
    finally:
        fleet.clear()


def test_a_one_file_change_downloads_only_that_file(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    releases.make("1.0.1-one-file", "1.0.1", patch={"node/codec.py": "CODEC_NOTE = 'one file changed'"})
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    try:
        vb.start()
        fleet.wait_online(BASE)
        bundle_server.reset_counts()
        fleet.offer("1.0.1", manifest_url(bundle_server, "1.0.1-one-file"))
        fleet.wait_status("confirmed", "1.0.1", timeout=60)
        fetched = {p for p, n in bundle_server.sent.items() if "/files/" in p and n}
        prefix = "/releases/1.0.1-one-file/files/"
        # the changed file, and node/__init__ whose VERSION the build stamps
        assert fetched == {prefix + "node/codec.mpy.z", prefix + "node/__init__.mpy.z"}
        full = sum(
            f.stat().st_size for f in (releases.root / "releases" / "1.0.1-one-file" / "files").rglob("*.z")
        )
        assert bundle_server.bytes_sent(prefix) < full / 5
        assert (vb.root / "app" / "b" / "node" / "app.mpy").read_bytes() == (
            vb.root / "app" / "a" / "node" / "app.mpy"
        ).read_bytes()
    finally:
        fleet.clear()


def test_a_cut_download_resumes_where_it_stopped(
    boards, broker, device_credentials, releases, bundle_server, tmp_path
):
    noise = random.Random(7).randbytes(4000).hex()  # hex of random bytes: ~4 KB compressed
    big = "NOTE = " + repr(noise)
    releases.make("1.0.2-big", "1.0.2", patch={"node/codec.py": big})
    device, vb = ota_node(boards, broker, device_credentials, releases, tmp_path)
    fleet = Fleet(broker, device)
    path = "/releases/1.0.2-big/files/node/codec.mpy.z"
    size = (releases.root / path.lstrip("/")).stat().st_size
    assert size > 3500
    try:
        bundle_server.cut(path, after=1500, times=2)
        vb.start()
        fleet.wait_online(BASE)
        fleet.offer("1.0.2", manifest_url(bundle_server, "1.0.2-big"))
        fleet.wait_status("confirmed", "1.0.2", timeout=60)
        ranges = [r for p, r, _ in bundle_server.requests if p == path]
        assert ranges[0] is None and ranges[1:3] == ["bytes=1500-", "bytes=3000-"]
        assert bundle_server.sent[path] == size  # every byte sent once
        assert "ota: download interrupted" in vb.console()
    finally:
        fleet.clear()
