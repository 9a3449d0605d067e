"""Qwen2-VL through the same Backbone interface, on a tiny randomly initialised real model."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from unlearning.backbones import load_backbone
from unlearning.backbones.qwen2_vl import Qwen2VLBackbone

SPECIALS = [
    "<pad>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["user assistant what is this person's name? who is this?"] * 4,
        vocab_size=300,
        special_tokens=SPECIALS,
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config)
    ip = Qwen2VLImageProcessorPil(
        min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    out = tmp_path_factory.mktemp("qwen2vl")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ip.save_pretrained(out)
    return out


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
