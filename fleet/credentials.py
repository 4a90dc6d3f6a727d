"""Device broker credentials: made here, kept only as Mosquitto `$7$` hashes, revoked by replacement.

The plaintext password exists in one place after `issue` returns it: the board's creds.json. The
audit log records that a credential was issued or revoked, never the password nor its hash.
"""

from __future__ import annotations

import secrets

from sqlmodel import Session, select

from fleet import audit
from fleet.broker import hash_password, verify_password
from fleet.models import DeviceCredential, utcnow


def _entry(cred: DeviceCredential) -> dict:
    return audit.snapshot(cred) | {"hash": "<hidden>"}


def active(session: Session, device_id: str) -> DeviceCredential | None:
    """The device's credential the broker accepts, if any."""
    query = select(DeviceCredential).where(
        DeviceCredential.device_id == device_id, DeviceCredential.revoked_at.is_(None)
    )
    return session.exec(query).first()


def matches(session: Session, device_id: str, password: str) -> bool:
    """Whether `password` (e.g. read back from a board's creds.json) is the device's active one."""
    cred = active(session, device_id)
    return cred is not None and verify_password(password, cred.hash)


def revoke(session: Session, device_id: str, who: str) -> bool:
    """Revoke the device's active credential (in the caller's transaction); False when it had none."""
    cred = active(session, device_id)
    if cred is None:
        return False
    before = _entry(cred)
    cred.revoked_at = utcnow()
    session.add(cred)
    session.flush()
    audit.record(session, who, "revoke", "device_credential", cred.id, before, _entry(cred))
    return True


def issue(session: Session, device_id: str, who: str, issued_for: str | None = None) -> str:
    """A new password for the device, replacing (revoking) its active one; returns the plaintext,
    which the caller writes to the board and nowhere else. Part of the caller's transaction."""
    revoke(session, device_id, who)
    password = secrets.token_urlsafe(24)
    cred = DeviceCredential(device_id=device_id, hash=hash_password(password), issued_for=issued_for)
    session.add(cred)
    session.flush()
    audit.record(session, who, "create", "device_credential", cred.id, after=_entry(cred))
    return password
