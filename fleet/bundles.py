"""The fleet's release bundles: the store (`maille release publish`) and their HTTP server.

Publishing checks a bundle exactly as a node will (signature by one of the configured release
*public* keys, then every file's size and hash), copies it under the bundle store as
`releases/<version>-<arch>/`, and registers a Release row. The fleet holds no private key: it can
serve a release, never make one.

The server answers GET with Range (nodes resume cut downloads) and throttles globally: at most
`max_concurrent` transfers at a time (the others wait their turn, they are not refused) and at most
`rate_bps` bytes per second over all transfers together.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

from sqlmodel import Session, select

from fleet import audit
from fleet.models import Release
from provisioning import release as bundle
from provisioning.bundle_server import RANGE_RE, http_server

CHUNK = 4096
WAIT_FOR_SLOT_S = 60.0  # how long a request waits for a transfer slot before a 503


class PublishError(ValueError):
    pass


def release_dir(store: Path, rel: Release) -> Path:
    return Path(store) / "releases" / rel.path


def manifest_url(base_url: str, rel: Release) -> str:
    return f"{base_url.rstrip('/')}/releases/{rel.path}/manifest.json"


def verify_with_any(src: Path, keys: list[str]) -> tuple[dict, str]:
    """The manifest and the signing key's id, when one of `keys` signed the bundle; PublishError if none."""
    if not keys:
        raise PublishError(
            "no release public key configured (MAILLE_RELEASE_PUBLIC_KEY or release_public_keys)"
        )
    try:
        signed_by = json.loads((src / "manifest.sig").read_text()).get("key")
    except FileNotFoundError:
        raise PublishError(f"{src}: unsigned (no manifest.sig)") from None
    except ValueError as e:
        raise PublishError(f"{src}: manifest.sig is not JSON: {e}") from None
    for key in keys:
        pub = bundle.load_public_key(key)
        if bundle.key_id(pub) != signed_by:
            continue
        try:
            return bundle.verify(src, pub), signed_by
        except (bundle.ReleaseError, OSError, KeyError, ValueError) as e:
            raise PublishError(f"{src}: {e}") from None
    known = ", ".join(bundle.key_id(bundle.load_public_key(k)) for k in keys)
    raise PublishError(f"{src}: unknown key: signed by {signed_by}, the fleet knows {known}")


def publish(session: Session, store: Path, src: Path, keys: list[str], who: str) -> Release:
    """Verify the bundle at `src`, copy it into the store, register it; commits."""
    src = Path(src)
    if not (src / "manifest.json").is_file():
        raise PublishError(f"{src}: no manifest.json (not a release bundle folder)")
    manifest, key_id = verify_with_any(src, keys)
    version, arch = manifest["version"], manifest["arch"]
    digest = hashlib.sha256((src / "manifest.json").read_bytes()).hexdigest()
    existing = session.exec(select(Release).where(Release.version == version, Release.arch == arch)).first()
    if existing is not None:
        if existing.manifest_sha256 == digest:
            return existing  # the same bundle again: nothing to do
        raise PublishError(f"release {version} for {arch} is already published with another manifest")
    name = f"{version}-{arch}"
    dest = Path(store) / "releases" / name
    if dest.exists():
        shutil.rmtree(dest)  # left over from a publish that did not commit
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(dest)
    rel = Release(
        version=version,
        arch=arch,
        rollback=bool(manifest.get("rollback")),
        manifest_sha256=digest,
        key_id=key_id,
        path=name,
        files=len(manifest["files"]),
        size=sum(f["zsize"] for f in manifest["files"]),
        created_by=who,
    )
    session.add(rel)
    session.flush()
    audit.record(session, who, "publish", "release", rel.id, after=audit.snapshot(rel))
    session.commit()
    session.refresh(rel)
    return rel


class TokenBucket:
    """Bytes per second shared by every transfer (0: unlimited)."""

    def __init__(self, rate_bps: int, burst: int | None = None) -> None:
        self.rate = rate_bps
        self.capacity = burst or max(CHUNK, rate_bps // 4)
        self.tokens = float(self.capacity)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(min(wait, 0.5))


class BundleHTTPServer:
    """Serves the store's `releases/…` with Range, a global transfer cap and a global byte rate."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, max_concurrent: int = 8, rate_bps: int = 0
    ) -> None:
        self.root = Path(root).resolve()
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.bucket = TokenBucket(rate_bps)
        self.sent = 0
        self.active = 0
        self.peak = 0  # the most transfers ever running at once
        self._lock = threading.Lock()
        self.httpd, self._thread = http_server(host, port, self._get, "bundles")

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BundleHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(h.path.split("?", 1)[0])
        target = (self.root / path.lstrip("/")).resolve()
        if not path.startswith("/releases/") or not target.is_relative_to(self.root) or not target.is_file():
            return self._empty(h, 404)
        if not self.slots.acquire(timeout=WAIT_FOR_SLOT_S):
            return self._empty(h, 503, {"Retry-After": "30"})
        try:
            with self._lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            self._send(h, target)
        finally:
            with self._lock:
                self.active -= 1
            self.slots.release()

    def _send(self, h: BaseHTTPRequestHandler, target: Path) -> None:
        data = target.read_bytes()
        start, end, status = 0, len(data), 200
        rng = h.headers.get("Range")
        if rng:
            m = RANGE_RE.match(rng.strip())
            if not m or int(m.group(1)) >= len(data):
                return self._empty(h, 416, {"Content-Range": f"bytes */{len(data)}"})
            start = int(m.group(1))
            end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        h.end_headers()
        try:
            for i in range(start, end, CHUNK):
                chunk = data[i : min(end, i + CHUNK)]
                self.bucket.take(len(chunk))
                h.wfile.write(chunk)
                with self._lock:
                    self.sent += len(chunk)
            h.wfile.flush()
        except OSError:
            return

    @staticmethod
    def _empty(h: BaseHTTPRequestHandler, code: int, headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()
