"""Module artifacts on disk: safetensors files + a JSON manifest, written atomically, verified on load.

The manifest lists every file of the artifact with its sha256, and the registry stores the sha256 of the
manifest's bytes (`artifact_digest`): one checksum covers the weights, any extra tensors and the config.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.encoder import TokenEncoder
from unlearning.cagul.module import ENCODER_DTYPE, CagulModule, ModuleRewrite
from unlearning.cagul.prefix import RefusalPrefix
from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError
from unlearning.files import write_atomic

# 2: the manifest lists every file's sha256 and the registry's checksum is the manifest's own sha256.
FORMAT_VERSION = 2
WEIGHTS = "module.safetensors"
MANIFEST = "manifest.json"
TENSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RESERVED_KEYS = frozenset({"format_version", "files", "config", "base_model_fingerprint", "digest"})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "safetensors", "lethe"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def tensors_file(name: str) -> str:
    """The file name under which `save_module(tensors={name: ...})` stores a tensor dict."""
    if not TENSOR_NAME.fullmatch(name) or f"{name}.safetensors" in (WEIGHTS, MANIFEST):
        raise ValueError(f"tensor set name {name!r} must match {TENSOR_NAME.pattern} and not be 'module'")
    return f"{name}.safetensors"


def save_module(
    module: CagulModule,
    directory: str | Path,
    base_fingerprint: str,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Write the weights, each tensor set, then the manifest last; returns the manifest plus its "digest"."""
    if clash := RESERVED_KEYS & set(extra or {}):
        raise ValueError(f"extra manifest keys {sorted(clash)} are reserved")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(ENCODER_DTYPE) if k.startswith("encoder.") else v for k, v in module.state_dict().items()}
    blobs = {WEIGHTS: weights} | {tensors_file(n): t for n, t in (tensors or {}).items()}
    files = {}
    for filename, state in blobs.items():
        data = save_bytes({k: v.detach().cpu().contiguous() for k, v in state.items()})
        write_atomic(directory / filename, data)
        files[filename] = hashlib.sha256(data).hexdigest()
    manifest = {
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "method": "cagul",
        "config": module.config.to_dict(),
        "n_tokens": module.n_tokens,
        "hidden_size": module.hidden_size,
        "identity_dim": module.identity_dim,
        "aliases": list(module.aliases),
        "threshold": module.threshold,
        "encoder_dtype": str(ENCODER_DTYPE).removeprefix("torch."),
        "trainable_params": module.num_parameters(),
        "base_model_fingerprint": base_fingerprint,
        "library_versions": _library_versions(),
        "files": files,
        "created_at": datetime.now(UTC).isoformat(),
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write_atomic(directory / MANIFEST, data)
    return {**manifest, "digest": hashlib.sha256(data).hexdigest()}


def _manifest_bytes(directory: Path) -> bytes:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactIntegrityError(f"no module manifest at {path}")
    return path.read_bytes()


def artifact_digest(directory: str | Path) -> str:
    """The artifact's checksum as the registry stores it: the sha256 of the manifest's bytes."""
    return hashlib.sha256(_manifest_bytes(Path(directory))).hexdigest()


def _parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"module manifest {path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ArtifactIntegrityError(
            f"module format {found} at {path} is not {FORMAT_VERSION}: this artifact was written by an older "
            "version of Lethe and carries no per-file checksums; retrain the module"
        )
    if not isinstance(manifest.get("files"), dict) or WEIGHTS not in manifest["files"]:
        raise ArtifactIntegrityError(f"module manifest {path} lists no {WEIGHTS} in its files")
    return manifest


def read_manifest(directory: str | Path, expected_digest: str | None = None) -> dict[str, Any]:
    """The manifest, refused if its bytes differ from `expected_digest` (when given) or its format is old."""
    directory = Path(directory)
    data = _manifest_bytes(directory)
    actual = hashlib.sha256(data).hexdigest()
    if expected_digest is not None and actual != expected_digest:
        raise ArtifactIntegrityError(
            f"checksum mismatch: manifest {directory / MANIFEST} (sha256 {actual[:12]}) differs from the "
            f"registry's checksum {expected_digest[:12]}"
        )
    return _parse_manifest(data, directory / MANIFEST)


def _verified_files(directory: Path, manifest: dict[str, Any], keep: str | None = None) -> bytes | None:
    """Check every file the manifest lists against its sha256; the bytes of `keep`, read once (no re-read race)."""
    kept = None
    for filename, expected in manifest["files"].items():
        if Path(filename).name != filename:
            raise ArtifactIntegrityError(f"module manifest {directory / MANIFEST} names a file outside it: {filename}")
        path = directory / filename
        if not path.is_file():
            raise ArtifactIntegrityError(f"module file missing at {path}")
        if filename == keep:
            kept = path.read_bytes()
            actual = hashlib.sha256(kept).hexdigest()
        else:
            actual = file_sha256(path)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"checksum mismatch: {path} has sha256 {actual[:12]}, the manifest says {expected[:12]}"
            )
    return kept


def verify_artifact(directory: str | Path, expected_digest: str | None = None) -> dict[str, Any]:
    """The manifest, after checking it against `expected_digest` and every file against the manifest."""
    manifest = read_manifest(directory, expected_digest)
    _verified_files(Path(directory), manifest)
    return manifest


def _verified_file(directory: Path, manifest: dict[str, Any], filename: str) -> bytes:
    if filename not in manifest["files"]:
        raise ArtifactIntegrityError(
            f"module manifest {directory / MANIFEST} lists no {filename}; it lists {sorted(manifest['files'])}"
        )
    data = _verified_files(directory, manifest, keep=filename)
    assert data is not None  # listed, so read
    return data


def _manifest_for(directory: Path, base_fingerprint: str, expected_digest: str | None) -> dict[str, Any]:
    """The manifest, refused if its checksum differs or the module was trained on another base model."""
    manifest = read_manifest(directory, expected_digest)
    if manifest["base_model_fingerprint"] != base_fingerprint:
        raise IncompatibleModuleError(
            f"module at {directory} was trained on base model {manifest['base_model_fingerprint'][:12]}, "
            f"not on the loaded base model {base_fingerprint[:12]}: retrain it on this model"
        )
    return manifest


def load_module(
    directory: str | Path, base_fingerprint: str, device: str = "cpu", expected_digest: str | None = None
) -> CagulModule:
    """Load a module, refusing any checksum mismatch or a module trained on another base model."""
    directory = Path(directory)
    manifest = _manifest_for(directory, base_fingerprint, expected_digest)
    data = _verified_file(directory, manifest, WEIGHTS)
    config = CagulConfig.from_dict(manifest["config"])
    shape = (manifest["n_tokens"], manifest["hidden_size"], manifest.get("identity_dim", 0))
    module = CagulModule(config, *shape, aliases=_aliases(manifest))
    module.load_state_dict(load_bytes(data))
    return module.to(device).eval()


def _aliases(manifest: dict[str, Any]) -> tuple[str, ...]:
    return tuple(manifest.get("aliases", ()))


def _part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The state dict of one submodule of a module's weights."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


class GatePart(NamedTuple):
    """What a gate keeps of a module: its discriminator, config, token shape and the subject's names."""

    discriminator: Discriminator
    config: CagulConfig
    shape: dict[str, int]
    aliases: tuple[str, ...]


def load_gate(directory: str | Path, base_fingerprint: str, expected_digest: str, device: str = "cpu") -> GatePart:
    """A module's gate alone, every file checked as `load_module` checks them; what the module rewrites loads when
    its gate first fires (`load_rewrite`)."""
    directory = Path(directory)
    manifest = _manifest_for(directory, base_fingerprint, expected_digest)
    weights = load_bytes(_verified_file(directory, manifest, WEIGHTS))
    config = CagulConfig.from_dict(manifest["config"])
    shape = {k: int(manifest.get(k, 0)) for k in ("n_tokens", "hidden_size", "identity_dim")}
    discriminator = Discriminator(
        shape["n_tokens"],
        shape["hidden_size"],
        config.discriminator_hidden,
        config.discriminator_input,
        shape["identity_dim"],
    )
    discriminator.load_state_dict(_part(weights, "discriminator."))
    return GatePart(discriminator.to(device).eval(), config, shape, _aliases(manifest))


def load_rewrite(directory: str | Path, expected_digest: str, device: str = "cpu") -> ModuleRewrite:
    """Only the token encoder and refusal prefix of a module, its weights file checked against the registry's
    checksum again."""
    directory = Path(directory)
    manifest = read_manifest(directory, expected_digest)
    weights = load_bytes(_verified_file(directory, manifest, WEIGHTS))
    config = CagulConfig.from_dict(manifest["config"])
    hidden, n_tokens = manifest["hidden_size"], manifest["n_tokens"]
    encoder = TokenEncoder(hidden, config.encoder_hidden, n_tokens if config.position_offsets else 0)
    encoder.load_state_dict(_part(weights, "encoder."))
    prefix = None
    if _aliases(manifest):
        prefix = RefusalPrefix(config.prefix_slots, hidden)
        prefix.load_state_dict(_part(weights, "prefix."))
    return ModuleRewrite(encoder, prefix).to(device).eval()


def load_tensors(directory: str | Path, name: str, expected_digest: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor set `name` saved with the module, verified like the weights."""
    directory = Path(directory)
    return load_bytes(_verified_file(directory, read_manifest(directory, expected_digest), tensors_file(name)))
