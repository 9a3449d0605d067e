"""Batched image augmentation on pixel tensors (torchvision is not available beside this torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The transform families `augment` draws from: held-out verification photos use none of them.
AUGMENT_FAMILIES = ("rotation", "scale", "shift", "flip", "brightness", "saturation", "contrast", "noise")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random view changes; `strength` 0 turns everything off."""

    max_rotate_deg: float = 12.0
    min_scale: float = 0.8
    max_scale: float = 1.15
    max_shift: float = 0.12
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.2
    saturation: float = 0.3
    noise: float = 0.03


def augment(
    pixels: torch.Tensor,
    mean: list[float] | tuple[float, ...],
    std: list[float] | tuple[float, ...],
    config: AugmentConfig = AugmentConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop/scale/rotation/flip, colour jitter and noise on normalised [B, 3, H, W] pixels."""
    b = pixels.shape[0]
    dev, dt = pixels.device, pixels.dtype
    m = torch.tensor(mean, device=dev, dtype=dt).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev, dtype=dt).view(1, 3, 1, 1)
    x = pixels * s + m

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator).to(dev, dt) * (hi - lo) + lo

    angle = uniform(-config.max_rotate_deg, config.max_rotate_deg) * math.pi / 180
    scale = 1.0 / uniform(config.min_scale, config.max_scale)
    flip = torch.where(torch.rand(b, generator=generator).to(dev) < 0.5, -1.0, 1.0).to(dt) if config.flip else 1.0
    theta = torch.zeros(b, 2, 3, device=dev, dtype=dt)
    theta[:, 0, 0] = torch.cos(angle) * scale * flip
    theta[:, 0, 1] = -torch.sin(angle) * scale
    theta[:, 1, 0] = torch.sin(angle) * scale * flip
    theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, 0, 2] = uniform(-config.max_shift, config.max_shift) * 2
    theta[:, 1, 2] = uniform(-config.max_shift, config.max_shift) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)

    x = x * uniform(1 - config.brightness, 1 + config.brightness).view(b, 1, 1, 1)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * uniform(1 - config.saturation, 1 + config.saturation).view(b, 1, 1, 1)
    avg = x.mean((1, 2, 3), keepdim=True)
    x = avg + (x - avg) * uniform(1 - config.contrast, 1 + config.contrast).view(b, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=generator).to(dev, dt) * config.noise
    return (x.clamp(0, 1) - m) / s


# A new photo of the same person: identity must survive strong geometric and colour changes.
STRONG_VIEWS = AugmentConfig()
# Mild view changes: what memorisation and encoder training see, so new photos still count.
MILD_VIEWS = AugmentConfig(
    max_rotate_deg=6,
    min_scale=0.9,
    max_scale=1.08,
    max_shift=0.06,
    flip=False,
    brightness=0.15,
    contrast=0.1,
    saturation=0.1,
    noise=0.01,
)
