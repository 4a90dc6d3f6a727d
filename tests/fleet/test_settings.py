"""Settings: defaults, a TOML file, environment overrides, and a password never shown."""

from __future__ import annotations

import pytest

from fleet.settings import SETTINGS_SOURCES, Settings, get_settings, mask_url, parse_mqtt_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("MAILLE_DATABASE_URL", "MAILLE_MQTT_URL", "MAILLE_API_PORT", "MAILLE_SETTINGS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_defaults(tmp_path):
    s = get_settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'maille' / 'maille.db'}"
    assert (s.mqtt_url, s.api_host, s.api_port) == ("mqtt://fleet@127.0.0.1:1883", "127.0.0.1", 8000)
    assert (s.max_payload, s.ingest_batch_size, s.ingest_batch_interval) == (4096, 500, 0.05)
    assert "MAILLE_SETTINGS_FILE" in SETTINGS_SOURCES


def test_home_fallback_for_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().database_url == f"sqlite:///{tmp_path / 'home' / '.local/share/maille/maille.db'}"


def test_file_then_environment(monkeypatch, tmp_path):
    default_file = tmp_path / "config" / "maille" / "settings.toml"
    default_file.parent.mkdir(parents=True)
    default_file.write_text('api_port = 9000\nmqtt_url = "mqtt://fleet:file@broker:1884"\n')
    assert Settings().api_port == 9000

    named = tmp_path / "other.toml"
    named.write_text("api_port = 9100\ningest_batch_size = 50\n")
    monkeypatch.setenv("MAILLE_SETTINGS_FILE", str(named))
    monkeypatch.setenv("MAILLE_API_PORT", "9200")
    s = Settings()
    assert (s.api_port, s.ingest_batch_size, s.mqtt_url) == (9200, 50, "mqtt://fleet@127.0.0.1:1883")


def test_bad_mqtt_url_is_refused(monkeypatch):
    monkeypatch.setenv("MAILLE_MQTT_URL", "http://fleet@host")
    with pytest.raises(ValueError, match="mqtt://"):
        Settings()


def test_password_is_masked_and_url_parsed():
    s = Settings(mqtt_url="mqtt://fleet:s%40cret@broker.example:1884")
    assert s.mqtt_url_masked == "mqtt://fleet:***@broker.example:1884"
    assert "cret" not in repr(s.mqtt_url_masked)
    target = parse_mqtt_url(s.mqtt_url)
    assert (target.host, target.port, target.username, target.password, target.tls) == (
        "broker.example",
        1884,
        "fleet",
        "s@cret",
        False,
    )
    assert parse_mqtt_url("mqtts://h").port == 8883
    assert mask_url("mqtt://fleet@h:1") == "mqtt://fleet@h:1"
