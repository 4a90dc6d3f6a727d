"""The production broker's users and ACL, rendered from the fleet database and applied.

`sync(session, settings)` writes Mosquitto's password file and ACL file (settings
MAILLE_BROKER_PASSWORD_FILE, MAILLE_BROKER_ACL_FILE) atomically, only when their text changes, then
runs MAILLE_BROKER_RELOAD (e.g. `systemctl reload mosquitto`: a SIGHUP). Users: every device with an
active credential (its stored `$7$` hash), every unrevoked API token with a broker account (read-only,
its sites' topics: `token_readers`) and the fleet's own account from MAILLE_MQTT_URL.

Mosquitto 2.0 re-reads both files on SIGHUP and re-checks the clients already connected: one whose
user is gone or whose password no longer matches is disconnected at once, and its reconnection is
refused with CONNACK 5 (tests/test_provision.py checks this with 2.0.11). So a revocation takes
effect as soon as the sync returns; no dynamic-security plugin is needed.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from fleet.auth import broker_user
from fleet.broker import BrokerUsers, atomic_write, hash_password, verify_password
from fleet.integrations.topics import reader_acl
from fleet.models import ApiToken, DeviceCredential, Site
from fleet.settings import Settings, parse_mqtt_url

# Mosquitto (user mosquitto) must read the files: give their folder group mosquitto with setgid.
FILE_MODE = 0o640


class BrokerAdminError(Exception):
    """The broker cannot be administered with these settings; the message says what to set."""


@dataclass
class SyncResult:
    users: int  # devices with an active credential, token accounts, plus the fleet
    changed: bool  # a file was rewritten
    reloaded: bool  # the reload command ran


def _existing_hashes(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _files(settings: Settings) -> tuple[Path, Path]:
    if not (settings.broker_password_file and settings.broker_acl_file):
        raise BrokerAdminError(
            "the fleet does not administer a broker here: set MAILLE_BROKER_PASSWORD_FILE and "
            "MAILLE_BROKER_ACL_FILE to the files the broker's password_file and acl_file name "
            "(docs/operators.md, 'Broker administration')"
        )
    return Path(settings.broker_password_file), Path(settings.broker_acl_file)


def render(session: Session, settings: Settings) -> BrokerUsers:
    """The broker's users from the database; the fleet's hash is kept while its password matches."""
    password_file, _ = _files(settings)
    fleet = parse_mqtt_url(settings.mqtt_url)
    if not (fleet.username and fleet.password):
        raise BrokerAdminError("MAILLE_MQTT_URL has no user and password for the fleet's own account")
    users = BrokerUsers(password_file.parent, discovery_prefix=settings.integrations.discovery_prefix)
    token_readers(session, users)
    creds = session.exec(select(DeviceCredential).where(DeviceCredential.revoked_at.is_(None))).all()
    for cred in creds:
        users.set_hash(cred.device_id, cred.hash)
    kept = _existing_hashes(password_file).get(fleet.username)
    fleet_hash = kept if kept and verify_password(fleet.password, kept) else hash_password(fleet.password)
    users.set_hash(fleet.username, fleet_hash, admin=True)
    return users


def token_readers(session: Session, users: BrokerUsers) -> int:
    """Make the read-only users those of the unrevoked tokens with a broker account; returns how
    many. Also how a LocalBroker (tests, demo) gets them, before its `reload()`."""
    tokens = session.exec(
        select(ApiToken).where(ApiToken.broker_hash.is_not(None), ApiToken.revoked.is_(False))
    ).all()
    slugs = dict(session.exec(select(Site.id, Site.slug)).all())
    for name in list(users.readers):  # revoked ones go
        users.remove_user(name)
    for token in tokens:
        sites = None if token.site_ids is None else [slugs[i] for i in token.site_ids if i in slugs]
        topics = reader_acl(sites, token.metrics, users.discovery_prefix)
        users.set_reader(broker_user(token.name), token.broker_hash, topics)
    return len(tokens)


def sync(session: Session, settings: Settings) -> SyncResult:
    """Write the files when they changed and make the broker re-read them."""
    password_file, acl_file = _files(settings)
    users = render(session, settings)
    passwd, acl = users.render()
    changed = False
    for path, text in ((password_file, passwd), (acl_file, acl)):
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text, FILE_MODE)
            changed = True
    reloaded = False
    if changed and settings.broker_reload:
        done = subprocess.run(shlex.split(settings.broker_reload), capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerAdminError(
                f"the broker reload command ({settings.broker_reload}) failed: "
                f"{(done.stderr or done.stdout).strip() or done.returncode}"
            )
        reloaded = True
    return SyncResult(users=len(users.hashes), changed=changed, reloaded=reloaded)
