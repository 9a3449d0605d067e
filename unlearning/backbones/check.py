"""What a checkpoint directory will be to Lethe before it is served: its backbone, shapes, costs, one forward."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from unlearning.backbones.qwen2_vl import Qwen2VLBackbone
from unlearning.backbones.registry import checkpoint_architecture, load_backbone
from unlearning.cagul.config import CagulConfig, token_discriminator_input
from unlearning.cagul.module import ENCODER_DTYPE, CagulModule

# Image sizes (width, height) whose visual-token count a dynamic-resolution model reports.
DEFAULT_SIZES = ((224, 224), (448, 448), (640, 480), (1280, 720))
CHECK_QUESTION = "what is in this image?"


@dataclass
class CheckpointReport:
    path: str
    architecture: str
    model_type: str
    backbone: str
    parameters: int
    hidden_size: int
    layers: int
    dynamic_resolution: bool
    visual_tokens: dict[str, int]  # "WxH" -> tokens the language model reads for an image of that size
    gate_tokens: int
    identity_encoder: bool
    discriminator_input: str
    module_bytes: int
    forward_seconds: float
    forward_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def module_bytes(module: CagulModule) -> int:
    """Bytes of a module's weights as stored: the encoder in `ENCODER_DTYPE`, the discriminator in fp32."""
    width = torch.finfo(ENCODER_DTYPE).bits // 8
    total = 0
    for name, tensor in module.state_dict().items():
        total += tensor.numel() * (width if name.startswith("encoder.") else tensor.element_size())
    return total


def check_checkpoint(
    path: str | Path, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, device: str = "cpu"
) -> CheckpointReport:
    """Load `path` offline as a backbone, measure its shapes and one module's size, and run one forward."""
    model_type, architecture = checkpoint_architecture(path)
    backbone = load_backbone(path, device=device)
    dynamic = isinstance(backbone, Qwen2VLBackbone) and backbone.dynamic
    if isinstance(backbone, Qwen2VLBackbone):
        tokens = {f"{w}x{h}": _grid_tokens(backbone.token_grid(w, h)) for w, h in sizes}
    else:
        tokens = {f"{w}x{h}": backbone.n_visual_tokens for w, h in sizes}
    has_identity = backbone.identity is not None
    tokens_input = token_discriminator_input(backbone.n_visual_tokens, backbone.hidden_size)
    config = CagulConfig(discriminator_input="identity" if has_identity else tokens_input)
    identity_dim = backbone.identity_dim if has_identity else 0
    module = CagulModule(config, backbone.n_visual_tokens, backbone.hidden_size, identity_dim)
    width, height = sizes[0] if sizes else (224, 224)
    inputs = backbone.pixel_values([Image.new("RGB", (width, height), (127, 127, 127))])
    batch = backbone.make_batch(inputs, [CHECK_QUESTION]).to(backbone.device)
    started = time.perf_counter()
    with torch.no_grad():
        logits = backbone.logits(batch)
    seconds = time.perf_counter() - started
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{path}: the forward pass produced non-finite logits")
    return CheckpointReport(
        path=str(path),
        architecture=architecture,
        model_type=model_type,
        backbone=type(backbone).__name__,
        parameters=sum(p.numel() for p in backbone.model.parameters()),
        hidden_size=backbone.hidden_size,
        layers=backbone.num_layers,
        dynamic_resolution=dynamic,
        visual_tokens=tokens,
        gate_tokens=backbone.n_visual_tokens,
        identity_encoder=has_identity,
        discriminator_input=config.discriminator_input,
        module_bytes=module_bytes(module),
        forward_seconds=round(seconds, 3),
        forward_shape=list(logits.shape),
    )


def _grid_tokens(grid: tuple[int, int]) -> int:
    return grid[0] * grid[1]
