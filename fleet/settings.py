"""Fleet settings: defaults, then a TOML file, then `MAILLE_*` environment variables (highest wins)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleet.alerts import AlertRules
from fleet.integrations.config import IntegrationSettings

SETTINGS_SOURCES = (
    "Settings come from, lowest to highest priority: built-in defaults; the TOML file named by "
    "MAILLE_SETTINGS_FILE (default $XDG_CONFIG_HOME/maille/settings.toml or "
    "~/.config/maille/settings.toml, when present); MAILLE_* environment variables "
    "(e.g. MAILLE_DATABASE_URL, MAILLE_MQTT_URL, MAILLE_API_PORT)."
)


def _xdg_dir(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "maille"


def data_dir() -> Path:
    """Per-user data directory: $XDG_DATA_HOME/maille or ~/.local/share/maille."""
    return _xdg_dir("XDG_DATA_HOME", ".local/share")


def settings_file() -> Path:
    """The TOML settings file in effect (it may not exist)."""
    named = os.environ.get("MAILLE_SETTINGS_FILE")
    return Path(named) if named else _xdg_dir("XDG_CONFIG_HOME", ".config") / "settings.toml"


def _default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'maille.db'}"


@dataclass(frozen=True)
class MqttTarget:
    """An mqtt:// or mqtts:// URL taken apart for the MQTT client."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_mqtt_url(url: str) -> MqttTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise ValueError("MQTT URL has no host")
    tls = parts.scheme == "mqtts"
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to log or print."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[1]}"
    return parts._replace(netloc=netloc).geturl()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILLE_", env_nested_delimiter="__", extra="ignore")

    database_url: str = Field(default_factory=_default_database_url)
    mqtt_url: str = "mqtt://fleet@127.0.0.1:1883"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    max_payload: int = 4096
    ingest_batch_size: int = 500
    ingest_batch_interval: float = 0.05
    # The broker keeps this client's persistent session: one id per fleet service sharing a broker.
    ingest_client_id: str = "maille-ingest"
    # Several workers split the stream on `$share/<group>/…`; worker i keeps client id `<id>-<i>`.
    ingest_workers: int = Field(1, ge=1, le=64)
    ingest_share_group: str = Field("maille-ingest", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Where the `maille device …` commands find the API, and with which token.
    api_url: str = "http://127.0.0.1:8000"
    token: SecretStr | None = None
    metrics_public: bool = True  # false: /metrics wants a token like the API
    alert_interval_s: float = Field(10.0, gt=0)
    alerts: AlertRules = Field(default_factory=AlertRules)
    reboot_window_s: float = Field(3600.0, gt=0)
    health_retention_days: float = Field(30.0, gt=0)  # health history kept for the device page
    webhooks: list[str] = Field(default_factory=list)
    webhook_retries: int = Field(5, ge=1)
    webhook_backoff_s: float = Field(1.0, ge=0)
    # The broker's files the fleet writes (`maille broker sync`) and the command that makes the broker
    # re-read them, e.g. "systemctl reload mosquitto" or "kill -HUP 1234" (docs/operators.md).
    broker_password_file: Path | None = None
    broker_acl_file: Path | None = None
    broker_reload: str | None = None
    # What `maille provision` gives a node: the broker as nodes reach it (mqtt:// or mqtts://, no
    # user; default: MAILLE_MQTT_URL's host and port), its CA certificate, the release public key,
    # extra config.json keys (a JSON object, e.g. {"sample_interval_s": 60}), where labels go.
    node_broker_url: str | None = None
    node_ca_file: Path | None = None
    release_public_key: str | None = None
    node_config: dict[str, Any] = Field(default_factory=dict)
    # Release bundles (fleet/bundles.py): more public keys a published release may be signed with
    # (besides release_public_key), the store, the server nodes download from (its URL as the nodes
    # reach it; default http://api_host:bundle_port), its global transfer cap and byte rate (0: none).
    release_public_keys: list[str] = Field(default_factory=list)
    bundle_dir: Path = Field(default_factory=lambda: data_dir() / "bundles")
    bundle_host: str = "127.0.0.1"
    bundle_port: int = 8001
    bundle_url: str | None = None
    bundle_max_concurrent: int = Field(8, ge=1, le=1024)
    bundle_rate_bps: int = Field(0, ge=0)
    rollout_interval_s: float = Field(5.0, gt=0)  # how often the rollout engine looks again
    labels_dir: Path = Path("labels")
    integrations: IntegrationSettings = Field(default_factory=IntegrationSettings)  # site topics, HA

    @field_validator("mqtt_url", "node_broker_url")
    @classmethod
    def _valid_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mqtt_url(value)
        return value

    @property
    def release_keys(self) -> list[str]:
        return [k for k in [self.release_public_key, *self.release_public_keys] if k]

    @property
    def bundle_base_url(self) -> str:
        return self.bundle_url or f"http://{self.bundle_host}:{self.bundle_port}"

    @property
    def mqtt_url_masked(self) -> str:
        return mask_url(self.mqtt_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file is looked up at construction time so MAILLE_SETTINGS_FILE can change between calls.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=settings_file())


def get_settings() -> Settings:
    return Settings()
