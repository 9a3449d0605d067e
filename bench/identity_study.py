"""How well the served identity embedding tells apart people it never saw, at 1,000 to 10,000 enrolled (offline).

`bench/embedding_study.py` measures a vision tower's own contrastive head. The gate reads the identity encoder on
the VLM's visual tokens (`IdentityConfig`: projected, or the tower's; trained, or the tower's head, as the scale
world's since 2026-12-07); this trains that encoder as a world's builder does, on the built scale world's frozen
model, with the recipe given on the command line, and measures it the same way: prototypes of G enrolled people (the
mean of their 3 request photos), their held-out photo, and the benign population; one cosine threshold at the benign
set's 99th (99.9th) percentile.

    python -m bench.identity_study --data-dir DIR --identities 4000 --margin 0.2 --enrolled 1000,10000
    python -m bench.identity_study --data-dir DIR --built --enrolled 1000,10000   # the encoder the world built
    python -m bench.identity_study --data-dir DIR --built --served-prototypes --enrolled 1000,10000
    python -m bench.identity_study --data-dir DIR --built --post-hoc 2000 --enrolled 1000,10000
    python -m bench.identity_study --data-dir DIR --init tower_head --tokens tower --steps 500 ...  # fine-tuned head

`--served-prototypes` also measures the prototypes bulk enrollment stored until 2026-12-06 (the unit mean of each
request photo and its strong and mild views, `EnrollmentConfig`), suffixed `_served_views`: they trailed the photos'
mean, which `enroll` and `CagulTrainer` have stored since. `--post-hoc` also measures maps fitted after training
on other drawn people (`post_hoc_rows`): neither lifted TPR at 10,000 (docs/scale.md, 2026-12-07).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.embedding_study import STRANGERS, measure_embeddings, tpr_row
from unlearning.identity.config import AUGMENTATIONS, GATE_TOKENS, INITS

# People drawn for the post-hoc fits: 0 pre-trains the encoder, 1 checks it and draws the benign set's outsiders,
# 2 pre-trains the vision tower.
POST_HOC_SEED, POST_HOC_VIEWS = 7, 5


def main() -> None:
    from safetensors.torch import load_file

    from unlearning.backbones import load_backbone
    from unlearning.identity import TOWER_HEAD_FILE, IdentityConfig, load_identity_encoder, train_identity_encoder
    from unlearning.world import WORLD_PRESETS
    from unlearning.world.builder import build_world
    from unlearning.world.identities import pretraining_portraits
    from unlearning.world.population import benign_population, enrolled_people

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".lethe"))
    parser.add_argument("--identities", type=int, default=4000)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--augmentation", choices=AUGMENTATIONS, default="fixed")
    parser.add_argument(
        "--tokens",
        choices=GATE_TOKENS,
        default="projected",
        help="what the encoder reads: the projected visual tokens or the tower's, the projector's input",
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        default="random",
        help="where training starts: fresh weights, or the head the world's tower was pre-trained through",
    )
    parser.add_argument("--built", action="store_true", help="measure the world's own encoder, no recipe, no training")
    parser.add_argument(
        "--served-prototypes",
        action="store_true",
        help="with --built: also the prototypes of the photos and their views (enrollment's until 2026-12-06)",
    )
    parser.add_argument(
        "--post-hoc",
        type=int,
        default=0,
        help="also score after maps fitted on this many people drawn for nothing else (whitening, cohort norms)",
    )
    parser.add_argument("--enrolled", default="1000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.enrolled.split(",")]
    if args.served_prototypes and not args.built:
        parser.error("--served-prototypes measures the built encoder: add --built")
    world = build_world(args.data_dir, WORLD_PRESETS["scale"], with_retain_model=False)
    backbone = load_backbone(world.reference_model_dir)
    backbone.freeze()
    config = IdentityConfig(
        identities=args.identities,
        views=args.views,
        steps=args.steps,
        batch_size=args.batch,
        margin=args.margin,
        augmentation=args.augmentation,
        tokens=args.tokens,
        init=args.init,
    )
    started = time.perf_counter()
    if args.built:
        stored = load_identity_encoder(world.reference_model_dir, backbone.gate_shapes())
        if stored is None:
            raise SystemExit(f"{world.reference_model_dir} holds no identity encoder")
        encoder, config = stored[0], world.config.identity
    else:
        portraits = pretraining_portraits(world, config.identities, config.views)
        head = load_file(world.reference_model_dir / TOWER_HEAD_FILE) if args.init == "tower_head" else None
        encoder = train_identity_encoder(backbone, portraits, config, initial=head)
    trained = round(time.perf_counter() - started, 1)
    people = enrolled_people(world, max(counts))
    benign = benign_population(world, [p.identity for p in people], STRANGERS, 500, 300)
    with torch.no_grad(), backbone.reading_gate_tokens(config.tokens):

        def embed(images: list) -> torch.Tensor:
            return torch.cat([encoder(backbone.tokens_of(images[i : i + 2048])) for i in range(0, len(images), 2048)])

        photos = embed([im for p in people for im in p.photos]).view(len(people), len(people[0].photos), -1)
        heldout, benign_embeddings = embed([p.heldout for p in people]), embed(benign)
        rows = [measure_embeddings(photos[:g], heldout[:g], benign_embeddings) for g in counts]
        if args.served_prototypes:
            served = served_prototypes(backbone, [p.photos for p in people[: max(counts)]])
            for g, row in zip(counts, rows, strict=True):
                own, benign_scores = heldout[:g] @ served[:g].T, benign_embeddings @ served[:g].T
                row |= tpr_row(own, benign_scores.max(1).values, "_served_views")
        if args.post_hoc:
            drawn = pretraining_portraits(world, args.post_hoc, POST_HOC_VIEWS, POST_HOC_SEED)
            fit = embed([im for p in drawn for im in p]).view(args.post_hoc, POST_HOC_VIEWS, -1)
            for g, row in zip(counts, rows, strict=True):
                row |= post_hoc_rows(photos[:g], heldout[:g], benign_embeddings, fit)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "config": config.to_dict(),
        "train_seconds": None if args.built else trained,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def post_hoc_rows(photos: torch.Tensor, heldout: torch.Tensor, benign: torch.Tensor, fit: torch.Tensor) -> dict:
    """`mean_prototype_row` after maps of the embedding or the score fitted on [people, photos, dim] never enrolled:
    whitening of the within-person covariance (shrunk by s, keeping the k directions LDA ranks first), and cohort
    normalisation (each prototype's cosine less the mean of its top K cosines to the fit photos; `_sym`: less the
    mean of that and the photo's own)."""
    row: dict = {}
    dim = fit.shape[-1]
    for shrink, keep in ((0.0, dim), (0.1, dim), (0.3, 96), (0.1, 64)):
        centre, transform = fit_whitening(fit, shrink, keep)

        def whiten(x: torch.Tensor, c: torch.Tensor = centre, t: torch.Tensor = transform) -> torch.Tensor:
            return F.normalize((x - c) @ t, dim=-1)

        moved = whiten(photos.flatten(0, 1)).view(*photos.shape[:2], -1)
        row |= mean_prototype_row(moved, whiten(heldout), whiten(benign), f"_whiten_s{shrink:g}_k{keep}")
    prototypes = F.normalize(photos.mean(1), dim=-1)
    cohort = fit.flatten(0, 1)
    own, benign_scores = heldout @ prototypes.T, benign @ prototypes.T
    for k in (200, 1000):
        mean = (cohort @ prototypes.T).topk(k, dim=0).values.mean(0)
        row |= tpr_row(own - mean, (benign_scores - mean).max(1).values, f"_cohort_top{k}")
        own_side = (heldout @ cohort.T).topk(k, dim=1).values.mean(1, keepdim=True)
        benign_side = (benign @ cohort.T).topk(k, dim=1).values.mean(1, keepdim=True)
        sym_own, sym_benign = own - (mean + own_side) / 2, benign_scores - (mean + benign_side) / 2
        row |= tpr_row(sym_own, sym_benign.max(1).values, f"_cohort_sym_top{k}")
    return row


def fit_whitening(embeddings: torch.Tensor, shrink: float, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre [dim], transform [dim, keep]) of unit embeddings [people, photos, dim]: the inverse square root of
    the within-person covariance (shrunk by `shrink` toward its mean eigenvalue), then the `keep` directions along
    which people's means spread most."""
    people, photos, dim = embeddings.shape
    centre = embeddings.mean((0, 1))
    spread = embeddings - embeddings.mean(1, keepdim=True)
    within = torch.einsum("pvd,pve->de", spread, spread) / (people * (photos - 1))
    within = (1 - shrink) * within + shrink * within.trace() / dim * torch.eye(dim)
    values, vectors = torch.linalg.eigh(within)
    transform = vectors @ torch.diag(values.clamp_min(1e-8).rsqrt()) @ vectors.T
    means = (embeddings.mean(1) - centre) @ transform
    _, directions = torch.linalg.eigh(means.T @ means / people)
    return centre, transform @ directions[:, -keep:]


def mean_prototype_row(photos: torch.Tensor, heldout: torch.Tensor, benign: torch.Tensor, suffix: str) -> dict:
    """Rank-1 and `tpr_row` for prototypes that are the unit mean of each person's photos."""
    prototypes = F.normalize(photos.mean(1), dim=-1)
    own = heldout @ prototypes.T
    rank1 = float((own.argmax(1) == torch.arange(len(own))).float().mean())
    return {f"rank1{suffix}": round(rank1, 4)} | tpr_row(own, (benign @ prototypes.T).max(1).values, suffix)


def served_prototypes(backbone: Any, subjects: list[list[Any]]) -> torch.Tensor:
    """[subjects, dim] prototypes as `enroll` stored them until 2026-12-06, on the backbone's own identity encoder."""
    from unlearning.augment import MILD_VIEWS, STRONG_VIEWS
    from unlearning.cagul.enrollment import EnrollmentConfig, embed_views

    config = EnrollmentConfig()
    generator = torch.Generator().manual_seed(config.seed)
    views = [(None, 1), (STRONG_VIEWS, config.strong_views), (MILD_VIEWS, config.mild_views)]
    flat = [im for photos in subjects for im in photos]
    embedded = embed_views(backbone, flat, views, generator).view(len(subjects), -1, backbone.identity_dim)
    return F.normalize(embedded.mean(1), dim=-1)


if __name__ == "__main__":
    main()
