"""Ed25519 firmware signatures: the platform signs what it deploys, the device checks before burn.

md5 in `update_firmware` only proves the bytes arrived intact: whoever can publish an offer picks
the md5 too. The platform therefore signs a small manifest that binds the image to its identity
(product, version, size and sha256) with a private key the broker never sees, and the device
installs only an image whose manifest, rebuilt from the bytes it holds, verifies with the public
key it was given. A signature for another version, product or image is worthless.

Manifest bytes (UTF-8, each line ending in "\\n"; docs/PROTOCOL-extensions.md):

    iotfsm-firmware-ed25519-v1
    product=<product id>
    version=<version>
    size=<decimal byte count>
    sha256=<64 lowercase hex digits>

Ed25519 because its keys (32 bytes) and signatures (64) fit any MQTT message, signing needs no
random numbers (ECDSA leaks its key on a repeated nonce), there are no parameters to get wrong
(curve, hash, padding), and small device crypto libraries (Monocypher, TweetNaCl, libsodium)
verify it in a few kilobytes of code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ...machines.ota import version_problem
from ..durable import create_file_exclusive
from ..store.session_store import SessionStore

MANIFEST_HEADER = b"iotfsm-firmware-ed25519-v1\n"
"""Domain separation: these bytes can never be mistaken for anything else the key might sign."""
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PRIVATE_KEY_FILE = "firmware.key"
PUBLIC_KEY_FILE = "firmware.pub"

PrivateKeySource = Ed25519PrivateKey | str | Path
PublicKeySource = Ed25519PublicKey | str | Path | bytes


class FirmwareKeyError(ValueError):
    """A firmware key cannot be used (missing, not Ed25519, readable by others); says what to do."""


def manifest(product: str, version: str, size: int, sha256: str) -> bytes:
    """The exact bytes that are signed. ValueError for a field that could make them ambiguous."""
    problem = version_problem(version)
    if problem is not None:
        raise ValueError(f"version {version[:40]!r} cannot be signed: {problem}")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", product):
        raise ValueError(f"product id {product[:40]!r} must be 1-32 letters or digits")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 {sha256[:70]!r} must be 64 lowercase hex digits")
    body = f"product={product}\nversion={version}\nsize={size}\nsha256={sha256}\n"
    return MANIFEST_HEADER + body.encode("utf-8")


def file_sha256(path: Path, chunk_size: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key (16 hex digits of the sha256 of its raw bytes)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ---- keys -------------------------------------------------------------------------------------


def load_private_key(source: PrivateKeySource) -> Ed25519PrivateKey:
    """The platform's signing key: a key object, or an unencrypted PEM file that only its owner
    may read (a file with any group or other permission bit is refused: chmod 600 it)."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    path = Path(source)
    try:
        info = path.stat()
    except OSError as exc:
        raise FirmwareKeyError(
            f"firmware key {path}: {exc.strerror or exc}; make one with "
            "`iotfsm firmware-key generate --out DIR`"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise FirmwareKeyError(f"firmware key {path} is not a regular file")
    if info.st_mode & 0o077:
        raise FirmwareKeyError(
            f"firmware key {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may "
            f"read it; run `chmod 600 {path}` (a signing key must be readable by its owner only)"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise FirmwareKeyError(
            f"firmware key {path} is encrypted; give an unencrypted PKCS#8 PEM kept at mode 0600"
        ) from None
    except ValueError as exc:
        raise FirmwareKeyError(f"firmware key {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FirmwareKeyError(
            f"firmware key {path} is a {type(key).__name__}, not Ed25519; make one with "
            "`iotfsm firmware-key generate --out DIR`"
        )
    return key


def load_public_key(source: PublicKeySource) -> Ed25519PublicKey:
    """The device's verification key: a key object, PEM bytes, or a PEM file."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes):
        data, where = source, "the public key given"
    else:
        try:
            data, where = Path(source).read_bytes(), f"firmware public key {source}"
        except OSError as exc:
            raise FirmwareKeyError(
                f"firmware public key {source}: {exc.strerror or exc}; copy the platform's "
                f"{PUBLIC_KEY_FILE} to the device"
            ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise FirmwareKeyError(f"{where} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FirmwareKeyError(f"{where} is a {type(key).__name__}, not Ed25519")
    return key


def generate_key_pair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new `firmware.key` (mode 0600, created so: never readable by others, not even for
    a moment) and `firmware.pub` into `directory`. Refuses to overwrite an existing key."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise FirmwareKeyError(
                f"{path} exists; refusing to overwrite a key (devices trust the old one): "
                "move it away or choose another --out"
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    create_file_exclusive(private_path, pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    create_file_exclusive(public_path, public, 0o644)
    return private_path, public_path


# ---- signing (platform) and verifying (device) ------------------------------------------------


@attrs.frozen
class FirmwareSignature:
    """What an offer carries beside Tencent's fields: `firmware_sha256`, `firmware_signature`."""

    sha256: str
    signature: str
    """Base64 (standard alphabet, padded) of the 64-byte Ed25519 signature of the manifest."""


class FirmwareSigner:
    """The platform's side: signs (product, version, image) once and keeps the result in the
    store, so every later offer (and a restart) reuses it without hashing the image again."""

    TABLE = "firmware_signatures"

    def __init__(self, key: PrivateKeySource, store: SessionStore) -> None:
        self.key = load_private_key(key)
        self.key_id = key_id(self.key.public_key())
        self._store = store

    def signature(self, product: str, version: str, file_id: str, image: Path) -> FirmwareSignature:
        """The signature of this deployment, made now if this key has not made it before."""
        name = f"{self.key_id}/{product}/{version}/{file_id}"
        doc: Any = self._store.get(self.TABLE, name)
        if isinstance(doc, dict):
            return FirmwareSignature(doc["sha256"], doc["signature"])
        sha256 = file_sha256(image)
        signed = self.key.sign(manifest(product, version, image.stat().st_size, sha256))
        result = FirmwareSignature(sha256, base64.b64encode(signed).decode("ascii"))
        self._store.put(self.TABLE, name, attrs.asdict(result))
        return result


class FirmwareVerifier:
    """The device's side: whether an image on disk is one the platform signed for this device."""

    def __init__(self, key: PublicKeySource) -> None:
        self.key = load_public_key(key)
        self.key_id = key_id(self.key)

    def problem(
        self, image: Path, product: str, version: str, sha256: str, signature: str
    ) -> str | None:
        """Why the image must not be installed, or None. The manifest is rebuilt from the bytes
        on disk; the offer's sha256 only makes the message say which part differs."""
        if not signature:
            return "the offer carries no firmware_signature (unsigned image)"
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return "firmware_signature is not base64"
        if len(raw) != 64:
            return f"firmware_signature has {len(raw)} bytes, an Ed25519 signature has 64"
        actual = file_sha256(image)
        if sha256 and sha256.lower() != actual:
            return f"the image's sha256 is {actual}, the offer says {sha256[:64]}"
        try:
            signed = manifest(product, version, image.stat().st_size, actual)
        except ValueError as exc:
            return str(exc)
        try:
            self.key.verify(raw, signed)
        except InvalidSignature:
            return (
                f"firmware_signature does not verify with key {self.key_id} for product "
                f"{product}, version {version} and this image"
            )
        return None
