"""The identity encoder on disk: one safetensors file beside the base model it was trained on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from unlearning.errors import ArtifactIntegrityError, IncompatibleModuleError
from unlearning.files import write_atomic
from unlearning.identity.config import IdentityConfig
from unlearning.identity.encoder import IdentityEncoder

IDENTITY_FILE = "identity_encoder.safetensors"
# The vision tower's contrastive head, kept beside the model its tower is in: `IdentityConfig.init` can start from it.
TOWER_HEAD_FILE = "tower_head.safetensors"


def identity_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_identity_encoder(encoder: IdentityEncoder, config: IdentityConfig, directory: str | Path) -> str:
    """Write the encoder into `directory`; returns its digest, which modules trained on it record."""
    meta = {"config": json.dumps(config.to_dict()), "n_tokens": str(encoder.n_tokens)}
    meta["hidden_size"] = str(encoder.hidden_size)
    data = save_bytes({k: v.contiguous() for k, v in encoder.state_dict().items()}, metadata=meta)
    write_atomic(Path(directory) / IDENTITY_FILE, data)
    return identity_digest(data)


def load_identity_encoder(
    directory: str | Path, shapes: Mapping[str, tuple[int, int]]
) -> tuple[IdentityEncoder, str] | None:
    """The encoder stored beside a base model and its digest, or None where the model has none.

    `shapes`: (n_tokens, hidden size) of each kind of visual tokens the model can give the gate (`GATE_TOKENS`).
    """
    path = Path(directory) / IDENTITY_FILE
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        # One read serves the digest, the metadata and the tensors: the safetensors header is 8 bytes of length + JSON.
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        config = IdentityConfig.from_dict(json.loads(meta["config"]))
        state = load_bytes(data)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ArtifactIntegrityError(f"{path} is not a readable identity encoder ({exc}): rebuild it") from None
    if config.tokens not in shapes:
        raise IncompatibleModuleError(
            f"{path} reads {config.tokens} visual tokens, which this model family cannot give"
        )
    n_tokens, hidden_size = shapes[config.tokens]
    if (int(meta["n_tokens"]), int(meta["hidden_size"])) != (n_tokens, hidden_size):
        raise IncompatibleModuleError(f"{path} was trained for another visual token shape: rebuild it")
    encoder = IdentityEncoder(n_tokens, hidden_size, config.width, config.dim, config.tokens)
    encoder.load_state_dict(state)
    return encoder.frozen(), identity_digest(data)
