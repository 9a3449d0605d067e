"""Module artifacts on disk: safetensors weights + a JSON manifest, written atomically, verified on load."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.module import CagulModule
from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError

FORMAT_VERSION = 1
WEIGHTS = "module.safetensors"
MANIFEST = "manifest.json"


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


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_module(
    module: CagulModule, directory: str | Path, base_fingerprint: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write weights then manifest (the manifest last, so a present manifest means a complete artifact)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS}.")
    os.close(fd)
    save_file(state, tmp)
    _write_atomic(directory / WEIGHTS, Path(tmp).read_bytes())
    Path(tmp).unlink(missing_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": "cagul",
        "config": module.config.to_dict(),
        "n_tokens": module.n_tokens,
        "hidden_size": module.hidden_size,
        "threshold": module.threshold,
        "trainable_params": module.num_parameters(),
        "base_model_fingerprint": base_fingerprint,
        "library_versions": _library_versions(),
        "sha256": file_sha256(directory / WEIGHTS),
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    _write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactIntegrityError(f"no module manifest at {path}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactIntegrityError(f"module manifest {path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactIntegrityError(f"module format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def load_module(directory: str | Path, base_fingerprint: str, device: str = "cpu") -> CagulModule:
    """Load a module, refusing a checksum mismatch or a module trained on another base model."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["base_model_fingerprint"] != base_fingerprint:
        raise IncompatibleModuleError(
            f"module at {directory} was trained on base model {manifest['base_model_fingerprint'][:12]}, "
            f"not on the loaded base model {base_fingerprint[:12]}: retrain it on this model"
        )
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ArtifactIntegrityError(f"module weights missing at {weights}")
    actual = file_sha256(weights)
    if actual != manifest["sha256"]:
        raise ArtifactIntegrityError(
            f"checksum mismatch: module weights at {weights} have sha256 {actual[:12]}, "
            f"manifest says {manifest['sha256'][:12]}"
        )
    module = CagulModule(CagulConfig.from_dict(manifest["config"]), manifest["n_tokens"], manifest["hidden_size"])
    module.load_state_dict(load_file(weights, device=device))
    return module.to(device).eval()
