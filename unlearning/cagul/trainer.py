"""Train one CAGUL module for a deletion request against a frozen backbone."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS, STRONG_VIEWS, AugmentConfig
from unlearning.backbones import Backbone, VLMBatch
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.module import ENCODER_DTYPE, CagulModule
from unlearning.cagul.selection import apply_encoder, select_tokens
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.deadline import Deadline, check
from unlearning.errors import InvalidInputError, UnlearningError
from unlearning.losses import answer_kl, answer_nll, npo_loss

ProgressFn = Callable[[str, int, int, float], None]


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
        identity_dim = bb.identity_dim if cfg.discriminator_input == "identity" else 0
        module = CagulModule(cfg, bb.n_visual_tokens, bb.hidden_size, identity_dim).to(bb.device)
        if bb.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        tpr, fpr = self._train_discriminator(module, forget, retain)
        disc_seconds = time.perf_counter() - started
        started = time.perf_counter()
        loss, forget_loss = self._train_encoder(module, forget, retain)
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
            encoder_seconds=round(time.perf_counter() - started, 2),
            final_loss=loss,
            final_forget_loss=forget_loss,
            steps=cfg.steps,
            trainable_params=module.num_parameters(),
            peak_memory_mb=round(peak, 1),
        )
        return module, report

    # ---- discriminator -----------------------------------------------------------------------
    def _tokens(self, images: list, views: AugmentConfig | None, copies: int) -> torch.Tensor:
        check(self.deadline, "the discriminator's training views")
        out = []
        if views is None or copies == 0:
            return self.backbone.visual_tokens(self.backbone.pixel_values(images)).float()
        for _ in range(copies):
            for start in range(0, len(images), 64):
                check(self.deadline, "the discriminator's training views")
                chunk = images[start : start + 64]
                out.append(self.backbone.visual_tokens(self.backbone.augmented_inputs(chunk, views, self.generator)))
        return torch.cat(out).float()

    def _train_discriminator(self, module: CagulModule, forget: ForgetData, retain: RetainSet) -> tuple[float, float]:
        cfg = self.config
        pos = torch.cat(
            [
                self._tokens(forget.images, None, 0),
                self._tokens(forget.images, STRONG_VIEWS, cfg.positive_augmentations),
                self._tokens(forget.images, MILD_VIEWS, cfg.positive_augmentations // 2),
            ]
        )
        pos_heldout = self._tokens(forget.images, STRONG_VIEWS, max(4, cfg.positive_augmentations // 4))
        negatives = retain.images + retain.negatives
        neg = torch.cat(
            [self._tokens(negatives, None, 0), self._tokens(negatives, STRONG_VIEWS, cfg.negative_augmentations)]
        )
        heldout_negatives = retain.heldout_negatives or negatives
        neg_heldout = torch.cat(
            [self._tokens(heldout_negatives, None, 0), self._tokens(heldout_negatives, MILD_VIEWS, 4)]
        )

        if cfg.discriminator_input == "identity":
            embed = self.backbone.identity_embeddings
            pos, pos_heldout, neg, neg_heldout = embed(pos), embed(pos_heldout), embed(neg), embed(neg_heldout)
            module.discriminator.prototype.copy_(F.normalize(pos.mean(0), dim=0))
            neg = torch.cat([neg, self._hard_negatives(retain, negatives, module)])
        disc = module.discriminator
        x = torch.cat([pos, neg])
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(x.device)
        pos_weight = torch.tensor(len(neg) / max(1, len(pos)), device=x.device)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=cfg.discriminator_lr, weight_decay=1e-2)
        disc.train()
        for step in range(cfg.discriminator_steps):
            check(self.deadline, f"discriminator step {step + 1}/{cfg.discriminator_steps}")
            idx = torch.randint(len(x), (min(256, len(x)),), generator=self.generator)
            loss = F.binary_cross_entropy_with_logits(disc.logits(x[idx]), y[idx], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 25 == 0 or step == cfg.discriminator_steps - 1:
                self._tick("discriminator", step + 1, cfg.discriminator_steps, float(loss.detach()))
        disc.eval()
        with torch.no_grad():
            neg_scores = disc(neg_heldout)
            quantile = torch.quantile(neg_scores.float(), 1 - cfg.target_fpr).item()
            disc.threshold.fill_(max(cfg.threshold_floor, quantile))  # type: ignore[operator]
            tpr = float((disc(pos_heldout) > disc.threshold).float().mean())
            fpr = float((neg_scores > disc.threshold).float().mean())
        return tpr, fpr

    def _hard_negatives(self, retain: RetainSet, negatives: list, module: CagulModule) -> torch.Tensor:
        """Identity embeddings of more views of the gallery's (else the negatives') images nearest the subject."""
        cfg = self.config
        embed, prototype = self.backbone.identity_embeddings, module.discriminator.prototype
        if cfg.hard_negatives <= 0 or cfg.hard_negative_augmentations <= 0:
            return prototype.new_zeros(0, len(prototype))
        images = retain.gallery() or negatives
        embeddings = torch.cat([embed(self._tokens(images[i : i + 256], None, 0)) for i in range(0, len(images), 256)])
        chosen = [images[i] for i in nearest(embeddings, prototype, cfg.hard_negatives)]
        return embed(self._tokens(chosen, STRONG_VIEWS, cfg.hard_negative_augmentations))

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
        cfg = self.config
        scores = None
        if cfg.token_rule in ("lowest", "highest") and cfg.token_share < 1:
            prompt_only = VLMBatch(
                batch.input_ids, batch.attention_mask * (batch.labels == -100), batch.pixel_values, None, batch.extra
            )
            scores = self.backbone.attention_scores(prompt_only, cfg.attention_layers)
        mask = select_tokens(
            scores,
            self.backbone.visual_counts(batch),
            cfg.token_rule,
            cfg.token_share,
            batch.input_ids.shape[0],
            self.generator,
        )
        return lambda z: apply_encoder(module.encoder, z, mask)

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
            f_inputs = bb.augmented_inputs([forget.images[i] for i, _ in f_items], MILD_VIEWS, self.generator)
            f_batch = bb.make_batch(f_inputs, [qa.question for _, qa in f_items], [qa.answer for _, qa in f_items]).to(
                bb.device
            )
            f_logits = bb.logits(f_batch, self._transform(module, f_batch))
            f_nll = answer_nll(f_logits, f_batch.labels)
            if cfg.forget_target in ("refusal", "fabricated"):
                forget_loss = f_nll.mean()
            elif cfg.forget_target == "ga":
                forget_loss = -f_nll.mean()
            else:
                with torch.no_grad():
                    ref_nll = answer_nll(bb.logits(f_batch), f_batch.labels)
                forget_loss = npo_loss(f_nll, ref_nll, cfg.npo_beta)

            r_items = [retain.qa[self.rng.randrange(len(retain.qa))] for _ in range(half)]
            r_inputs = bb.pixel_values([retain.images[i] for i, _ in r_items])
            r_batch = bb.make_batch(r_inputs, [qa.question for _, qa in r_items], [qa.answer for _, qa in r_items]).to(
                bb.device
            )
            with torch.no_grad():
                ref_logits = bb.logits(r_batch)
            r_logits = bb.logits(r_batch, self._transform(module, r_batch))
            retain_ce = answer_nll(r_logits, r_batch.labels).mean()
            kl = answer_kl(ref_logits, r_logits, r_batch.labels)
            loss = forget_loss + cfg.retain_ce_weight * retain_ce + cfg.kl_weight * kl

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            loss_value, forget_value = float(loss.detach()), float(forget_loss.detach())
            self._tick("encoder", step + 1, cfg.steps, loss_value)
        return loss_value, forget_value


def nearest(embeddings: torch.Tensor, prototype: torch.Tensor, k: int) -> list[int]:
    """Indices of the `k` unit embeddings most similar to `prototype`, nearest first."""
    return (embeddings @ prototype).topk(min(k, len(embeddings))).indices.tolist()


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
