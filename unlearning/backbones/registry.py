"""Load any supported VLM checkpoint directory (built here or downloaded beforehand) as a Backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

from unlearning.backbones.base import Backbone
from unlearning.backbones.llava import LlavaBackbone
from unlearning.backbones.qwen2_vl import Qwen2VLBackbone
from unlearning.errors import UnsupportedModelError
from unlearning.identity.store import load_identity_encoder

BACKBONES: dict[str, tuple[type[Backbone], Any]] = {
    "llava": (LlavaBackbone, LlavaForConditionalGeneration),
    "qwen2_vl": (Qwen2VLBackbone, Qwen2VLForConditionalGeneration),
}


def supported_architectures() -> str:
    """The architectures a checkpoint may have, as `config.json` names them."""
    return ", ".join(f"{model_cls.__name__} ({name})" for name, (_, model_cls) in BACKBONES.items())


def checkpoint_architecture(path: str | Path) -> tuple[str, str]:
    """(model_type, architecture) of a checkpoint directory, or an error naming what is wrong and what is supported."""
    path = Path(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise UnsupportedModelError(f"{path} is not a Hugging Face checkpoint directory: no config.json") from None
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"{config_file} is not readable JSON ({exc}): the checkpoint is broken") from None
    model_type = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    architecture = ", ".join((config.get("architectures") if isinstance(config, dict) else None) or []) or "unnamed"
    if model_type not in BACKBONES:
        raise UnsupportedModelError(
            f"{path} holds a {architecture} (model_type {model_type!r}), which Lethe cannot serve; supported: "
            f"{supported_architectures()}"
        )
    return model_type, architecture


def load_backbone(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32, attention: str = "sdpa"
) -> Backbone:
    """A frozen backbone from a local checkpoint directory; never touches a model hub.

    `attention` serves every pass; attention read-out (lowest/highest token rules) switches to eager for its pass.
    """
    path = Path(path)
    model_type, architecture = checkpoint_architecture(path)
    backbone_cls, model_cls = BACKBONES[model_type]
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not model_cls._can_set_attn_implementation():  # read-out could not switch to eager later
        attention = "eager"
    try:
        model = model_cls.from_pretrained(path, attn_implementation=attention, dtype=dtype, local_files_only=True)
        processor = backbone_cls.load_processor(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise UnsupportedModelError(
            f"{path} is a {architecture} checkpoint that does not load ({type(exc).__name__}: {exc}): "
            "its weights, tokenizer or processor files are missing or broken"
        ) from exc
    model.to(device)
    backbone = backbone_cls(model, processor, path)
    template_file = path / "lethe_prompt.json"
    if template_file.is_file():
        templates = json.loads(template_file.read_text())
        backbone.prompt_template = templates["prompt_template"]
        backbone.text_prompt_template = templates.get("text_prompt_template", backbone.text_prompt_template)
    backbone.freeze()
    identity = load_identity_encoder(path, backbone.gate_shapes())
    if identity is not None:
        backbone.attach_identity(*identity)
    return backbone
