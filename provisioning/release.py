"""Release bundles for over-the-air updates: build, sign (offline, from key files only), verify.

A bundle is a directory, served as is by any HTTP server:

    manifest.json            what the release is (below); the signed bytes, exactly as stored
    manifest.sig             {"alg": "ed25519", "key": <key id>, "sig": <128 hex>}
    files/<path>.z           each file of the app slot, zlib-compressed (MicroPython `deflate.ZLIB`)
    firmware.bin             optional: a MicroPython application image for the OTA partitions

manifest.json:

    {"format": 1, "version": "0.2.0", "min_loader": 2, "arch": "host", "mpy": 774,
     "rollback": false, "compression": "zlib", "wbits": 12, "created": 1795686126,
     "files": [{"path": "node/app.mpy", "sha256": "<hex>", "size": 9000, "zsize": 4000}, ...]}

A release that also updates MicroPython itself carries `"firmware": {"path": "firmware.bin",
"sha256": "<hex>", "size": 1600000, "chip": "esp32"}`: the app image alone (ESP-IDF magic 0xE9,
the chip's id in its header), served uncompressed; the node streams it into its next OTA partition
(firmware/app/node/fwimage.py). Releases without it are unchanged.

The Ed25519 signature covers the manifest's bytes; the manifest holds every file's SHA-256, so
the one signature covers the whole release. `rollback: true` marks a release signed on purpose to
replace a newer one (the node refuses an older version otherwise). `mpy` is the .mpy format
(version | sub-version << 8) the files were compiled to; `arch` the mpy-cross target
(`xtensawin`, `rv32imc`, `host` for the unix port) or `py` for plain sources.

The release key stays on the release manager's machine: `sign` needs nothing but the bundle
directory and the key file, so it runs offline. The node holds only public keys (its
config.json's `ota.keys`), so the fleet, which serves bundles, cannot forge one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path

from provisioning.mpy import CompileError, compile_sources, mpy_format

FORMAT = 1
FIRMWARE_APP = Path(__file__).resolve().parent.parent / "firmware" / "app"
LOADER_VERSION = 2  # firmware/loader/main.py's LOADER_VERSION: the first loader that knows trial boots
ARCHS = ("xtensawin", "rv32imc", "host", "py")
DEFAULT_WBITS = 12  # 4 KiB inflate window on the node
# ESP-IDF image header: magic byte, then at offset 12 the chip id (esp_chip_id_t) as uint16 LE.
IMAGE_MAGIC = 0xE9
CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c6": 13}
PARTITION_TABLE_OFFSET = 0x8000
BOOTLOADER_OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000}  # 0 for the others
VERSION_RE = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")


class ReleaseError(Exception):
    pass


# --- keys ------------------------------------------------------------------------------------
def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover
        raise ReleaseError("the `cryptography` package is needed to sign releases") from e
    return ed25519, serialization


def generate_key(path: str | Path) -> tuple[Path, Path]:
    """A new release key: the private key as PEM (mode 0600) at `path`, the public key (hex) at path.pub."""
    ed25519, serialization = _crypto()
    path = Path(path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = Path(str(path) + ".pub")
    pub.write_text(public_key_hex(key) + "\n")
    return path, pub


def load_private_key(keyfile: str | Path):
    """An Ed25519 private key from a file: PEM (PKCS8), a raw 32-byte seed, or the seed in hex."""
    ed25519, serialization = _crypto()
    data = Path(keyfile).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ReleaseError(f"{keyfile}: not an Ed25519 private key")
        return key
    if len(data) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(data)
    text = data.strip()
    if len(text) == 64:
        try:
            return ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode()))
        except ValueError:
            pass
    raise ReleaseError(f"{keyfile}: expected a PEM Ed25519 key or a 32-byte seed (raw or hex)")


def public_key_hex(key) -> str:
    _, serialization = _crypto()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_public_key(pub: str | bytes | Path) -> bytes:
    """32 raw bytes from hex text, raw bytes, a `.pub` file (hex) or a PEM public key file."""
    if isinstance(pub, bytes) and len(pub) == 32:
        return pub
    if isinstance(pub, Path) or (isinstance(pub, str) and len(pub.strip()) != 64):
        data = Path(pub).read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            _, serialization = _crypto()
            key = serialization.load_pem_public_key(data)
            return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if len(data) == 32:
            return data
        pub = data.decode().strip()
    if isinstance(pub, bytes):
        pub = pub.decode()
    raw = bytes.fromhex(pub.strip())
    if len(raw) != 32:
        raise ReleaseError("an Ed25519 public key is 32 bytes")
    return raw


def key_id(pub: bytes) -> str:
    """Short name of a public key, carried with a signature so the node can say 'unknown key'."""
    return hashlib.sha256(pub).hexdigest()[:16]


# --- build -----------------------------------------------------------------------------------
def parse_version(v: str) -> tuple[int, ...]:
    if not isinstance(v, str) or not VERSION_RE.match(v):
        raise ReleaseError(f"version {v!r}: expected numbers separated by dots, like 1.4.2")
    return tuple(int(p) for p in v.split("."))


def _stamp_version(source: bytes, version: str) -> bytes:
    text, n = re.subn(rb'(?m)^VERSION = "[^"]*"', b'VERSION = "' + version.encode() + b'"', source)
    if n != 1:
        raise ReleaseError('node/__init__.py has no VERSION = "..." line to stamp')
    return text


def compile_app(app_dir: Path, version: str, arch: str) -> dict[str, bytes]:
    """{slot-relative path: bytes}: every .py of the app compiled for `arch` (or as source for `py`)."""
    app_dir = Path(app_dir)
    sources = {
        p.relative_to(app_dir).as_posix(): p.read_bytes()
        for p in sorted(app_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    if not sources:
        raise ReleaseError(f"{app_dir}: no .py files")
    if "node/__init__.py" in sources:
        sources["node/__init__.py"] = _stamp_version(sources["node/__init__.py"], version)
    if arch == "py":
        return sources
    try:
        return compile_sources(sources, arch)
    except CompileError as e:
        raise ReleaseError(str(e)) from None


def check_image(data: bytes, chip: str) -> None:
    """Refuse what is not an application image for `chip`, above all esptool's merged images."""
    if chip not in CHIP_IDS:
        raise ReleaseError(f"firmware images are for ESP32 chips ({', '.join(CHIP_IDS)}), not {chip!r}")
    if len(data) < 24 or data[0] != IMAGE_MAGIC:
        raise ReleaseError("not an ESP application image (no 0xE9 magic byte at its start)")
    table = PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSETS.get(chip, 0)
    if data[table : table + 2] == b"\xaa\x50":
        raise ReleaseError(
            "a merged image (bootloader + partition table + app) for esptool: an OTA update takes the "
            "app image alone (micropython.bin of the build, or the .app-bin of an OTA variant)"
        )
    got = int.from_bytes(data[12:14], "little")
    if got != CHIP_IDS[chip]:
        names = {v: k for k, v in CHIP_IDS.items()}
        raise ReleaseError(f"the image is built for {names.get(got, f'chip id {got}')}, not {chip}")


def compress(data: bytes, wbits: int = DEFAULT_WBITS) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def build(
    app_dir: str | Path,
    version: str,
    arch: str,
    out: str | Path | None = None,
    *,
    rollback: bool = False,
    min_loader: int = LOADER_VERSION,
    wbits: int = DEFAULT_WBITS,
    files: dict[str, bytes] | None = None,
    firmware: bytes | None = None,
    chip: str = "esp32",
) -> Path:
    """Build an unsigned bundle of the app in `app_dir` (the folder holding `node/`); returns its dir.

    `files` replaces the compiled app (tests use it to build releases with chosen contents);
    `firmware`, a MicroPython app image for `chip`, makes the release update MicroPython too.
    """
    parse_version(version)
    if firmware is not None:
        check_image(firmware, chip)
    if arch not in ARCHS:
        raise ReleaseError(f"arch {arch!r}: one of {', '.join(ARCHS)}")
    if not 9 <= wbits <= 15:
        raise ReleaseError("wbits must be between 9 and 15")
    out = Path(out) if out is not None else Path("build") / "releases" / f"{version}-{arch}"
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    contents = files if files is not None else compile_app(Path(app_dir), version, arch)
    entries = []
    for rel in sorted(contents):
        data = contents[rel]
        z = compress(data, wbits)
        dest = out / "files" / (rel + ".z")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(z)
        entries.append(
            {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "zsize": len(z)}
        )
    manifest = {
        "format": FORMAT,
        "version": version,
        "min_loader": min_loader,
        "arch": arch,
        "mpy": 0 if arch == "py" else mpy_format(),
        "rollback": bool(rollback),
        "compression": "zlib",
        "wbits": wbits,
        "created": int(time.time()),
        "files": entries,
    }
    if firmware is not None:
        (out / "firmware.bin").write_bytes(firmware)
        manifest["firmware"] = {
            "path": "firmware.bin",
            "sha256": hashlib.sha256(firmware).hexdigest(),
            "size": len(firmware),
            "chip": chip,
        }
    (out / "manifest.json").write_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
    return out


# --- sign and verify -------------------------------------------------------------------------
def sign(bundle: str | Path, keyfile: str | Path) -> Path:
    """Sign the bundle's manifest with the release key in `keyfile`; writes and returns manifest.sig."""
    bundle = Path(bundle)
    key = load_private_key(keyfile)
    manifest = (bundle / "manifest.json").read_bytes()
    _check_manifest(json.loads(manifest))
    pub = bytes.fromhex(public_key_hex(key))
    sig = {"alg": "ed25519", "key": key_id(pub), "sig": key.sign(manifest).hex()}
    path = bundle / "manifest.sig"
    path.write_text(json.dumps(sig) + "\n")
    return path


def _check_manifest(m: dict) -> None:
    if m.get("format") != FORMAT:
        raise ReleaseError(f"manifest format {m.get('format')!r} is not {FORMAT}")
    parse_version(m.get("version"))
    for f in [*(m.get("files") or ()), *([m["firmware"]] if m.get("firmware") else [])]:
        p = f.get("path", "")
        if p.startswith("/") or ".." in p.split("/") or not p:
            raise ReleaseError(f"bad file path {p!r} in the manifest")


def verify(bundle: str | Path, pubkey: str | bytes | Path) -> dict:
    """Check a bundle as the node will: signature by `pubkey`, then every file's size and hash.

    Returns the manifest; raises ReleaseError with the reason.
    """
    from cryptography.exceptions import InvalidSignature

    ed25519, _ = _crypto()
    bundle = Path(bundle)
    pub = load_public_key(pubkey)
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    try:
        sig = json.loads((bundle / "manifest.sig").read_text())
    except FileNotFoundError:
        raise ReleaseError("unsigned: no manifest.sig") from None
    if sig.get("key") != key_id(pub):
        raise ReleaseError(f"unknown key: signed by {sig.get('key')}, expected {key_id(pub)}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(bytes.fromhex(sig["sig"]), manifest_bytes)
    except (InvalidSignature, ValueError, KeyError):
        raise ReleaseError("bad signature") from None
    manifest = json.loads(manifest_bytes)
    _check_manifest(manifest)
    for f in manifest["files"]:
        z = (bundle / "files" / (f["path"] + ".z")).read_bytes()
        if len(z) != f["zsize"]:
            raise ReleaseError(f"{f['path']}: compressed size {len(z)} != {f['zsize']}")
        data = zlib.decompress(z)
        if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise ReleaseError(f"{f['path']}: hash mismatch")
    fw = manifest.get("firmware")
    if fw is not None:
        image = (bundle / fw["path"]).read_bytes()
        if len(image) != fw["size"] or hashlib.sha256(image).hexdigest() != fw["sha256"]:
            raise ReleaseError(f"{fw['path']}: hash mismatch")
    return manifest


def unpack(bundle: str | Path, slot_dir: str | Path) -> dict:
    """Lay a bundle's files out as an app slot on the host (provisioning a board with a release)."""
    bundle = Path(bundle)
    slot_dir = Path(slot_dir)
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    if slot_dir.exists():
        shutil.rmtree(slot_dir)
    for f in manifest["files"]:
        dest = slot_dir / f["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(zlib.decompress((bundle / "files" / (f["path"] + ".z")).read_bytes()))
    (slot_dir / "manifest.json").write_bytes(manifest_bytes)
    return manifest
