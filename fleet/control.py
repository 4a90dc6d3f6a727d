"""Remote config and commands, fleet side: store what is asked, publish it to the node, and record
the node's ack.

Config is retained on `maille/v1/<id>/config` with a version the fleet assigns (previous + 1); the node
reports the version it applied in its birth and in the `config-<v>` ack. Commands go QoS 1 on `cmd`
with an id the fleet assigns; the node's ack carries the same id.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from sqlmodel import Session

from fleet import audit, contract
from fleet.models import Command, Device, DeviceConfig, utcnow
from fleet.settings import parse_mqtt_url

log = logging.getLogger("maille.control")
PUBLISH_TIMEOUT_S = 5.0


class PublishError(RuntimeError):
    pass


class Publisher:
    """The fleet's own MQTT connection for what the API sends down (paho, in its network thread)."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        target = parse_mqtt_url(mqtt_url)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if target.username:
            self.client.username_pw_set(target.username, target.password)
        if target.tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(0.2, 5)
        self.client.connect_async(target.host, target.port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        """QoS 1, waiting for the broker's PUBACK; PublishError if it does not come."""
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise PublishError("the fleet is not connected to the broker")
            time.sleep(0.05)
        info = self.client.publish(topic, payload, qos=1, retain=retain)  # paho 2 publish is thread-safe
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        if not info.is_published():
            raise PublishError("the broker did not acknowledge the message in time")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def next_config_version(current: DeviceConfig | None, device: Device) -> int:
    """Above both what we asked last and what the node runs (a database restored from a backup
    must not send a version the node would take for the one it has)."""
    return max(current.version if current else 0, device.config_version or 0) + 1


def set_config(
    session: Session, publisher: Publisher, who: str, device: Device, settings: contract.ConfigSettings
) -> DeviceConfig:
    """Store the desired config under a new version, then publish it retained."""
    current = session.get(DeviceConfig, device.id)
    before = audit.snapshot(current)
    body = settings.model_dump(mode="json", exclude_none=True)
    version = next_config_version(current, device)
    if current is None:
        current = DeviceConfig(device_id=device.id, version=version, settings=body, updated_by=who)
        session.add(current)
    else:
        current.version, current.settings, current.updated_by, current.error = version, body, who, None
        current.updated_at = utcnow()
    session.flush()
    audit.record(session, who, "config", "device", device.id, before, audit.snapshot(current))
    session.commit()
    session.refresh(current)
    message = contract.Config(version=version, settings=settings)
    publisher.publish(
        contract.topic_of(device.id, "config"), message.model_dump_json(exclude_none=True), retain=True
    )
    return current


def send_command(
    session: Session,
    publisher: Publisher,
    who: str,
    device: Device,
    cmd: str,
    args: dict[str, Any],
    expires: int | None = None,
) -> Command:
    """Store the command, publish it, and mark it sent (or failed, when the broker did not take it)."""
    command = Command(id=f"c-{secrets.token_hex(8)}", device_id=device.id, cmd=cmd, args=args, created_by=who)
    session.add(command)
    session.flush()
    audit.record(session, who, "command", "device", device.id, after=audit.snapshot(command))
    session.commit()
    fields = {"id": command.id, "cmd": cmd, "args": args or None, "expires": expires}
    message = contract.Cmd.model_validate({k: v for k, v in fields.items() if v is not None})
    try:
        publisher.publish(contract.topic_of(device.id, "cmd"), message.model_dump_json(exclude_none=True))
    except PublishError as e:
        command.status, command.error = "failed", str(e)[:200]
        session.commit()
        raise
    session.refresh(command)
    return command


def apply_ack(session: Session, ack: contract.Ack, device: Device, at: datetime) -> None:
    """Record a node's ack: a config's outcome on the device and its desired config, a command's on
    the command. Acks for commands this fleet does not know (another database, expired) are ignored."""
    if ack.cmd == "config" or ack.id == "config" or ack.config_version is not None:
        desired = session.get(DeviceConfig, device.id)
        if ack.ok and ack.config_version is not None:
            device.config_version = ack.config_version
            if desired is not None and desired.version == ack.config_version:
                desired.error = None
        elif desired is not None:
            desired.error = (ack.error or "refused")[:200]
        return
    command = session.get(Command, ack.id)
    if command is None or command.device_id != device.id:
        log.info("ack for unknown command %r from %s", ack.id, device.id)
        return
    command.status = "ok" if ack.ok else "failed"
    command.result, command.error, command.acked_at = ack.result, ack.error, at
