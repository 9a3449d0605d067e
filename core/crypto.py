"""Keys the service holds: the data key (uploads encrypted at rest) and the certificate signing key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import LetheError
from core.settings import Settings


class DataKeyError(LetheError):
    code = "data_key_error"


class DataCipher:
    """Authenticated symmetric encryption (Fernet: AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, key: bytes | str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise DataKeyError("the data key is not a Fernet key (32 url-safe base64-encoded bytes)") from exc

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise DataKeyError("stored request data cannot be decrypted with the configured data key") from None


def _secret_file(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The secret in `path`, created once (readable by the owner only; concurrent first starts keep one)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(generate())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic create-if-absent
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes().strip()


def data_cipher(settings: Settings) -> DataCipher:
    """The cipher of LETHE_DATA_KEY, else of DATA_DIR/secrets/data.key."""
    if settings.data_key:
        return DataCipher(settings.data_key.get_secret_value())
    return DataCipher(_secret_file(Path(settings.data_dir) / "secrets" / "data.key", Fernet.generate_key))


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class CertificateSigner:
    """Ed25519 signatures over canonical JSON; the public key is published, the private key never leaves."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        signature = self._key.sign(canonical_json(document))
        return {
            "certificate": document,
            "algorithm": "Ed25519",
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode(),
        }


def signing_key(settings: Settings) -> CertificateSigner:
    """The signer of LETHE_SIGNING_KEY (base64 raw 32 bytes), else of DATA_DIR/secrets/signing.key."""

    def generate() -> bytes:
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.b64encode(raw)

    configured = settings.signing_key.get_secret_value() if settings.signing_key else None
    encoded = configured or _secret_file(Path(settings.data_dir) / "secrets" / "signing.key", generate)
    try:
        return CertificateSigner(Ed25519PrivateKey.from_private_bytes(base64.b64decode(encoded)))
    except ValueError as exc:
        raise DataKeyError("the signing key is not a base64 raw 32-byte Ed25519 private key") from exc


def verify_certificate(signed: dict[str, Any], public_key: str) -> bool:
    """Whether `signed` (as returned by CertificateSigner.sign) carries a valid signature of `public_key`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
        key.verify(base64.b64decode(signed["signature"]), canonical_json(signed["certificate"]))
    except (InvalidSignature, KeyError, ValueError, TypeError):
        return False
    return True


class CallbackSigner:
    """`Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as webhook receivers expect."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def header(self, body: bytes, timestamp: int) -> str:
        digest = hmac.new(self._secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={digest}"

    def verify(self, header: str, body: bytes, now: int, tolerance_s: int = 300) -> bool:
        try:
            fields = dict(part.split("=", 1) for part in header.split(","))
            timestamp = int(fields["t"])
        except (ValueError, KeyError):
            return False
        expected = self.header(body, timestamp).split("v1=", 1)[1]
        return abs(now - timestamp) <= tolerance_s and hmac.compare_digest(expected, fields.get("v1", ""))


def callback_signer(settings: Settings) -> CallbackSigner:
    """The signer of LETHE_CALLBACK_SECRET, else of DATA_DIR/secrets/callback.key."""
    if settings.callback_secret:
        return CallbackSigner(settings.callback_secret.get_secret_value().encode())
    path = Path(settings.data_dir) / "secrets" / "callback.key"
    return CallbackSigner(_secret_file(path, lambda: base64.b64encode(os.urandom(32))))
