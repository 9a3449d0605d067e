"""Fine-tune a LoRA adapter on the frozen reference model with a baseline's forget and retain losses."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import get_cosine_schedule_with_warmup

from unlearning.augment import MILD_VIEWS
from unlearning.backbones import Backbone, VLMBatch
from unlearning.baselines.config import BaselineConfig
from unlearning.data import QA, ForgetData, RetainSet
from unlearning.losses import answer_kl, answer_nll, npo_loss
from unlearning.progress import ProgressFn


@dataclass
class BaselineReport:
    method: str
    steps: int
    final_loss: float
    final_forget_loss: float
    train_seconds: float
    trainable_params: int

    def to_dict(self) -> dict:
        return asdict(self)


class BaselineTrainer:
    """Adds a LoRA adapter to the backbone's model in place; `unload` gives the reference model back."""

    def __init__(self, backbone: Backbone, config: BaselineConfig, progress: ProgressFn | None = None) -> None:
        self.backbone = backbone
        self.config = config
        self.progress = progress
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.peft_model: PeftModel | None = None

    def _batch(self, images: list, items: list[QA], augment: bool) -> VLMBatch:
        bb = self.backbone
        inputs = bb.augmented_inputs(images, MILD_VIEWS, self.generator) if augment else bb.pixel_values(images)
        return bb.make_batch(inputs, [qa.question for qa in items], [qa.answer for qa in items]).to(bb.device)

    def train(self, forget: list[ForgetData], retain: RetainSet) -> BaselineReport:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        bb = self.backbone
        bb.freeze()
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.target_modules)
        self.peft_model = model = get_peft_model(bb.model, lora)
        params = [p for p in model.parameters() if p.requires_grad]
        forget_items = [
            (image, QA(qa.question, cfg.refusal_answer, qa.keyword) if cfg.method == "idk" else qa)
            for request in forget
            for image in request.images
            for qa in request.qa_pairs
        ]
        half = max(1, cfg.batch_size // 2)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        started = time.perf_counter()
        model.train()
        loss_value = forget_value = float("nan")
        for step in range(cfg.steps):
            chosen = [forget_items[self.rng.randrange(len(forget_items))] for _ in range(half)]
            f_batch = self._batch([im for im, _ in chosen], [qa for _, qa in chosen], augment=True)
            f_nll = answer_nll(bb.logits(f_batch), f_batch.labels)
            if cfg.method == "idk":
                forget_loss = f_nll.mean()
            elif cfg.method == "npo":
                with torch.no_grad(), model.disable_adapter():
                    ref_nll = answer_nll(bb.logits(f_batch), f_batch.labels)
                forget_loss = npo_loss(f_nll, ref_nll, cfg.npo_beta)
            else:
                forget_loss = -f_nll.mean()
            loss = forget_loss
            if cfg.method != "ga":
                r_items = [retain.qa[self.rng.randrange(len(retain.qa))] for _ in range(half)]
                r_batch = self._batch([retain.images[i] for i, _ in r_items], [qa for _, qa in r_items], augment=False)
                r_logits = bb.logits(r_batch)
                if cfg.method == "kl":
                    with torch.no_grad(), model.disable_adapter():
                        ref_logits = bb.logits(r_batch)
                    retain_loss = answer_kl(ref_logits, r_logits, r_batch.labels)
                else:
                    retain_loss = answer_nll(r_logits, r_batch.labels).mean()
                loss = loss + cfg.retain_weight * retain_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            loss_value, forget_value = float(loss.detach()), float(forget_loss.detach())
            if self.progress is not None:
                self.progress(cfg.method, step + 1, cfg.steps, loss_value)
        model.eval()
        return BaselineReport(
            method=cfg.method,
            steps=cfg.steps,
            final_loss=loss_value,
            final_forget_loss=forget_value,
            train_seconds=round(time.perf_counter() - started, 2),
            trainable_params=sum(p.numel() for p in params),
        )

    def unload(self) -> None:
        """Remove the adapter layers, leaving the backbone's model exactly as before training."""
        if self.peft_model is not None:
            self.backbone.model = self.peft_model.unload()
            self.peft_model = None
