"""Keys the service holds: the master key wrapping each request's data key, and the certificate signing key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


log = logging.getLogger(__name__)


class DataCipher:
    """Authenticated symmetric encryption (Fernet: AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, key: bytes | str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise DataKeyError("the key is not a Fernet key (32 url-safe base64-encoded bytes)") from exc

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise DataKeyError("stored request data cannot be decrypted with this request's data key") from None


class MasterKey:
    """Wraps and unwraps per-request data keys; never stored beside the data it protects."""

    def __init__(self, key: bytes | str) -> None:
        raw = key.encode() if isinstance(key, str) else key
        try:
            self._fernet = Fernet(raw)
        except (ValueError, TypeError) as exc:
            raise DataKeyError("the master key is not a Fernet key (32 url-safe base64-encoded bytes)") from exc
        self.key_id = hashlib.sha256(raw.strip()).hexdigest()[:16]

    @staticmethod
    def generate() -> bytes:
        return Fernet.generate_key()

    def wrap(self, data_key: bytes) -> bytes:
        return self._fernet.encrypt(data_key)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return self._fernet.decrypt(wrapped)
        except InvalidToken:
            raise DataKeyError(
                f"a request's data key does not open with master key {self.key_id}: configure the master key it "
                "was wrapped under (LETHE_MASTER_KEY or LETHE_MASTER_KEY_FILE)"
            ) from None

    def open(self, wrapped: bytes) -> DataCipher:
        """The cipher of a request whose data key was wrapped under this master key."""
        return DataCipher(self.unwrap(wrapped))


def subject_label(data_key: bytes, subject: str) -> str:
    """HMAC-SHA256 of the subject under its request's data key: unlinkable to the name once that key is destroyed."""
    return hmac.new(data_key, subject.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SealedRequest:
    """A request's uploads encrypted under its own data key, and that key wrapped by the master key."""

    wrapped_key: bytes
    master_key_id: str
    subject_label: str
    subject: bytes
    qa_pairs: bytes
    images: list[tuple[str, str, bytes]]  # (media type, sha256 of the plaintext, ciphertext)


def seal_request(
    master: MasterKey, subject: str, qa_pairs: bytes, images: Sequence[tuple[str, str, bytes]]
) -> SealedRequest:
    """Encrypt one request under a fresh random data key; `images` are (media type, sha256, plaintext)."""
    data_key = Fernet.generate_key()
    cipher = DataCipher(data_key)
    return SealedRequest(
        wrapped_key=master.wrap(data_key),
        master_key_id=master.key_id,
        subject_label=subject_label(data_key, subject),
        subject=cipher.encrypt(subject.encode()),
        qa_pairs=cipher.encrypt(qa_pairs),
        images=[(media, digest, cipher.encrypt(data)) for media, digest, data in images],
    )


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


def outside_data_dir(path: Path, settings: Settings) -> Path:
    """`path`, resolved; refused inside the data dir (a copy or backup of the data would carry its key)."""
    path, data_dir = path.expanduser().resolve(), Path(settings.data_dir).expanduser().resolve()
    if path.is_relative_to(data_dir):
        raise DataKeyError(
            f"the master key file {path} lies inside the data dir {data_dir}: a copy or backup of the data would "
            "carry the key that opens it; set LETHE_MASTER_KEY_FILE to a path outside it, or LETHE_MASTER_KEY"
        )
    return path


def master_key_file(settings: Settings) -> Path:
    return outside_data_dir(settings.resolved_master_key_file, settings)


def master_key_at(path: Path, settings: Settings) -> MasterKey:
    """The master key in `path` (outside the data dir), generated there if absent."""
    path = outside_data_dir(path, settings)
    if not path.is_file():
        log.warning("master key: generating %s; keep it out of the data dir's backups", path)
    return MasterKey(_secret_file(path, MasterKey.generate))


def master_key(settings: Settings) -> MasterKey:
    """The master key of LETHE_MASTER_KEY, else of the key file (created on first start outside the data dir)."""
    if settings.master_key is not None:
        return MasterKey(settings.master_key.get_secret_value())
    return master_key_at(settings.resolved_master_key_file, settings)


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
