"""Memory-bounded training on the tiny model: the projected tokens alive at once do not grow with the number of
augmented views, streamed features and answer-only logits give what the whole tensors gave, and attention read-out
switches to eager for its pass only."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS
from unlearning.backbones import Backbone, load_backbone
from unlearning.cagul import CagulConfig, CagulModule, TokenEncoder
from unlearning.cagul.trainer import VIEW_CHUNK, CagulTrainer, trim_answers
from unlearning.losses import answer_kl, answer_nll
from unlearning.world import World
from unlearning.world.requests import forget_data, world_retain_set


@contextmanager
def token_accounting(backbone: Backbone) -> Iterator[dict[str, int]]:
    """Bytes of projected-token tensors alive at once (each tracked from `visual_tokens` until it is freed)."""
    stats = {"live": 0, "peak": 0, "views": 0}
    original = backbone.visual_tokens

    def counted(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = original(inputs)
        stats["live"] += tokens.nbytes
        stats["views"] += len(tokens)
        stats["peak"] = max(stats["peak"], stats["live"])
        weakref.finalize(tokens, _freed, stats, tokens.nbytes)
        return tokens

    backbone.visual_tokens = counted  # type: ignore[method-assign]
    try:
        yield stats
    finally:
        del backbone.visual_tokens


def _freed(stats: dict[str, int], nbytes: int) -> None:
    stats["live"] -= nbytes


def _train_discriminator(backbone: Backbone, world: World, kind: str, augmentations: int) -> dict[str, int]:
    config = CagulConfig(discriminator_input=kind, positive_augmentations=augmentations, discriminator_steps=3)
    module = CagulModule(config, backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)
    forget = forget_data(world, ["p001"])
    retain = world_retain_set(world, exclude=["p001"], lookalikes=10)
    with token_accounting(backbone) as stats:
        CagulTrainer(backbone, config)._train_discriminator(module, forget, retain)
    return stats


@pytest.mark.parametrize("kind", ["identity", "attention_pool"])
def test_discriminator_token_peak_does_not_grow_with_augmented_views(backbone: Backbone, tiny_world: World, kind):
    per_view = backbone.n_visual_tokens * backbone.hidden_size * 4
    few = _train_discriminator(backbone, tiny_world, kind, augmentations=4)
    many = _train_discriminator(backbone, tiny_world, kind, augmentations=64)
    bound = 2 * VIEW_CHUNK * per_view
    assert few["peak"] <= bound and many["peak"] <= bound  # never more than two chunks' tokens alive at once ...
    assert many["views"] * per_view > 4 * bound  # ... of far more views rendered (keeping them all: over 4x that)
    if kind == "identity":  # views reduced to embeddings as they come: the same peak for 16x the augmentations
        assert many["views"] > 2 * few["views"] and many["peak"] == few["peak"]


def test_streamed_identity_features_equal_the_whole_tensor(backbone: Backbone, tiny_world: World):
    images = forget_data(tiny_world, ["p002"]).images
    parts = [(images, None, 0), (images, STRONG_VIEWS, 3), (images * 20, MILD_VIEWS, 1)]
    streamed = CagulTrainer(backbone, CagulConfig(seed=3))._features(parts, backbone.identity_embeddings)
    whole = CagulTrainer(backbone, CagulConfig(seed=3))
    tokens = torch.cat([chunk for part in parts for chunk in whole._stream(part)])  # every view at once
    assert len(tokens) == len(streamed) == 5 + 15 + 100
    assert torch.allclose(streamed, backbone.identity_embeddings(tokens), atol=1e-5)


def test_micro_batches_give_the_whole_batch_loss_and_gradient(
    backbone: Backbone, tiny_world: World, monkeypatch: pytest.MonkeyPatch
):
    # The same views in both runs (augmentation draws per micro-batch), so only the batching differs.
    monkeypatch.setattr(backbone, "augmented_inputs", lambda images, views, generator: backbone.pixel_values(images))
    clip = torch.nn.utils.clip_grad_norm_
    forget = forget_data(tiny_world, ["p001"])
    retain = world_retain_set(tiny_world, exclude=["p001"], lookalikes=5)
    runs = []
    for micro in (0, 3):  # a half-batch of 4 as one pass, and as passes of 3 and 1
        grads: list[torch.Tensor] = []
        monkeypatch.setattr(
            torch.nn.utils,
            "clip_grad_norm_",
            lambda ps, c, grads=grads: (grads.extend(p.grad.clone() for p in ps), clip(ps, c))[1],
        )
        config = CagulConfig(steps=1, batch_size=8, micro_batch_size=micro, seed=1)
        torch.manual_seed(0)
        module = CagulModule(config, backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim)
        runs.append((CagulTrainer(backbone, config)._train_encoder(module, forget, retain), grads))
    (whole, whole_grads), (micro, micro_grads) = runs
    assert whole == pytest.approx(micro, rel=1e-5)
    assert len(whole_grads) == len(micro_grads) and any(g.abs().max() > 0 for g in whole_grads)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(whole_grads, micro_grads, strict=True))


def test_answer_only_logits_and_cut_answers_keep_the_losses(backbone: Backbone, tiny_world: World):
    person = tiny_world.person("p003")
    qa = person.qa_pairs()[:4]
    inputs = backbone.pixel_values([tiny_world.image("p003", v) for v in (0, 1, 2, 3)])
    questions = ["what is this person's password?", *(q.question for q in qa[1:])]
    batch = backbone.make_batch(inputs, questions, [q.answer for q in qa])
    trainer = CagulTrainer(backbone, CagulConfig())
    encoder = TokenEncoder(backbone.hidden_size, 64)
    torch.nn.init.normal_(encoder.fc2.weight, std=0.05)  # a trained-looking encoder, so the override changes logits
    full, reference = backbone.logits(batch, encoder), backbone.logits(batch)
    cut, labels = trainer._answer_logits(batch, encoder)
    reference_cut, _ = trainer._answer_logits(batch)
    assert cut.shape[1] < full.shape[1] / 3  # 16 visual tokens here; 576 at LLaVA-1.5 shapes
    assert torch.allclose(answer_nll(cut, labels), answer_nll(full, batch.labels), atol=1e-5)
    assert torch.allclose(answer_kl(reference_cut, cut, labels), answer_kl(reference, full, batch.labels), atol=1e-6)
    assert trim_answers(batch, 1000) is batch
    short = trim_answers(batch, 2)
    assert ((short.labels != -100).sum(1) == 2).all() and short.input_ids.shape[1] < batch.input_ids.shape[1]
    kept = answer_nll(backbone.logits(short), short.labels)  # a prefix of each answer, scored as before
    prefix = batch.labels.masked_fill((batch.labels != -100).cumsum(1) > 2, -100)
    assert torch.allclose(kept, answer_nll(backbone.logits(batch), prefix), atol=1e-5)


def test_attention_read_out_runs_eager_for_its_pass_only(tiny_world: World, backbone: Backbone):
    sdpa = load_backbone(tiny_world.reference_model_dir)
    eager = load_backbone(tiny_world.reference_model_dir, attention="eager")
    assert sdpa.model.config._attn_implementation == "sdpa"
    inputs = sdpa.pixel_values([tiny_world.image("p000", 0), tiny_world.image("p004", 1)])
    batch = sdpa.make_batch(inputs, ["what is this person's name?", "where does this person live?"])
    assert torch.allclose(sdpa.attention_scores(batch), eager.attention_scores(batch), atol=1e-6)
    assert sdpa.model.config._attn_implementation == "sdpa"  # back to the memory-efficient kind
    attended = batch.attention_mask.bool()  # padding rows differ by kernel, and nothing reads them
    assert torch.allclose(sdpa.logits(batch)[attended], eager.logits(batch)[attended], atol=1e-4)
