"""The gate's rates: how often it fires on the subjects' photos and on everyone else's."""

from __future__ import annotations

import torch

from unlearning.augment import AugmentConfig
from unlearning.cagul.gate import CagulGate
from unlearning.world.people import Person
from unlearning.world.store import World

# New photos for evaluation: moderate changes, drawn with a seed the trainer never uses.
EVAL_VIEWS = AugmentConfig(
    max_rotate_deg=8,
    min_scale=0.88,
    max_scale=1.1,
    max_shift=0.08,
    brightness=0.15,
    contrast=0.1,
    saturation=0.15,
    noise=0.01,
)


def gate_rates(
    gate: CagulGate, world: World, subjects: list[Person], others: list[Person], copies: int = 2
) -> tuple[float, float]:
    """Discriminator TPR on every view (and augmented views) of the subjects, FPR on everyone else's."""

    def fired(people: list[Person]) -> list[bool]:
        images = [world.image(p.id, v) for p in people for v in range(world.config.n_views)]
        generator = torch.Generator().manual_seed(99)
        hits: list[bool] = []
        for start in range(0, len(images), 64):
            chunk = images[start : start + 64]
            inputs = [gate.backbone.pixel_values(chunk)]
            inputs += [gate.backbone.augmented_inputs(chunk, EVAL_VIEWS, generator) for _ in range(copies)]
            for inp in inputs:
                chosen, _ = gate.route(gate.backbone.visual_tokens(inp))
                hits += (chosen >= 0).tolist()
        return hits

    pos, neg = fired(subjects), fired(others)
    return sum(pos) / max(1, len(pos)), sum(neg) / max(1, len(neg))
