"""Load any supported VLM checkpoint directory (built here or downloaded beforehand) as a Backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

from unlearning.backbones.base import Backbone
from unlearning.backbones.llava import LlavaBackbone
from unlearning.backbones.qwen2_vl import Qwen2VLBackbone
from unlearning.errors import InvalidInputError
from unlearning.identity.store import load_identity_encoder

BACKBONES: dict[str, tuple[type[Backbone], Any]] = {
    "llava": (LlavaBackbone, LlavaForConditionalGeneration),
    "qwen2_vl": (Qwen2VLBackbone, Qwen2VLForConditionalGeneration),
}


def load_backbone(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | str = torch.float32, attention: str = "sdpa"
) -> Backbone:
    """A frozen backbone from a local checkpoint directory; never touches a model hub.

    `attention` serves every pass; attention read-out (lowest/highest token rules) switches to eager for its pass.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidInputError(f"{path} is not a model checkpoint directory (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type not in BACKBONES:
        raise InvalidInputError(f"model type {model_type!r} is not supported; supported: {sorted(BACKBONES)}")
    backbone_cls, model_cls = BACKBONES[model_type]
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not model_cls._can_set_attn_implementation():  # read-out could not switch to eager later
        attention = "eager"
    model = model_cls.from_pretrained(path, attn_implementation=attention, dtype=dtype, local_files_only=True)
    model.to(device)
    processor = backbone_cls.load_processor(path)
    backbone = backbone_cls(model, processor, path)
    template_file = path / "lethe_prompt.json"
    if template_file.is_file():
        backbone.prompt_template = json.loads(template_file.read_text())["prompt_template"]
    backbone.freeze()
    identity = load_identity_encoder(path, backbone.n_visual_tokens, backbone.hidden_size)
    if identity is not None:
        backbone.attach_identity(*identity)
    return backbone
