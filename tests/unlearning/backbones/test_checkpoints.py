"""Checkpoints in the Hugging Face layout (random weights, tests/checkpoints.py) load as backbones and run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.checkpoints import (
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    qwen2_vl_patches,
    write_llava_checkpoint,
    write_qwen2_vl_checkpoint,
)
from unlearning.backbones import load_backbone
from unlearning.backbones.llava import LlavaBackbone
from unlearning.backbones.qwen2_vl import GATE_GRID, Qwen2VLBackbone
from unlearning.cagul import CagulConfig, CagulGate, CagulModule
from unlearning.errors import InvalidInputError, UnsupportedModelError

SIZES = [(48, 48), (80, 64), (64, 64)]


def _photos() -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]
    return [Image.new("RGB", size, colour) for size, colour in zip(SIZES, colours, strict=True)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {"llava": write_llava_checkpoint(root / "llava"), "qwen2_vl": write_qwen2_vl_checkpoint(root / "qwen")}


def test_the_directories_hold_only_the_standard_layout(checkpoints: dict[str, Path]):
    for path in checkpoints.values():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
        assert not names & {"lethe_prompt.json", "identity_encoder.safetensors"}
    import json

    qwen = json.loads((checkpoints["qwen2_vl"] / "preprocessor_config.json").read_text())
    assert qwen["size"] == {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS}


def test_llava_1_5_checkpoint_loads_and_runs_a_forward(checkpoints: dict[str, Path]):
    bb = load_backbone(checkpoints["llava"])
    assert isinstance(bb, LlavaBackbone) and bb.model.config.vision_feature_layer == -2
    inputs = bb.pixel_values(_photos())  # any size: CLIP resizes and crops to 32 px
    batch = bb.make_batch(inputs, ["who is this?"] * 3)
    with torch.no_grad():
        logits = bb.logits(batch)
    assert logits.shape[:2] == batch.input_ids.shape and bool(torch.isfinite(logits).all())
    assert bb.visual_tokens(inputs).shape == (3, 16, 64)
    assert len(bb.generate(batch, max_new_tokens=2)) == 3


def test_qwen2_vl_checkpoint_runs_at_dynamic_resolution(checkpoints: dict[str, Path]):
    bb = load_backbone(checkpoints["qwen2_vl"])
    assert isinstance(bb, Qwen2VLBackbone) and bb.dynamic
    inputs = bb.pixel_values(_photos())
    assert bb.image_token_counts(inputs) == [9, 20, 16] == [r * c for r, c in (bb.token_grid(*s) for s in SIZES)]
    batch = bb.make_batch(inputs, ["who is this?", "what is this person's name?", "who?"])
    assert bb.visual_counts(batch).tolist() == [9, 20, 16]
    with torch.no_grad():
        logits = bb.logits(batch)
        assert torch.equal(bb.logits(batch, lambda z: z), logits)  # the override round trip is exact
        assert not torch.allclose(bb.logits(batch, torch.zeros_like), logits)
    assert bool(torch.isfinite(logits).all())
    scores = bb.attention_scores(batch)
    assert scores.shape == (3, 20) and bool((scores[1] > 0).all()) and bool((scores[0, 9:] == 0).all())
    # The gate reads one fixed-size view of every image, whatever its size.
    assert bb.visual_tokens(inputs).shape == (3, GATE_GRID * GATE_GRID, 64) and bb.n_visual_tokens == 16
    assert bb.generate(batch, lambda z: z, max_new_tokens=3) == bb.generate(batch, max_new_tokens=3)


def test_a_module_overrides_only_the_gated_image_of_a_mixed_size_batch(checkpoints: dict[str, Path]):
    bb = load_backbone(checkpoints["qwen2_vl"])
    torch.manual_seed(0)
    module = CagulModule(CagulConfig(discriminator_input="flatten"), bb.n_visual_tokens, bb.hidden_size)
    torch.nn.init.normal_(module.encoder.fc2.weight, std=0.5)
    photos, questions = _photos(), ["who is this?"] * 3
    probabilities = module.discriminator(bb.visual_tokens(bb.pixel_values(photos))).detach()
    gated = int(probabilities.argmax())
    module.discriminator.threshold.fill_(float(probabilities.sort().values[-2:].mean()))  # only `gated` fires
    answers = CagulGate(bb, {"m": module}).answer(photos, questions, max_new_tokens=4)
    assert [a.module_id for a in answers] == ["m" if i == gated else None for i in range(3)]
    for i, (photo, answer) in enumerate(zip(photos, answers, strict=True)):
        alone = bb.make_batch(bb.pixel_values([photo]), questions[:1])
        override = (lambda z: module.encoder(z)) if i == gated else None  # rule "all": every token of the image
        with torch.no_grad():
            assert answer.answer == bb.generate(alone, override, max_new_tokens=4)[0]


def test_unsupported_or_broken_directories_are_refused_naming_what_is_wrong(tmp_path: Path, checkpoints):
    from tests.checkpoints import write_unsupported_checkpoint

    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM.*supported: LlavaForConditionalGeneration"):
        load_backbone(write_unsupported_checkpoint(tmp_path / "llama"))
    with pytest.raises(UnsupportedModelError, match=r"no config\.json"):
        load_backbone(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoints["qwen2_vl"] / "config.json").read_text())
    with pytest.raises(UnsupportedModelError, match=r"Qwen2VLForConditionalGeneration checkpoint that does not load"):
        load_backbone(broken)


def test_position_offsets_are_refused_where_the_token_count_changes_with_the_photo(checkpoints: dict[str, Path]):
    from unlearning.cagul import CagulTrainer
    from unlearning.data import QA, ForgetData, RetainSet

    bb = load_backbone(checkpoints["qwen2_vl"])
    forget = ForgetData(subject="s", images=_photos()[:1], qa_pairs=[QA("who is this?", "someone.")])
    retain = RetainSet(images=_photos()[1:], qa=[(0, QA("who is this?", "another."))])
    with pytest.raises(InvalidInputError, match="position_offsets"):
        CagulTrainer(bb, CagulConfig(position_offsets=True, discriminator_input="flatten")).train(forget, retain)


def test_an_identity_encoder_trains_and_loads_on_photos_of_mixed_sizes(checkpoints: dict[str, Path], tmp_path: Path):
    import shutil

    from unlearning.identity import IdentityConfig, save_identity_encoder, train_identity_encoder

    bb = load_backbone(checkpoints["qwen2_vl"])
    colours = [(40 * i % 256, 90 * i % 256, 150 * i % 256) for i in range(8)]
    portraits = [[Image.new("RGB", size, colour) for size in SIZES[:2]] for colour in colours]  # 9 and 20 tokens
    config = IdentityConfig(identities=8, views=2, width=32, dim=8, steps=3, batch_size=4)
    encoder = train_identity_encoder(bb, portraits, config)
    directory = shutil.copytree(checkpoints["qwen2_vl"], tmp_path / "with-identity")
    save_identity_encoder(encoder, config, directory)
    served = load_backbone(directory)  # the encoder reads the gate's pooled grid, whatever the photo's size
    embeddings = served.identity_embeddings(served.visual_tokens(served.pixel_values(_photos())))
    assert embeddings.shape == (3, 8)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3))


def test_the_pre_training_patches_equal_the_qwen2_vl_processors(checkpoints: dict[str, Path]):
    backbone = load_backbone(checkpoints["qwen2_vl"])
    ip = backbone.processor.image_processor
    photos = [Image.new("RGB", (80, 64), (20 * i, 90, 200 - 30 * i)) for i in range(3)]
    photos[1].paste((250, 10, 10), (8, 8, 40, 30))
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in photos])
    x = (x - torch.tensor(ip.image_mean).view(1, 3, 1, 1)) / torch.tensor(ip.image_std).view(1, 3, 1, 1)
    ours, theirs = qwen2_vl_patches(x, ip), backbone.pixel_values(photos)
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"], atol=1e-6)
