"""MQTT over TLS: the node verifies the broker against the CA it was given (both runtimes)."""

import json
import shutil

import pytest

from fleet.broker import LocalBroker
from fleet.tls import make_ca_and_server
from tests.helpers import Observer, node_config


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    b = LocalBroker(tmp_path_factory.mktemp("tls-broker"), tls=True)
    b.users.set_user("dev-tls", "pw-tls")
    b.start()
    yield b
    b.stop()


def tls_config(broker: LocalBroker) -> dict:
    cfg = node_config("dev-tls", broker)
    cfg["mqtt"].update({"host": "localhost", "port": broker.tls_port, "tls": True})
    return cfg


def test_node_publishes_over_verified_tls(runtime, tls_broker, boards, tmp_path):
    obs = Observer(tls_broker, ["maille/v1/dev-tls/telemetry"])
    try:
        vb = boards(tmp_path / "vb", tls_config(tls_broker), {"user": "dev-tls", "password": "pw-tls"}, runtime=runtime)
        shutil.copy(tls_broker.tls_files["ca_der"], vb.root / "ca.der")
        vb.start()
        _, payload, _ = obs.wait(lambda t, p: True, timeout=20)
        assert json.loads(payload)["seq"] >= 0
        assert f"connected to localhost:{tls_broker.tls_port}" in vb.console()
    finally:
        obs.close()


def test_node_refuses_a_broker_its_ca_did_not_sign(runtime, tls_broker, boards, tmp_path):
    other = make_ca_and_server(tmp_path / "other-ca")
    vb = boards(tmp_path / "vb", tls_config(tls_broker), {"user": "dev-tls", "password": "pw-tls"}, runtime=runtime)
    shutil.copy(other["ca_der"], vb.root / "ca.der")
    vb.start()
    vb.wait_for(r"mqtt: TLS: the broker's certificate was refused", 20)
    assert "crashed" not in vb.console()
    assert "sent seq=" not in vb.console()
