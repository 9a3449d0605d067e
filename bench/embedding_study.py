"""How well a pre-trained vision tower tells apart people it never saw, at 1,000 to 10,000 enrolled (offline).

The reference-size tower (CLIP vision, as the scale world's) is pre-trained on drawn people, either as the world
builder does (symmetric InfoNCE: a mildly changed photo against another photo of the same person, optionally with
a margin on the positives) or as face recognition does (an additive angular margin over the pre-training
identities, ArcFace). Measured with its own head
(an upper bound for an identity head on its tokens) on people never drawn for pre-training: prototypes of G
enrolled people (the mean of their 3 request photos), their held-out photo, and a benign population (strangers,
look-alikes, mild changes); one cosine threshold at the benign set's 99th (99.9th) percentile. docs/scale.md
reads its figures.

    python bench/embedding_study.py --loss arcface --patch 8 --enrolled 1000,10000 --json out.json
    python -m bench.embedding_study --positive-margin 0.2 --steps 6000 --measure-at 2000,4000 --save DIR/tower
    python -m bench.embedding_study --load DIR/tower.step6000.pt --prototype-views 8
    python -m bench.embedding_study --positive-margin 0.2 --steps 2000 --hard-group 8   # look-alikes share batches
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, get_cosine_schedule_with_warmup
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS, AugmentConfig, augment
from unlearning.identity.trainer import batch_people, contrastive_loss, group_neighbours, two_views
from unlearning.world import WORLD_PRESETS
from unlearning.world.builder import ensure_people
from unlearning.world.identities import pretraining_photos
from unlearning.world.population import benign_population, draw_identities, enrolled_people
from unlearning.world.vocabulary import ATTRIBUTES

MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
STRANGERS = 1000  # never-enrolled people in the benign set, one photo each


def as_pixels(array: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(array).permute(0, 3, 1, 2).float().div(255) - MEAN) / STD


def stack(images: list) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])


class Embedder(nn.Module):
    """The tower and a head over its flattened, normalised patch tokens (as the world builder pre-trains it)."""

    def __init__(self, image_size: int, patch: int, hidden: int, layers: int, width: int, dim: int) -> None:
        super().__init__()
        config = CLIPVisionConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            image_size=image_size,
            patch_size=patch,
        )
        self.tower = CLIPVisionModel(config)
        tokens = (image_size // patch) ** 2
        self.head = nn.Sequential(nn.Linear(tokens * hidden, width), nn.GELU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tower(pixel_values=x).last_hidden_state[:, 1:]
        h = F.layer_norm(h, h.shape[-1:])
        return F.normalize(self.head(h.flatten(1)), dim=-1)


def pretrain(
    model: Embedder, photos: np.ndarray, args: argparse.Namespace, checkpoint: Callable[[int, float], None]
) -> float:
    """Train `args.steps` steps; `checkpoint(step, loss)` runs in eval mode after each step in `args.measure_at`."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    n_ids, n_views = photos.shape[:2]
    classes = nn.Parameter(F.normalize(torch.randn(n_ids, args.dim), dim=-1)) if args.loss == "arcface" else None
    params = [*model.parameters(), *([classes] if classes is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 10), args.steps)
    model.train()
    loss_value = float("nan")
    started = time.perf_counter()
    neighbours = None
    for step in range(args.steps):
        if args.hard_group and step % args.hard_refresh == 0:
            model.eval()
            neighbours = group_neighbours(embed(model, photos[:, 0]), args.hard_group)
            model.train()
        who = batch_people(neighbours, n_ids, args.batch, args.hard_group, generator).numpy()
        first, second = two_views(n_views, args.batch, generator)
        changed = augment(
            as_pixels(photos[who, first.numpy()]), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, MILD_VIEWS, generator
        )
        if classes is None:
            cosine = model(changed) @ model(as_pixels(photos[who, second.numpy()])).T
            loss = contrastive_loss(cosine, args.positive_margin, args.temperature)
        else:
            both = torch.cat([changed, as_pixels(photos[who, second.numpy()])])
            target = torch.from_numpy(np.concatenate([who, who]))
            cosine = model(both) @ F.normalize(classes, dim=-1).T
            angle = torch.acos(cosine.gather(1, target[:, None]).clamp(-1 + 1e-6, 1 - 1e-6))
            logits = cosine.scatter(1, target[:, None], torch.cos(angle + args.margin)) * args.scale
            loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if (step + 1) % 50 == 0:
            elapsed = time.perf_counter() - started
            print(f"step {step + 1}/{args.steps} loss {loss_value:.3f} ({elapsed:.0f} s)", flush=True)
        if step + 1 in args.measure_at:
            model.eval()
            checkpoint(step + 1, loss_value)
            model.train()
    model.eval()
    return loss_value


@torch.no_grad()
def embed(model: Embedder, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    return torch.cat([model(as_pixels(images[i : i + batch])) for i in range(0, len(images), batch)])


def measure(
    model: Embedder, enrolled: np.ndarray, heldout: np.ndarray, benign: np.ndarray, g: int, views: int = 0
) -> dict:
    """Rank-1 and the TPR of one cosine threshold at the benign set's 99th and 99.9th percentiles, G enrolled;
    with `views`, also for prototypes averaged over augmented views of the request photos."""
    photos = embed(model, enrolled[:g].reshape(-1, *enrolled.shape[2:])).view(g, enrolled.shape[1], -1)
    held, benign_embeddings = embed(model, heldout[:g]), embed(model, benign)
    row = measure_embeddings(photos, held, benign_embeddings)
    if views:
        # The service's mix (trainer: the photos, 48 strong views and 24 mild views of each), and mild views alone.
        for suffix, mix in (
            ("_served_views", ((STRONG_VIEWS, views), (MILD_VIEWS, views // 2))),
            ("_mild_views", ((MILD_VIEWS, views),)),
        ):
            prototypes = viewed_prototypes(model, enrolled[:g], photos, mix)
            own = held @ prototypes.T
            row |= tpr_row(own, (benign_embeddings @ prototypes.T).max(1).values, suffix)
    return row


@torch.no_grad()
def viewed_prototypes(
    model: Embedder, enrolled: np.ndarray, photos: torch.Tensor, mix: tuple[tuple[AugmentConfig, int], ...]
) -> torch.Tensor:
    """Unit mean of each person's photos and `count` views of each under every (config, count) of `mix`."""
    generator = torch.Generator().manual_seed(7)
    total, n = photos.sum(1), photos.shape[1] + photos.shape[1] * sum(count for _, count in mix)
    for start in range(0, len(enrolled), 64):
        pixels = as_pixels(enrolled[start : start + 64].reshape(-1, *enrolled.shape[2:]))
        for config, count in mix:
            changed = augment(pixels.repeat(count, 1, 1, 1), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, config, generator)
            sums = torch.cat([model(c) for c in changed.split(512)]).view(count, -1, photos.shape[1], photos.shape[2])
            total[start : start + 64] += sums.sum((0, 2))
    return F.normalize(total / n, dim=-1)


def measure_embeddings(photos: torch.Tensor, heldout: torch.Tensor, benign: torch.Tensor) -> dict:
    """`measure` on embeddings: [G, request photos, dim] of the enrolled, [G, dim] held-out, [benign, dim]."""
    g = len(photos)
    prototypes = F.normalize(photos.mean(1), dim=-1)
    own = heldout @ prototypes.T
    nearest_benign = (benign @ prototypes.T).max(1).values
    row = {"enrolled": g, "rank1": round(float((own.argmax(1) == torch.arange(g)).float().mean()), 4)}
    row |= tpr_row(own, nearest_benign, "")
    # Each request photo its own prototype, a module scoring its nearest (template matching, not the mean).
    each = F.normalize(photos, dim=-1)
    own_each = torch.einsum("hd,gpd->hgp", heldout, each).amax(2)
    nearest_each = torch.cat([torch.einsum("bd,gpd->bgp", b, each).amax((1, 2)) for b in benign.split(256)])
    row |= tpr_row(own_each, nearest_each, "_each_photo")
    return row


def tpr_row(own: torch.Tensor, nearest_benign: torch.Tensor, suffix: str) -> dict:
    """TPR of one threshold at the benign set's 99th, 99.5th and 99.9th percentiles; the own module must be the
    nearest."""
    g, own_score, row = len(own), own.diagonal(), {}
    for share, name in ((0.99, "tpr_at_1pct"), (0.995, "tpr_at_0_5pct"), (0.999, "tpr_at_0_1pct")):
        threshold = float(torch.quantile(nearest_benign, share))
        hit = (own.argmax(1) == torch.arange(g)) & (own_score > threshold)
        row[name + suffix] = round(float(hit.float().mean()), 4)
    row["own_cosine_p01" + suffix] = round(float(torch.quantile(own_score, 0.01)), 4)
    row["benign_nearest_p99" + suffix] = round(float(torch.quantile(nearest_benign, 0.99)), 4)
    return row


def shared_attributes(strangers: list[tuple], enrolled: list[tuple], g: int) -> float:
    """Share of never-enrolled people alike in all 8 attributes to one of G enrolled: only finer traits tell them
    apart."""
    taken = {identity[: len(ATTRIBUTES)] for identity in enrolled[:g]}
    return round(sum(s[: len(ATTRIBUTES)] in taken for s in strangers) / len(strangers), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".lethe"))
    parser.add_argument("--loss", choices=("infonce", "arcface"), default="infonce")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--positive-margin", type=float, default=0.0)
    parser.add_argument("--scale", type=float, default=30.0)
    parser.add_argument("--enrolled", default="1000,10000")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--hard-group",
        type=int,
        default=0,
        help="draw each batch in groups of this many people nearest each other now (0: at random)",
    )
    parser.add_argument("--hard-refresh", type=int, default=200, help="steps between the hard groups' neighbours")
    parser.add_argument(
        "--measure-at",
        default="",
        help="also measure after these steps (comma-separated) of the same run; its schedule still spans --steps",
    )
    parser.add_argument(
        "--prototype-views",
        type=int,
        default=0,
        help="also measure prototypes over this many strong (and half as many mild) views of each request photo",
    )
    parser.add_argument("--save", type=Path, help="keep the tower at each measured step (PATH.stepN.pt)")
    parser.add_argument("--load", type=Path, help="measure this saved tower; trains nothing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.measure_at = {int(s) for s in args.measure_at.split(",") if s} | {args.steps}
    if args.threads:
        torch.set_num_threads(args.threads)
    world = ensure_people(args.data_dir, WORLD_PRESETS["scale"])
    counts = [int(c) for c in args.enrolled.split(",")]
    cache = args.data_dir / "embedding-study"
    cache.mkdir(parents=True, exist_ok=True)
    pool = cache / f"pretraining-{args.identities}x{args.views}.npy"
    if not pool.is_file() and not args.load:
        np.save(pool, pretraining_photos(world, args.identities, args.views, 2))
    people = enrolled_people(world, max(counts))
    seen = cache / f"enrolled-{max(counts)}.npz"
    if not seen.is_file():
        benign = benign_population(world, [p.identity for p in people], STRANGERS, 500, 300)
        np.savez(
            seen,
            enrolled=np.stack([stack(p.photos) for p in people]),
            heldout=stack([p.heldout for p in people]),
            benign=stack(benign),
        )
    data = np.load(seen)
    model = Embedder(world.config.image_size, args.patch, args.hidden, args.layers, args.width, args.dim)
    # The same people `benign_population` draws as strangers.
    strangers = draw_identities(world, STRANGERS, 0, "strangers")
    recorded_args = {k: str(v) for k, v in vars(args).items()}
    started = time.perf_counter()
    rows: list[dict] = []

    def checkpoint(step: int, loss: float) -> None:
        for g in counts:
            seconds = round(time.perf_counter() - started, 1)
            row = {"step": step, "loss": None if math.isnan(loss) else round(loss, 4), "seconds": seconds}
            row |= measure(model, data["enrolled"], data["heldout"], data["benign"], g, args.prototype_views)
            row["strangers_sharing_all_attributes"] = shared_attributes(strangers, [p.identity for p in people], g)
            print(json.dumps(row), flush=True)
            rows.append(row)
        if args.save:  # a long run's tower can be measured again without training it again
            torch.save(model.state_dict(), args.save.with_suffix(f".step{step}.pt"))
        if args.json:  # a long run keeps what it measured so far
            args.json.write_text(json.dumps({"args": recorded_args, "rows": rows}))

    if args.load:
        model.load_state_dict(torch.load(args.load))
        model.eval()
        loss = float("nan")
        checkpoint(0, loss)  # step 0: the loaded tower, as saved
    else:
        loss = pretrain(model, np.load(pool), args, checkpoint)
    final_loss = None if math.isnan(loss) else loss
    result = {"args": recorded_args, "final_loss": final_loss, "rows": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
