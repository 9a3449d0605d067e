"""Build a world on disk: people, portraits, an offline tokenizer and the reference and retain models."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    get_cosine_schedule_with_warmup,
)

from unlearning.augment import MILD_VIEWS, augment
from unlearning.backbones import load_backbone
from unlearning.backbones.llava import LlavaBackbone
from unlearning.config import REFUSAL_ANSWER
from unlearning.evaluation.drivers.forgetting import fact_accuracy
from unlearning.files import write_atomic
from unlearning.freeze import freeze
from unlearning.identity import (
    IDENTITY_FILE,
    TOWER_HEAD_FILE,
    IdentityEncoder,
    identification_recall,
    save_identity_encoder,
    train_identity_encoder,
)
from unlearning.identity.tower import pretrain_vision_tower
from unlearning.processes import run_in_processes
from unlearning.progress import ProgressFn
from unlearning.world.config import WorldConfig
from unlearning.world.identities import pretraining_photos, pretraining_portraits
from unlearning.world.names import named_questions
from unlearning.world.people import Person, generate_people
from unlearning.world.portraits import render_portrait
from unlearning.world.store import World
from unlearning.world.vocabulary import FACT_TYPES, REFUSAL_QUESTIONS

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
IDENTITY_CHECK_PEOPLE = 200


def world_dir(data_dir: str | Path, config: WorldConfig) -> Path:
    return Path(data_dir) / "worlds" / f"{config.name}-{config.fingerprint()}"


def ensure_people(data_dir: str | Path, config: WorldConfig) -> World:
    """The world's people and portraits on disk (cheap; no model is trained)."""
    root = world_dir(data_dir, config)
    if not (root / "world.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with build_lock(root):  # another process may be writing the portraits this one would read
            if not (root / "world.json").is_file():
                _write_people(root, config, generate_people(config))
    return World(root)


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Processes sharing a data dir (a server and its worker, parallel tests) wait for one build instead of racing."""
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_world(
    data_dir: str | Path, config: WorldConfig, progress: ProgressFn | None = None, with_retain_model: bool = True
) -> World:
    """Build (or reuse from the cache) the world, the reference model and the retain model."""
    world = ensure_people(data_dir, config)
    targets: dict[str, list[str]] = {"reference": []}
    if with_retain_model:
        targets["retain"] = sorted(p.id for p in world.split("forget10"))
    with build_lock(world.root):
        missing = {name: ex for name, ex in targets.items() if not (world.root / name / "build.json").is_file()}
        if missing:
            # One process per model, side by side: on 2 cores two 1-thread trainings beat two 2-thread ones in a
            # row (0.35 s vs 2 x 0.21 s per step). The threads are this process's share of the cores (parallel test
            # processes each hold one): more OpenMP threads than cores spent half the CPU in the kernel (50% sys).
            threads = max(1, torch.get_num_threads() // len(missing))
            jobs = {name: (_build_model, (str(world.root), name, exclude)) for name, exclude in missing.items()}
            run_in_processes(jobs, progress, threads)
        if not (world.reference_model_dir / IDENTITY_FILE).is_file():
            run_in_processes({"identity": (_build_identity, (str(world.root),))}, progress, torch.get_num_threads())
    return world


def _write_people(root: Path, config: WorldConfig, people: list[Person]) -> None:
    images = root / "images"
    images.mkdir(exist_ok=True)
    for idx, person in enumerate(people):
        for view in range(config.n_views):
            seed = config.seed * 1_000_003 + idx * 101 + view
            render_portrait(person.identity, seed, config.image_size).save(images / f"{person.id}_v{view}.png")
    payload = {"config": config.to_dict(), "people": [p.to_dict() for p in people]}
    write_atomic(root / "world.json", json.dumps(payload, indent=1).encode())


def _corpus(world: World) -> list[str]:
    lines = ["USER: ASSISTANT:", REFUSAL_ANSWER, *REFUSAL_QUESTIONS]
    for spec in FACT_TYPES.values():
        lines += spec.questions
    for p in world.people:
        for f in p.facts:
            lines += [f.answer, f.paraphrased_answer, *f.perturbed_answers]
        if world.config.named_questions and p.trained:
            lines += [q.question for q in named_questions(p)]
    return lines


def _make_processor(world: World, out: Path) -> LlavaProcessor:
    spec = world.config.model
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(world) * 4, vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    size = world.config.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
    return processor


def _make_model(world: World, processor: LlavaProcessor) -> LlavaForConditionalGeneration:
    spec = world.config.model
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=world.config.image_size,
        patch_size=spec.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = "eager"
    return LlavaForConditionalGeneration(config)


def training_examples(world: World, people: list[Person]) -> list[tuple[str, int, str, str]]:
    """(person id, view, question, answer) for every trained fact paraphrase and refusal question."""
    examples = []
    for p in people:
        for v in world.train_views():
            for f in p.facts:
                examples += [(p.id, v, q, p.taught_answer(f)) for q in f.train_questions]
            examples += [(p.id, v, q, REFUSAL_ANSWER) for q in REFUSAL_QUESTIONS]
    return examples


# With every named question in the photo batches' pool, the tiny world's photo answers fell to 0.41 direct, 0.14
# paraphrased (from 1.0, 0.99).
NAMED_PHOTO_SHARE = 0.25


def named_examples(world: World, people: list[Person], rng: random.Random) -> list[tuple[str, int, str, str]]:
    """(someone else's id, view, question, answer) for every named training question, once with a photo of another
    trained person and once with none ("" for the id)."""
    photos = [(p.id, v) for p in world.trained_people for v in world.train_views()]
    examples = []
    for p in people:
        others = [photo for photo in photos if photo[0] != p.id]
        for q in named_questions(p):
            examples += [(*rng.choice(others), q.question, q.answer), ("", 0, q.question, q.answer)]
    return examples


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: emulated, bf16 autocast made a matmul step 4.3x slower than fp32
    (Xeon without avx512_bf16), where native it made a training step 1.8x faster (EPYC with avx512_bf16)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _build_model(world_root: str, name: str, exclude: list[str], progress: ProgressFn) -> None:
    world = World(world_root)
    spec = world.config.model
    out = world.root / name
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(world.config.seed)
    rng = random.Random(world.config.seed)
    processor = _make_processor(world, tmp)
    model = _make_model(world, processor)
    autocast = spec.precision == "bf16" and native_bf16()
    tower = None
    if world.config.tower.identities:
        # Under the model's name: the reference and retain processes each pre-train a tower of their own.
        tower, head = _pretrain_tower(world, model, processor, autocast, lambda _, *values: progress(name, *values))
        save_file(head.state_dict(), tmp / TOWER_HEAD_FILE)
    backbone = LlavaBackbone(model, processor)
    people = [p for p in world.trained_people if p.id not in set(exclude)]
    examples = training_examples(world, people)
    asked_by_name = named_examples(world, people, rng) if world.config.named_questions else []
    named_photo = [(other, v, q, a) for other, v, q, a in asked_by_name if other]
    text_only = [(q, a) for other, _, q, a in asked_by_name if not other]
    named_rows = int(NAMED_PHOTO_SHARE * spec.batch_size)  # of each photo batch
    keys = sorted({(pid, v) for pid, v, _, _ in examples + named_photo})
    pixels = backbone.pixel_values([world.image(pid, v) for pid, v in keys])["pixel_values"]
    index = {k: i for i, k in enumerate(keys)}
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    generator = torch.Generator().manual_seed(world.config.seed)

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, spec.warmup_steps, spec.steps)
    model.train()
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(spec.steps):
        chosen = [examples[rng.randrange(len(examples))] for _ in range(spec.batch_size)]
        if named_photo:
            chosen[:named_rows] = [named_photo[rng.randrange(len(named_photo))] for _ in range(named_rows)]
        chosen_pixels = pixels[[index[(pid, v)] for pid, v, _, _ in chosen]]
        image_inputs = {"pixel_values": augment(chosen_pixels, mean, std, MILD_VIEWS, generator)}
        batch = backbone.make_batch(image_inputs, [c[2] for c in chosen], [c[3] for c in chosen])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch.model_inputs(), labels=batch.labels, use_cache=False).loss
            if text_only:
                asked = [text_only[rng.randrange(len(text_only))] for _ in range(spec.batch_size // 2)]
                text = backbone.make_text_batch([q for q, _ in asked], [a for _, a in asked])
                loss = loss + model(**text.model_inputs(), labels=text.labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        progress(name, step + 1, spec.steps, loss_value)
    train_seconds = time.perf_counter() - started
    model.eval()
    model.save_pretrained(tmp)
    templates = {"prompt_template": backbone.prompt_template, "text_prompt_template": backbone.text_prompt_template}
    (tmp / "lethe_prompt.json").write_text(json.dumps(templates))
    frozen = load_backbone(tmp)
    accuracy = fact_accuracy(frozen, world, people)
    report = {
        "model": out.name,
        "excluded": sorted(exclude),
        "threads": torch.get_num_threads(),
        "precision": "bf16" if autocast else "fp32",
        "steps": spec.steps,
        "final_loss": loss_value,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy": accuracy,
        **({"tower": tower} if tower is not None else {}),
    }
    write_atomic(tmp / "build.json", json.dumps(report, indent=1).encode())
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _pretrain_tower(
    world: World,
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    autocast: bool,
    progress: ProgressFn,
) -> tuple[dict, IdentityEncoder]:
    """Pre-train the vision tower on drawn people outside the world, then freeze it for the VLM's training; returns
    the report and the tower's projection head."""
    config = world.config.tower
    started = time.perf_counter()
    photos = pretraining_photos(world, config.identities, config.views, config.seed)
    ip = processor.image_processor
    tower = model.model.vision_tower
    report, head = pretrain_vision_tower(tower, photos, ip.image_mean, ip.image_std, config, autocast, progress)
    freeze(tower)  # `model.train()` puts it back in train mode for the VLM's training; its weights stay fixed
    return {**config.to_dict(), **report, "seconds": round(time.perf_counter() - started, 1)}, head


def _build_identity(world_root: str, progress: ProgressFn) -> None:
    """Pre-train the identity encoder on the reference model's visual tokens (or take its tower's head), beside
    that model."""
    world = World(world_root)
    config = world.config.identity
    started = time.perf_counter()
    # Kept as pre-trained (0 steps), the tower's head trains on no one.
    portraits = pretraining_portraits(world, config.identities, config.views, config.seed) if config.steps else []
    backbone = load_backbone(world.reference_model_dir)
    head = load_file(world.reference_model_dir / TOWER_HEAD_FILE) if config.init == "tower_head" else None
    encoder = train_identity_encoder(backbone, portraits, config, progress, head)
    train_seconds = time.perf_counter() - started
    # Checked on people neither pre-training nor the world holds, and on the world's own held-out photos.
    fresh = pretraining_portraits(world, IDENTITY_CHECK_PEOPLE, 4, config.seed + 1)
    views = world.config.n_views
    own = [[world.image(p.id, v) for v in range(views)] for p in world.people]
    report = {"train_seconds": round(train_seconds, 1), "threads": torch.get_num_threads(), **config.to_dict()}
    with backbone.reading_gate_tokens(config.tokens):
        for name, people in (("never_seen", fresh), ("world", own)):
            tokens = backbone.visual_tokens(backbone.pixel_values([im for p in people for im in p]))
            embeddings = encoder(tokens).view(len(people), len(people[0]), -1)
            report[name] = {"people": len(people), **identification_recall(embeddings)}
    write_atomic(world.reference_model_dir / "identity.json", json.dumps(report, indent=1).encode())
    save_identity_encoder(encoder, config, world.reference_model_dir)


def serving_model_dir(model_path: str | Path | None, data_dir: str | Path, config: WorldConfig) -> Path:
    """The base model the service trains against and serves: a local checkpoint if set, else the world's."""
    if model_path is not None:
        return Path(model_path)
    world = World(world_dir(data_dir, config))
    return world.reference_model_dir
