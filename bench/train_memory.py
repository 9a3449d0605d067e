"""Peak training memory of one CAGUL request at LLaVA-1.5-7B shapes, before and after streaming, computed on the
tensors each version allocates (no 7B model needed): `python bench/train_memory.py [--photos 5] [--json PATH]`.

Before (main up to issue 13): fp32 weights, eager attention, every augmented view's projected tokens kept (and
concatenated) for discriminator training, logits over the whole sequence, answers as long as given, one backward
over the forget and retain halves of a step. After: bf16 weights on a GPU, sdpa attention, views rendered and
reduced 64 at a time, logits at answer positions only, answers cut to `LETHE_TRAIN_MAX_ANSWER_TOKENS`, a backward per
pass; the last column with `LETHE_TRAIN_MICRO_BATCH`. The hidden states kept for backward are an estimate.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from unlearning.cagul.config import CagulConfig
from unlearning.cagul.trainer import VIEW_CHUNK
from unlearning.identity.config import IdentityConfig
from unlearning.world.requests import DEFAULT_LOOKALIKES

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 (576 visual tokens), 2-layer projector, Llama-2-7B."""

    params: float = 7.06e9
    n_visual: int = 576
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    intermediate: int = 11008
    vocab: int = 32064
    prompt_text: int = 24  # chat template and question tokens around the image


def view_counts(cfg: CagulConfig, photos: int, negatives: int, heldout_negatives: int) -> dict[str, int]:
    """Views the discriminator trains and calibrates on (as `CagulTrainer._train_discriminator` draws them)."""
    return {
        "positives": photos * (1 + cfg.positive_augmentations + cfg.positive_augmentations // 2),
        "heldout_positives": photos * max(4, cfg.positive_augmentations // 4),
        "negatives": negatives * (1 + cfg.negative_augmentations),
        "heldout_negatives": heldout_negatives * (1 + 4),
    }


def discriminator_peak(views: dict[str, int], shape: Shape, streamed: bool, model_bytes: int) -> float:
    """Bytes of projected tokens alive at the discriminator's peak."""
    per_view = shape.n_visual * shape.hidden
    if not streamed:
        # fp32 tokens of every view; building the negatives, their parts and their concatenation are alive at once.
        return 4 * per_view * (views["positives"] + views["heldout_positives"] + 2 * views["negatives"])
    # One chunk as the model returns it and as fp32, the next chunk's while the last is dropped; reduced rows kept.
    chunk = VIEW_CHUNK * per_view * (model_bytes + 4) * 2
    return chunk + 4 * sum(views.values()) * IdentityConfig().dim


def encoder_step(shape: Shape, kept: int, answer: int, model_bytes: int, eager: bool, full_logits: bool) -> dict:
    """Bytes an encoder step keeps for backward through the frozen model, for `kept` samples at once."""
    seq = shape.n_visual + shape.prompt_text + answer
    if eager:  # softmax probabilities kept per layer for the value product's backward
        attention = shape.layers * kept * shape.heads * seq * seq * model_bytes
    else:  # sdpa keeps one log-sum-exp per row and head
        attention = shape.layers * kept * shape.heads * seq * 4
    positions = seq if full_logits else answer + 1
    # Logits in the model's dtype, an fp32 copy for the loss and its log-softmax kept for backward, plus the
    # reference logits of the retain samples (no grad).
    logits = kept * positions * shape.vocab * (model_bytes + 4 + 4) + kept // 2 * positions * shape.vocab * 4
    # Estimate of saved hidden states per token and layer (norms, q/k/v/o, MLP gate/up/act/down).
    hidden = shape.layers * kept * seq * (8 * shape.hidden + 4 * shape.intermediate) * model_bytes
    return {"attention": attention, "logits": logits, "hidden_activations": hidden}


def report(photos: int, retain_images: int, negatives: int, heldout: int, answer_before: int, micro: int) -> dict:
    cfg, shape = CagulConfig(), Shape()
    views = view_counts(cfg, photos, retain_images + negatives, heldout)
    answer_after = min(answer_before, cfg.max_answer_tokens)
    half = cfg.batch_size // 2
    # Before, one backward over the forget and retain halves kept both; now each pass runs its own backward.
    columns = (
        ("before", 4, False, True, True, answer_before, cfg.batch_size),
        ("after", 2, True, False, False, answer_after, half),
        (f"after, micro-batch {micro}", 2, True, False, False, answer_after, min(micro, half)),
    )
    rows = {}
    for name, bytes_, streamed, eager, full, answer, kept in columns:
        step = encoder_step(shape, kept, answer, bytes_, eager, full)
        row = {
            "weights": shape.params * bytes_,
            "discriminator_tokens": discriminator_peak(views, shape, streamed, bytes_),
            "encoder_attention": step["attention"],
            "encoder_logits": step["logits"],
            "encoder_hidden_activations (estimate)": step["hidden_activations"],
        }
        row["peak_discriminator_phase"] = row["weights"] + row["discriminator_tokens"]
        row["peak_encoder_phase"] = row["weights"] + sum(v for k, v in row.items() if k.startswith("encoder"))
        row["peak"] = max(row["peak_discriminator_phase"], row["peak_encoder_phase"])
        rows[name] = {k: round(v / GB, 2) for k, v in row.items()}
    return {"shape": "LLaVA-1.5-7B (576 x 4096)", "photos": photos, "views": views, "gb": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--photos", type=int, default=5)
    # The default world's retain set: about 50 photos of retain people, 1,500 look-alikes, 10 held-out photos.
    parser.add_argument("--retain-images", type=int, default=50)
    parser.add_argument("--negatives", type=int, default=DEFAULT_LOOKALIKES)
    parser.add_argument("--heldout-negatives", type=int, default=10)
    parser.add_argument("--answer-tokens", type=int, default=64, help="answer length of the longest retain answers")
    parser.add_argument("--micro-batch", type=int, default=2, help="LETHE_TRAIN_MICRO_BATCH of the last column")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = report(
        args.photos, args.retain_images, args.negatives, args.heldout_negatives, args.answer_tokens, args.micro_batch
    )
    print(f"{result['shape']}, {result['photos']} photos, views {result['views']}")
    names = list(result["gb"])
    print(f"{'GB':<40}" + "".join(f"{n:>22}" for n in names))
    for key in result["gb"][names[0]]:
        print(f"{key:<40}" + "".join(f"{result['gb'][n][key]:>22.2f}" for n in names))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
