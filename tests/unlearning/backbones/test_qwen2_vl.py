"""Qwen2-VL through the same Backbone interface, on a tiny randomly initialised real model at a fixed resolution
(dynamic resolution: test_checkpoints.py)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.checkpoints import write_qwen2_vl_checkpoint
from unlearning.backbones import load_backbone
from unlearning.backbones.qwen2_vl import Qwen2VLBackbone
from unlearning.errors import IncompatibleModuleError


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    # Fixed resolution (min_pixels == max_pixels = 32x32): every image becomes 4 visual tokens.
    return write_qwen2_vl_checkpoint(tmp_path_factory.mktemp("qwen2vl"), pixels=(32 * 32, 32 * 32))


def test_qwen2_vl_backbone_reads_tokens_attention_and_generates_with_overrides(qwen_dir: Path):
    bb = load_backbone(qwen_dir)
    assert isinstance(bb, Qwen2VLBackbone)
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))]
    inputs = bb.pixel_values(images)
    z = bb.visual_tokens(inputs)
    assert z.shape == (2, bb.n_visual_tokens, 64) == (2, 4, 64)
    batch = bb.make_batch(inputs, ["who is this?", "what is this person's name?"])
    scores = bb.attention_scores(batch)
    assert scores.shape == (2, 4) and bool((scores > 0).all())
    with torch.no_grad():
        assert torch.equal(bb.logits(batch), bb.logits(batch, z))
        assert not torch.allclose(bb.logits(batch), bb.logits(batch, torch.zeros_like(z)))
    plain = bb.generate(batch, max_new_tokens=4)
    assert len(plain) == 2 and all(isinstance(a, str) for a in plain)
    assert bb.generate(batch, z, max_new_tokens=4) == plain
    # Its merger takes four of the tower's patches per visual token: the gate reads projected tokens only.
    with pytest.raises(IncompatibleModuleError, match="tower"), bb.reading_gate_tokens("tower"):
        pass
