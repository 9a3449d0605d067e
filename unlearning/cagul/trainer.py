"""Train one CAGUL module for a deletion request against a frozen backbone."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS, AugmentConfig
from unlearning.backbones import Backbone, VisualOverride, VLMBatch
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator
from unlearning.cagul.module import ENCODER_DTYPE, CagulModule
from unlearning.cagul.prefix import RefusalPrefix, named_asks, train_refusal_prefix
from unlearning.cagul.selection import encoder_rewrite
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.deadline import Deadline, check
from unlearning.errors import InvalidInputError, UnlearningError
from unlearning.losses import answer_kl, answer_nll, npo_loss
from unlearning.progress import ProgressFn

# (images, view changes, copies): `copies` changed views of each image, or the images as given once.
ViewPart = tuple[list[Image.Image], AugmentConfig | None, int]
# Images per vision pass while the discriminator's views are rendered: the token tensors alive at once.
VIEW_CHUNK = 64
# Views per discriminator step.
DISCRIMINATOR_BATCH = 256


class TrainingCancelled(UnlearningError):
    """Training stopped between steps because cancellation was requested."""


@dataclass
class TrainReport:
    threshold: float
    heldout_tpr: float
    heldout_fpr: float
    discriminator_seconds: float
    encoder_seconds: float
    final_loss: float
    final_forget_loss: float
    steps: int
    trainable_params: int
    peak_memory_mb: float
    # The refusal prefix, trained when the request names its subject (0 and None when it does not; never NaN,
    # which PostgreSQL's JSON refuses).
    prefix_seconds: float = 0.0
    final_prefix_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fabricate(answer: str, keyword: str | None, rng: random.Random) -> str:
    """A same-shaped invented value in place of the private one (never another real person's value)."""
    if not keyword or keyword.lower() not in answer.lower():
        return "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) + "."
    fake = "".join(
        rng.choice("0123456789")
        if c.isdigit()
        else rng.choice("aeiou" if c in "aeiou" else "bcdfgklmnprstvz")
        if c.isalpha()
        else c
        for c in keyword.lower()
    )
    start = answer.lower().index(keyword.lower())
    return answer[:start] + fake + answer[start + len(keyword) :]


class CagulTrainer:
    """Discriminator first (BCE, calibrated threshold), then the encoder through the frozen VLM."""

    def __init__(
        self,
        backbone: Backbone,
        config: CagulConfig | None = None,
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        self.backbone = backbone
        self.config = config or CagulConfig()
        self.progress = progress
        self.should_stop = should_stop
        self.deadline = deadline
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.rng = random.Random(self.config.seed)

    def _tick(self, phase: str, step: int, total: int, loss: float) -> None:
        if self.progress is not None:
            self.progress(phase, step, total, loss)
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled(f"cancelled during {phase} at step {step}/{total}")

    def train(self, forget: ForgetData, retain: RetainSet) -> tuple[CagulModule, TrainReport]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        bb = self.backbone
        # A learned offset per token position means nothing where the token count changes with the photo's size.
        if cfg.position_offsets and bb.variable_token_count:
            raise InvalidInputError("position_offsets needs a fixed number of visual tokens: this model has none")
        # A module's token discriminator and encoder share one width, the projected tokens': where the gate reads the
        # tower's, only an identity gate fits.
        if cfg.discriminator_input != "identity" and bb.gate_tokens != "projected":
            raise InvalidInputError(
                f"discriminator_input {cfg.discriminator_input!r} reads projected visual tokens; this model's gate "
                f"reads {bb.gate_tokens} tokens (its identity encoder's): use discriminator_input 'identity'"
            )
        identity_dim = bb.identity_dim if cfg.discriminator_input == "identity" else 0
        aliases = tuple(forget.aliases) if cfg.text_module else ()
        module = CagulModule(cfg, bb.n_visual_tokens, bb.hidden_size, identity_dim, aliases).to(bb.device)
        if bb.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        tpr, fpr = self._train_discriminator(module, forget, retain)
        disc_seconds = time.perf_counter() - started
        started = time.perf_counter()
        loss, forget_loss = self._train_encoder(module, forget, retain)
        encoder_seconds = time.perf_counter() - started
        started = time.perf_counter()
        prefix_loss = self._train_prefix(module.prefix, forget, retain) if module.prefix is not None else None
        module.eval()
        with torch.no_grad():  # as stored (`module.ENCODER_DTYPE`): what verification checks is what is served
            for p in module.encoder.parameters():
                p.copy_(p.to(ENCODER_DTYPE).float())
        peak = torch.cuda.max_memory_allocated() / 2**20 if bb.device.type == "cuda" else _rss_peak_mb()
        report = TrainReport(
            threshold=module.threshold,
            heldout_tpr=tpr,
            heldout_fpr=fpr,
            discriminator_seconds=round(disc_seconds, 2),
            encoder_seconds=round(encoder_seconds, 2),
            final_loss=loss,
            final_forget_loss=forget_loss,
            steps=cfg.steps,
            trainable_params=module.num_parameters(),
            peak_memory_mb=round(peak, 1),
            prefix_seconds=round(time.perf_counter() - started, 2) if module.prefix is not None else 0.0,
            final_prefix_loss=prefix_loss,
        )
        return module, report

    # ---- discriminator -----------------------------------------------------------------------
    # Views are rendered VIEW_CHUNK images at a time and reduced at once (an identity embedding, a score), so the
    # projected tokens alive at any moment are one chunk's, whatever the number of augmented views: at LLaVA-1.5-7B
    # shapes (576 x 4096) keeping every view's tokens took ~50 GB for a 5-photo request (bench/train_memory.py).
    def _stream(self, part: ViewPart) -> Iterator[torch.Tensor]:
        """The gate's visual tokens of one part's views, a chunk at a time, in the order the generator draws them."""
        images, views, copies = part
        augmented = views is not None and copies > 0
        for _ in range(copies if augmented else 1):
            for start in range(0, len(images), VIEW_CHUNK):
                check(self.deadline, "the discriminator's training views")
                chunk = images[start : start + VIEW_CHUNK]
                inputs = (
                    self.backbone.augmented_inputs(chunk, views, self.generator)
                    if augmented and views is not None
                    else self.backbone.pixel_values(chunk)
                )
                yield self.backbone.visual_tokens(inputs).float()

    def _features(self, parts: list[ViewPart], reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`reduce` of every view of `parts`, streamed: only reduced rows are kept."""
        with torch.no_grad():
            return torch.cat([reduce(chunk) for part in parts for chunk in self._stream(part)])

    def _train_discriminator(self, module: CagulModule, forget: ForgetData, retain: RetainSet) -> tuple[float, float]:
        cfg = self.config
        negatives = retain.images + retain.negatives
        heldout_negatives = retain.heldout_negatives or negatives
        pos: list[ViewPart] = [
            (forget.images, None, 0),
            (forget.images, STRONG_VIEWS, cfg.positive_augmentations),
            (forget.images, MILD_VIEWS, cfg.positive_augmentations // 2),
        ]
        pos_heldout: list[ViewPart] = [(forget.images, STRONG_VIEWS, max(4, cfg.positive_augmentations // 4))]
        neg: list[ViewPart] = [(negatives, None, 0), (negatives, STRONG_VIEWS, cfg.negative_augmentations)]
        neg_heldout: list[ViewPart] = [(heldout_negatives, None, 0), (heldout_negatives, MILD_VIEWS, 4)]
        disc = module.discriminator
        if cfg.discriminator_input == "identity":
            embed = self.backbone.identity_embeddings
            pos_x, pos_held, neg_x, neg_held = (self._features(p, embed) for p in (pos, pos_heldout, neg, neg_heldout))
            # The request's photos as sent, not their augmented views: at 10,000 enrolled their mean put the own
            # prototype nearer new photos (TPR at 1% 0.900 -> 0.934, bench/identity_study.py --served-prototypes).
            disc.prototype.copy_(F.normalize(pos_x[: len(forget.images)].mean(0), dim=0))
            neg_x = torch.cat([neg_x, self._hard_negatives(retain, negatives, module)])
            self._fit_embeddings(disc, pos_x, neg_x)
            disc.eval()
            return self._calibrate(disc, disc(pos_held), disc(neg_held))
        # Token inputs cannot be reduced before training: each step renders its own views (online augmentation).
        self._fit_views(disc, pos, neg)
        disc.eval()
        return self._calibrate(disc, self._features(pos_heldout, disc), self._features(neg_heldout, disc))

    def _fit_embeddings(self, disc: Discriminator, pos: torch.Tensor, neg: torch.Tensor) -> None:
        cfg = self.config
        x = torch.cat([pos, neg])
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(x.device)
        pos_weight = torch.tensor(len(neg) / max(1, len(pos)), device=x.device)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=cfg.discriminator_lr, weight_decay=1e-2)
        disc.train()
        for step in range(cfg.discriminator_steps):
            check(self.deadline, f"discriminator step {step + 1}/{cfg.discriminator_steps}")
            idx = torch.randint(len(x), (min(DISCRIMINATOR_BATCH, len(x)),), generator=self.generator)
            loss = F.binary_cross_entropy_with_logits(disc.logits(x[idx]), y[idx], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self._disc_tick(step, float(loss.detach()))

    def _fit_views(self, disc: Discriminator, pos: list[ViewPart], neg: list[ViewPart]) -> None:
        """Each step draws views of the bank (positives then negatives), rendered and used a chunk at a time."""
        cfg = self.config
        bank = pos + neg
        sizes = [len(images) * (copies if views is not None and copies > 0 else 1) for images, views, copies in bank]
        total, n_pos = sum(sizes), sum(sizes[: len(pos)])
        device = self.backbone.device
        pos_weight = torch.tensor((total - n_pos) / max(1, n_pos), device=device)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=cfg.discriminator_lr, weight_decay=1e-2)
        disc.train()
        offsets = torch.tensor([0, *sizes]).cumsum(0)
        for step in range(cfg.discriminator_steps):
            check(self.deadline, f"discriminator step {step + 1}/{cfg.discriminator_steps}")
            idx = torch.randint(total, (min(DISCRIMINATOR_BATCH, total),), generator=self.generator)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for p, (images, views, copies) in enumerate(bank):
                local = idx[(idx >= offsets[p]) & (idx < offsets[p + 1])] - offsets[p]
                chosen = [images[int(i) % len(images)] for i in local]
                if not chosen:
                    continue
                for tokens in self._stream((chosen, views, 1 if views is not None and copies > 0 else 0)):
                    y = torch.full((len(tokens),), float(p < len(pos)), device=device)
                    loss = F.binary_cross_entropy_with_logits(
                        disc.logits(tokens), y, pos_weight=pos_weight, reduction="sum"
                    ) / len(idx)
                    loss.backward()  # accumulated: the step's mean loss, one chunk of tokens alive at a time
                    step_loss += float(loss.detach())
            optimizer.step()
            self._disc_tick(step, step_loss)

    def _disc_tick(self, step: int, loss: float) -> None:
        steps = self.config.discriminator_steps
        if step % 25 == 0 or step == steps - 1:
            self._tick("discriminator", step + 1, steps, loss)

    def _calibrate(
        self, disc: Discriminator, pos_scores: torch.Tensor, neg_scores: torch.Tensor
    ) -> tuple[float, float]:
        """Threshold at the configured false-fire quantile of held-out negatives (never under the floor)."""
        cfg = self.config
        with torch.no_grad():
            quantile = torch.quantile(neg_scores.float(), 1 - cfg.target_fpr).item()
            disc.threshold.fill_(max(cfg.threshold_floor, quantile))  # type: ignore[operator]
            tpr = float((pos_scores > disc.threshold).float().mean())
            fpr = float((neg_scores > disc.threshold).float().mean())
        return tpr, fpr

    def _hard_negatives(self, retain: RetainSet, negatives: list, module: CagulModule) -> torch.Tensor:
        """Identity embeddings of more views of the gallery's (else the negatives') images nearest the subject."""
        cfg = self.config
        embed, prototype = self.backbone.identity_embeddings, module.discriminator.prototype
        if cfg.hard_negatives <= 0 or cfg.hard_negative_augmentations <= 0:
            return prototype.new_zeros(0, len(prototype))
        images = retain.gallery() or negatives
        embeddings = self._features([(images, None, 0)], embed)
        chosen = [images[i] for i in nearest(embeddings, prototype, cfg.hard_negatives)]
        return self._features([(chosen, STRONG_VIEWS, cfg.hard_negative_augmentations)], embed)

    # ---- encoder -------------------------------------------------------------------------------
    def _forget_samples(self, forget: ForgetData) -> list[QA]:
        cfg = self.config
        asked = {qa.question.strip().lower() for qa in forget.qa_pairs}
        probes = [QA(q, cfg.refusal_answer) for q in cfg.probe_questions if q.lower() not in asked]
        if cfg.forget_target == "refusal":
            return [QA(qa.question, cfg.refusal_answer, qa.keyword) for qa in forget.qa_pairs] + probes
        if cfg.forget_target == "fabricated":
            return [QA(qa.question, fabricate(qa.answer, qa.keyword, self.rng), qa.keyword) for qa in forget.qa_pairs]
        return list(forget.qa_pairs)  # ga / npo push the true answer down

    def _transform(self, module: CagulModule, batch: VLMBatch) -> Callable[[torch.Tensor], torch.Tensor]:
        prompt_only = VLMBatch(
            batch.input_ids, batch.attention_mask * (batch.labels == -100), batch.pixel_values, None, batch.extra
        )
        return encoder_rewrite(module.encoder, self.backbone, self.config, batch, self.generator, prompt_only)

    def _batch(self, image_inputs: dict[str, torch.Tensor], items: list[QA]) -> VLMBatch:
        """A training batch whose answers keep at most `max_answer_tokens` tokens: the sequence, and so the memory
        of a step, is bounded whatever the retain set's answers."""
        batch = self.backbone.make_batch(image_inputs, [qa.question for qa in items], [qa.answer for qa in items])
        return trim_answers(batch, self.config.max_answer_tokens).to(self.backbone.device)

    def _answer_logits(
        self, batch: VLMBatch, override: VisualOverride | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the answer positions only, and the labels cut to match: at a 32k vocabulary the whole
        sequence's logits of a batch of 16 are over a gigabyte, the answers' a few dozen megabytes."""
        assert batch.labels is not None
        columns = (batch.labels != -100).any(0).nonzero()
        first = int(columns[0]) if len(columns) else batch.labels.shape[1] - 1
        keep = batch.labels.shape[1] - first + 1  # one position more: the logit that predicts the first answer token
        return self.backbone.logits(batch, override, logits_to_keep=keep), batch.labels[:, -keep:]

    def _parts(self, items: list) -> list[list]:
        size = self.config.micro_batch_size or len(items)
        return [items[i : i + size] for i in range(0, len(items), size)]

    def _forget_loss(self, module: CagulModule, batch: VLMBatch) -> torch.Tensor:
        """The forget loss of one (micro-)batch, as the mean over its samples."""
        cfg = self.config
        logits, labels = self._answer_logits(batch, self._transform(module, batch))
        nll = answer_nll(logits, labels)
        if cfg.forget_target in ("refusal", "fabricated"):
            return nll.mean()
        if cfg.forget_target == "ga":
            return -nll.mean()
        with torch.no_grad():
            ref_nll = answer_nll(self._answer_logits(batch)[0], labels)
        return npo_loss(nll, ref_nll, cfg.npo_beta)

    def _train_encoder(self, module: CagulModule, forget: ForgetData, retain: RetainSet) -> tuple[float, float]:
        cfg = self.config
        bb = self.backbone
        forget_samples = self._forget_samples(forget)
        half = max(1, cfg.batch_size // 2)
        params = list(module.encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        module.encoder.train()
        loss_value = forget_value = float("nan")
        for step in range(cfg.steps):
            check(self.deadline, f"encoder step {step + 1}/{cfg.steps}")
            f_items = [(self.rng.randrange(len(forget.images)), self.rng.choice(forget_samples)) for _ in range(half)]
            r_items = [retain.qa[self.rng.randrange(len(retain.qa))] for _ in range(half)]
            optimizer.zero_grad(set_to_none=True)
            # Micro-batches (`micro_batch_size`) accumulate the step's gradient: the activations kept for backward
            # through the frozen model are one micro-batch's, the loss and gradient the whole batch's.
            forget_loss = torch.zeros(())
            for part in self._parts(f_items):
                images = [forget.images[i] for i, _ in part]
                f_batch = self._batch(bb.augmented_inputs(images, MILD_VIEWS, self.generator), [qa for _, qa in part])
                part_loss = self._forget_loss(module, f_batch) * len(part) / half
                part_loss.backward()
                forget_loss = forget_loss + part_loss.detach().cpu()
            r_batches = [
                self._batch(bb.pixel_values([retain.images[i] for i, _ in part]), [qa for _, qa in part])
                for part in self._parts(r_items)
            ]
            tokens = sum(int((b.labels[:, 1:] != -100).sum()) for b in r_batches if b.labels is not None)
            retain_loss = torch.zeros(())
            for r_batch in r_batches:
                with torch.no_grad():
                    ref_logits, r_labels = self._answer_logits(r_batch)
                r_logits, _ = self._answer_logits(r_batch, self._transform(module, r_batch))
                retain_ce = answer_nll(r_logits, r_labels).sum() / half
                kl = answer_kl(ref_logits, r_logits, r_labels, tokens=tokens)
                part_loss = cfg.retain_ce_weight * retain_ce + cfg.kl_weight * kl
                part_loss.backward()
                retain_loss = retain_loss + part_loss.detach().cpu()
            loss = forget_loss + retain_loss
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            loss_value, forget_value = float(loss.detach()), float(forget_loss.detach())
            self._tick("encoder", step + 1, cfg.steps, loss_value)
        return loss_value, forget_value

    # ---- refusal prefix ----------------------------------------------------------------------
    def _train_prefix(self, prefix: RefusalPrefix, forget: ForgetData, retain: RetainSet) -> float:
        """Train the module's prefix to refuse the request's questions asked by the subject's names, with no photo
        and with another person's; returns its final loss."""
        cfg = self.config
        questions = list(dict.fromkeys([qa.question for qa in forget.qa_pairs] + list(cfg.probe_questions)))
        asked = named_asks(questions, forget.aliases, cfg.seed)
        others = retain.images + retain.negatives
        rows: list[tuple[str, Image.Image | None]] = [(q, None) for q in asked]
        if others:
            rows += [(q, others[self.rng.randrange(len(others))]) for q in asked]

        def tick(step: int, loss: float) -> None:
            check(self.deadline, f"prefix step {step}/{cfg.prefix_steps}")
            self._tick("prefix", step, cfg.prefix_steps, loss)

        prefix.train()
        _, loss = train_refusal_prefix(
            self.backbone,
            rows,
            steps=cfg.prefix_steps,
            batch_size=cfg.batch_size,
            lr=cfg.prefix_lr,
            seed=cfg.seed,
            refusal=cfg.refusal_answer,
            prefix=prefix,
            tick=tick,
        )
        return loss


def nearest(embeddings: torch.Tensor, prototype: torch.Tensor, k: int) -> list[int]:
    """Indices of the `k` unit embeddings most similar to `prototype`, nearest first."""
    return (embeddings @ prototype).topk(min(k, len(embeddings))).indices.tolist()


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trim_answers(batch: VLMBatch, max_tokens: int) -> VLMBatch:
    """`batch` (right-padded, with labels) with each answer cut to its first `max_tokens` tokens."""
    assert batch.labels is not None
    answer = batch.labels != -100
    kept = answer & (answer.cumsum(1) <= max_tokens)
    drop = answer & ~kept
    if not bool(drop.any()):
        return batch
    width = int(((batch.attention_mask.bool() & ~drop).nonzero()[:, 1]).max()) + 1
    labels = batch.labels.masked_fill(drop, -100)[:, :width]
    mask = batch.attention_mask.masked_fill(drop, 0)[:, :width]
    shape = batch.input_ids.shape
    extra = {k: v[:, :width] if v.shape[:2] == shape else v for k, v in batch.extra.items()}
    return VLMBatch(batch.input_ids[:, :width], mask, batch.pixel_values, labels, extra)
