"""`--port sim:DIR`: the same flow writes a virtual board folder that micropython runs."""

from __future__ import annotations

from provisioning.boards import load_board
from provisioning.flash import provision_board
from provisioning.image import build_files, make_config
from provisioning.serial_log import watch
from provisioning.virtual import VirtualBoard


def sim_files(broker, device_id, password, **over):
    sim = load_board("sim")
    cfg = make_config(
        sim,
        device_id,
        "test-site",
        "1.01",
        {"host": broker.host, "port": broker.port, "keepalive": 5},
        sample_interval_s=0.5,
        health_interval_s=2,
        **over,
    )
    return sim, build_files(sim, cfg, {"user": device_id, "password": password})


def test_sim_target_comes_online_with_compiled_app(broker, device_credentials, tmp_path):
    device_id, password = device_credentials()
    sim, files = sim_files(broker, device_id, password)
    assert "app/a/node/app.mpy" in files  # compiled with -march=host
    d = tmp_path / device_id
    r = provision_board(f"sim:{d}", sim, files)
    assert r.target == "sim" and r.sim_dir == d and r.files == len(files)
    vb = VirtualBoard(d).start()
    try:
        diagnosis, text = watch(f"sim:{d}", timeout=30)
        assert diagnosis.online and "accepted" in diagnosis.summary, text
    finally:
        vb.close()
    # a second run changes nothing but keeps the board's runtime data
    before = {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    provision_board(f"sim:{d}", sim, files)
    after = {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before


def test_sim_with_wrong_password_is_diagnosed(broker, device_credentials, tmp_path):
    device_id, _ = device_credentials()
    sim, files = sim_files(broker, device_id, "not-the-password")
    d = tmp_path / device_id
    provision_board(f"sim:{d}", sim, files)
    vb = VirtualBoard(d).start()
    try:
        diagnosis, text = watch(f"sim:{d}", timeout=4)
    finally:
        vb.close()
    assert diagnosis.code == "broker_refused", text
    assert "not-the-password" not in text


def test_stale_source_is_removed_when_the_app_becomes_compiled(broker, tmp_path):
    sim, files = sim_files(broker, "dev-stale", "pw")
    src = build_files(
        sim, {"device_id": "dev-stale", "mqtt": {"host": "h"}}, {"user": "u", "password": "p"}, compile=False
    )
    d = tmp_path / "b"
    provision_board(f"sim:{d}", sim, src)
    (d / "data").mkdir(exist_ok=True)
    (d / "data" / "boot").write_text("3")
    provision_board(f"sim:{d}", sim, files)
    assert not (d / "app/a/node/app.py").exists() and (d / "app/a/node/app.mpy").exists()
    assert (d / "data" / "boot").read_text() == "3"
