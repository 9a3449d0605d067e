"""Qwen2-VL at dynamic resolution: which fixed-size view of a variable number of visual tokens should a gate read?

Trains a small Qwen2-VL on the tiny world's people (photos at 48x48 .. 64x96: 9 to 24 visual tokens), then
discriminators for one subject on three inputs: the merged token grid average-pooled to 4x4 regions and flattened
(what `Qwen2VLBackbone.visual_tokens` gives the gate), and the raw tokens zero-padded to the longest with a mask,
attention-pooled or mean-pooled over the valid tokens. Trained on photos of one size or of every size; scored on
the held-out photo at every size against other people's held-out photos and unseen people.
Run: PYTHONPATH=. python bench/qwen_gate_input.py [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tests.checkpoints import QWEN_SIZES, resized, train_qwen2_vl_reference
from unlearning.augment import STRONG_VIEWS
from unlearning.backbones import load_backbone
from unlearning.cagul.discriminator import Discriminator
from unlearning.world import WORLD_PRESETS
from unlearning.world.builder import ensure_people


class MaskedPool(nn.Module):
    """Padding with a mask: layer-normed tokens pooled over the valid ones (learned-query attention, or mean)."""

    def __init__(self, hidden: int, width: int, attention: bool) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden)) if attention else None
        self.fc1, self.fc2 = nn.Linear(hidden, width), nn.Linear(width, 1)

    def logits(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(z, z.shape[-1:])
        keys = z @ self.query if self.query is not None else torch.zeros(mask.shape)
        weights = torch.softmax(keys.masked_fill(~mask, float("-inf")), dim=1)
        return self.fc2(F.gelu(self.fc1((weights[..., None] * z).sum(1)))).squeeze(-1)


def raw_tokens(bb, images):  # type: ignore[no-untyped-def]
    """Zero-padded raw visual tokens [n, longest, hidden] and their mask."""
    inputs = bb.pixel_values(images)
    captured: list[torch.Tensor] = []
    handle = bb.projector().register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        bb._run_vision(inputs)
    handle.remove()
    parts = captured[0].split(bb.image_token_counts(inputs))
    mask = nn.utils.rnn.pad_sequence([torch.ones(len(p), dtype=torch.bool) for p in parts], batch_first=True)
    return nn.utils.rnn.pad_sequence(list(parts), batch_first=True), mask


def train(model: nn.Module, score, x, y, steps: int = 400) -> None:  # type: ignore[no-untyped-def]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    pos_weight = (y == 0).sum() / (y == 1).sum().clamp(min=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(y), (min(256, len(y)),), generator=generator)
        loss = F.binary_cross_entropy_with_logits(score(idx), y[idx], pos_weight=pos_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None, help="a Qwen2-VL trained by this script before")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = Path(tempfile.mkdtemp())
    world = ensure_people(data, WORLD_PRESETS["tiny"])
    people = [p for p in world.trained_people if not p.protected][:6]
    model_dir = args.model or train_qwen2_vl_reference(world, people, data / "qwen2-vl")
    bb = load_backbone(model_dir)
    subject, others = people[0], people[1:]
    train_views, held = list(world.train_views()), world.heldout_views()[0]
    generator = torch.Generator().manual_seed(0)

    def photos(ids, views, sizes):  # type: ignore[no-untyped-def]
        return [resized(world.image(i, v), s) for i in ids for v in views for s in sizes]

    unseen = [p.id for p in world.split("unseen")]
    look = world.lookalike_images(80, seed=1)
    # The held-out photo at each size, and 15 strongly changed views of it.
    test_pos = {
        s: (lambda ims: ims + _views(bb, ims * 15, generator))(photos([subject.id], [held], [s])) for s in QWEN_SIZES
    }
    test_neg = photos([p.id for p in others], [held], QWEN_SIZES) + photos(unseen, [0, held], QWEN_SIZES)
    rows = []
    for trained_on in ("64x64 only", "every size"):
        sizes = [(64, 64)] if trained_on == "64x64 only" else list(QWEN_SIZES)
        pos = photos([subject.id], train_views, sizes)
        pos = pos + [im for _ in range(8) for im in _views(bb, pos, generator)]
        neg = photos([p.id for p in others], train_views, sizes) + [
            resized(im, sizes[i % len(sizes)]) for i, im in enumerate(look)
        ]
        images, y = pos + neg, torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        pooled = bb.tokens_of(images)
        raw, mask = raw_tokens(bb, images)
        for kind in ("pooled 4x4 grid, flatten", "padded + mask, attention pool", "padded + mask, mean pool"):
            if kind.startswith("pooled"):
                disc = Discriminator(bb.n_visual_tokens, bb.hidden_size, 128, "flatten")
                train(disc, lambda i, d=disc, x=pooled: d.logits(x[i]), pooled, y)

                def scores(ims, disc=disc):  # type: ignore[no-untyped-def]
                    return torch.sigmoid(disc.logits(bb.tokens_of(ims)))
            else:
                pool = MaskedPool(bb.hidden_size, 128, attention="attention" in kind)
                train(pool, lambda i, m=pool, x=raw, k=mask: m.logits(x[i], k[i]), raw, y)

                def scores(ims, pool=pool):  # type: ignore[no-untyped-def]
                    return torch.sigmoid(pool.logits(*raw_tokens(bb, ims)))

            with torch.no_grad():
                negatives = scores(test_neg)
                threshold = max(0.75, float(torch.quantile(negatives, 0.99)))
                row = {
                    "trained on": trained_on,
                    "gate input": kind,
                    "FPR": float((negatives > threshold).float().mean()),
                }
                for size, ims in test_pos.items():
                    p = scores(ims)
                    row[f"TPR {size[0]}x{size[1]}"] = float((p > threshold).float().mean())
                every = torch.cat([scores(ims) for ims in test_pos.values()])
                row["AUC"] = round(float((every[:, None] > negatives[None, :]).float().mean()), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)


def _views(bb, images, generator):  # type: ignore[no-untyped-def]
    """Strongly augmented copies of `images` (as the trainer's positives), back as PIL images."""
    import numpy as np
    from PIL import Image

    from unlearning.augment import augment

    out = []
    for im in images:
        raw = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        view = augment(raw, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), STRONG_VIEWS, generator)[0]
        out.append(Image.fromarray((view.permute(1, 2, 0).numpy() * 255).round().astype("uint8")))
    return out


if __name__ == "__main__":
    main()
