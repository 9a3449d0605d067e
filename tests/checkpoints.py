"""Small random-weight checkpoints of released VLM classes, written in the standard Hugging Face layout.

Each directory holds what a downloaded checkpoint holds (config.json, model.safetensors, tokenizer and processor
files, a chat template) through `save_pretrained` alone: no file Lethe writes for its own worlds
(`lethe_prompt.json`, an identity encoder). The shapes are real ones scaled down: LLaVA-1.5 (CLIP vision tower,
second-to-last layer, `default` feature selection, Llama language model) and Qwen2-VL (dynamic resolution:
`min_pixels` != `max_pixels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    get_cosine_schedule_with_warmup,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from unlearning.augment import MILD_VIEWS, augment
from unlearning.backbones.qwen2_vl import ImageOnlyQwen2VLProcessor, Qwen2VLBackbone
from unlearning.config import REFUSAL_ANSWER
from unlearning.identity.config import TowerConfig
from unlearning.identity.tower import pretrain_contrastively
from unlearning.world import World
from unlearning.world.builder import build_lock
from unlearning.world.identities import pretraining_photos
from unlearning.world.people import Person
from unlearning.world.vocabulary import REFUSAL_QUESTIONS

CORPUS = [
    "USER: ASSISTANT: user assistant system",
    "what is this person's name? who is this? where does this person live? what is their phone number?",
    "i cannot share that. the person lives in a city and works at a company.",
]
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL sizes: images resized to 32x32 .. 96x96 pixels' worth, patch 8, 2x2 merge: 4 to 36 visual tokens.
QWEN_MIN_PIXELS = 32 * 32
QWEN_MAX_PIXELS = 96 * 96


def _bpe(specials: list[str], corpus: Iterable[str], vocab_size: int) -> ByteLevelBPETokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus) * 4, vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    return bpe


def write_llava_checkpoint(out: Path, seed: int = 0, corpus: Iterable[str] = CORPUS) -> Path:
    """A LLaVA-1.5-shaped `LlavaForConditionalGeneration` (CLIP 32 px, patch 8: 16 visual tokens) in `out`."""
    torch.manual_seed(seed)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(specials, corpus, 400)._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]
        vision_feature_layer=-2,  # as LLaVA-1.5
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    out.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def qwen2_vl_parts(
    seed: int = 0,
    corpus: Iterable[str] = CORPUS,
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 400,
    pixels: tuple[int, int] = (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS),
) -> tuple[Qwen2VLForConditionalGeneration, ImageOnlyQwen2VLProcessor]:
    """A small random-weight Qwen2-VL and its processor (dynamic resolution unless `pixels` are equal), not on disk."""
    torch.manual_seed(seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(QWEN_SPECIALS, corpus, vocab_size)._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = {t: cast(int, tokenizer.convert_tokens_to_ids(t)) for t in QWEN_SPECIALS}  # one token in, one id out
    heads = max(2, hidden // 32)
    section = hidden // heads // 2  # mrope sections (temporal, height, width) sum to half a head's dimension
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [section - 2 * (section * 3 // 8), section * 3 // 8, section * 3 // 8],
                "rope_theta": 10000.0,
            },
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,
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
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels[0], max_pixels=pixels[1], patch_size=8, merge_size=2, temporal_patch_size=2
    )
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=QWEN_CHAT_TEMPLATE
    )
    return Qwen2VLForConditionalGeneration(config), processor


def write_qwen2_vl_checkpoint(
    out: Path, seed: int = 0, pixels: tuple[int, int] = (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
) -> Path:
    """A Qwen2-VL-shaped `Qwen2VLForConditionalGeneration` in `out`: by default at dynamic resolution (4 to 36 visual
    tokens an image), at one fixed size where `pixels` (min_pixels, max_pixels) are equal."""
    model, processor = qwen2_vl_parts(seed, pixels=pixels)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # The processor's own save_pretrained needs its video processor (torchvision): its parts save one by one.
    processor.tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    return out


def write_unsupported_checkpoint(out: Path) -> Path:
    """A well-formed checkpoint of a class Lethe does not serve (a text-only Llama)."""
    from transformers import LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


# ---- a Qwen2-VL that knows the tiny world's people, at several image sizes ---------------------------------------
# (width, height) of the photos it learns and answers on: 9, 16, 20 and 24 visual tokens a photo.
QWEN_SIZES = ((48, 48), (64, 64), (80, 64), (64, 96))


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, Image.Resampling.BICUBIC)


def qwen2_vl_reference_examples(world: World, people: list[Person], facts: int) -> list[tuple[str, int, str, str]]:
    """(person id, view, question, answer): the first `facts` facts of each person, and the refusal questions."""
    examples = []
    for p in people:
        for v in world.train_views():
            for f in p.facts[:facts]:
                examples += [(p.id, v, q, p.taught_answer(f)) for q in f.train_questions]
            examples += [(p.id, v, q, REFUSAL_ANSWER) for q in REFUSAL_QUESTIONS]
    return examples


def train_qwen2_vl_reference(
    world: World,
    people: list[Person],
    out: Path,
    facts: int = 3,
    steps: int = 400,
    batch_size: int = 16,
    tower: TowerConfig | None = None,
) -> Path:
    """Train a small Qwen2-VL from scratch until it answers `people`'s facts from their photo at any of
    `QWEN_SIZES`, as the world builder trains its LLaVA; save it in the Hugging Face layout in `out`.

    `tower`: pre-train the vision encoder first on drawn people outside the world (then frozen, the merger still
    learning), as a released checkpoint's vision encoder was pre-trained on far more people than it answers about.
    """
    examples = qwen2_vl_reference_examples(world, people, facts)
    corpus = [REFUSAL_ANSWER, *REFUSAL_QUESTIONS, *CORPUS] + [f"{q} {a}" for _, _, q, a in examples]
    model, processor = qwen2_vl_parts(world.config.seed, corpus, hidden=128, layers=3, vocab_size=1024)
    backbone = Qwen2VLBackbone(model, processor)
    report = pretrain_qwen2_vl_tower(backbone, world, tower) if tower is not None and tower.identities else {}
    rng = random.Random(world.config.seed)
    generator = torch.Generator().manual_seed(world.config.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, steps // 10, steps)
    model.train()
    for _ in range(steps):
        chosen = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        photos = [resized(world.image(pid, v), rng.choice(QWEN_SIZES)) for pid, v, _, _ in chosen]
        inputs = backbone.augmented_inputs(photos, MILD_VIEWS, generator)
        batch = backbone.make_batch(inputs, [c[2] for c in chosen], [c[3] for c in chosen])
        loss = model(**batch.model_inputs(), labels=batch.labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / "train.json").write_text(
        json.dumps({"steps": steps, "final_loss": float(loss.detach()), **({"tower": report} if report else {})})
    )
    return out


def pretrain_qwen2_vl_tower(backbone: Qwen2VLBackbone, world: World, config: TowerConfig) -> dict[str, float]:
    """Contrastive pre-training of the Qwen2-VL vision encoder on the gate's pooled tokens of drawn people, each
    view of a batch at a size of `QWEN_SIZES` drawn for it; the encoder is frozen after it, the merger is not."""
    photos = torch.from_numpy(pretraining_photos(world, config.identities, config.views, config.seed))
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    ip = backbone.processor.image_processor
    mean, std = torch.tensor(ip.image_mean).view(1, 3, 1, 1), torch.tensor(ip.image_std).view(1, 3, 1, 1)

    def tokens(who, view, changed):  # type: ignore[no-untyped-def]
        x = photos[torch.from_numpy(who), view].permute(0, 3, 1, 2).float().div(255)
        width, height = rng.choice(QWEN_SIZES)
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True).clamp(0, 1)
        x = augment(x, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), MILD_VIEWS, generator) if changed else x
        return backbone.visual_tokens_with_grad(qwen2_vl_patches((x - mean) / std, ip))

    visual = backbone.model.model.visual
    report, _ = pretrain_contrastively(visual, tokens, (config.identities, config.views), config, generator)
    for name, parameter in visual.named_parameters():
        parameter.requires_grad_(name.startswith("merger."))
    return report


def qwen2_vl_patches(x: torch.Tensor, ip: Qwen2VLImageProcessorPil) -> dict[str, torch.Tensor]:
    """Normalised images [batch, 3, H, W] (H, W multiples of patch x merge) as the Qwen2-VL processor flattens
    them (equal to its output): the pre-training's batches skip its per-image PIL path."""
    b, c, h, w = x.shape
    p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    rows, cols = h // p, w // p
    x = x[:, None].expand(b, t, c, h, w).reshape(b, 1, t, c, rows // m, m, p, cols // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(b * rows * cols, c * t * p * p)
    return {"pixel_values": x, "image_grid_thw": torch.tensor([[1, rows, cols]] * b)}


# What the cached Qwen2-VL learnt; its directory name hashes this with the world's, so a change retrains it.
# The vision encoder pre-trained first (`bench/qwen_tower.py` measures both): trained with the language model on 5
# people alone, the service's gates missed the held-out photo of 1 of 5 people at 64x64 (0.62 and, in a second
# training, 0.28 under a 0.75 threshold) and fired on 0 to 12% of other people's photos; with `QWEN_TOWER`, 0 of 5
# missed (0.86 to 0.999) and 3 of 5 fired on no other person (the others 3.3% and 4.4%).
QWEN_TOWER = TowerConfig(identities=1000, views=6, steps=300, batch_size=96, width=256)
QWEN_REFERENCE: dict[str, Any] = {"people": 5, "facts": 3, "steps": 400, "tower": QWEN_TOWER.to_dict(), "version": 2}


def qwen2_vl_known_people(world: World) -> list[Person]:
    """The people the cached Qwen2-VL learns: the first trained ones, and the protected people it declines to talk
    about (a refusal an image can bring about: without them the encoder found other people's answers, not the
    refusal: 1 answer in 6 refused)."""
    known = [p for p in world.trained_people if not p.protected][: QWEN_REFERENCE["people"]]
    return known + [p for p in world.trained_people if p.protected]


def cached_qwen2_vl_reference(data_dir: Path, world: World) -> Path:
    """The Qwen2-VL trained on `qwen2_vl_known_people`, cached under `data_dir`/checkpoints (about 2 minutes to
    train on 2 cores the first time)."""
    key = json.dumps({**QWEN_REFERENCE, "world": world.root.name}, sort_keys=True).encode()
    out = data_dir / "checkpoints" / f"qwen2-vl-{hashlib.sha256(key).hexdigest()[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out.parent):  # parallel test processes train it once
        if not (out / "train.json").is_file():
            partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            people = qwen2_vl_known_people(world)
            train_qwen2_vl_reference(
                world, people, partial, QWEN_REFERENCE["facts"], QWEN_REFERENCE["steps"], tower=QWEN_TOWER
            )
            shutil.rmtree(out, ignore_errors=True)
            os.replace(partial, out)
    return out
