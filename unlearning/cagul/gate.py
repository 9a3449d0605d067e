"""Serve answers with a SET of CAGUL modules: one batched discriminator op, then the firing module's encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image

from unlearning.backbones import Backbone, VisualOverride, VLMBatch
from unlearning.cagul.discriminator import StackedDiscriminators
from unlearning.cagul.module import CagulModule
from unlearning.cagul.selection import apply_encoder, select_tokens
from unlearning.errors import IncompatibleModuleError

T = TypeVar("T")
# Stage 1 keeps this many candidate modules per image; stage 2 runs only their discriminators. 0: every module,
# the default until the two-stage gate's recall and false-fire rate are measured at thousands of modules.
DEFAULT_CANDIDATES = 0


@dataclass(frozen=True)
class GateAnswer:
    answer: str
    module_id: str | None
    score: float


class CagulGate:
    """Routes each image to at most one module; images no module claims run the untouched model.

    Identity modules are gated in two stages, as 1:N face identification is: the image's identity embedding picks
    the `candidates` nearest module prototypes, and only those modules' discriminators decide (with the same
    thresholds, so it fires on a subset of what the exhaustive gate, `candidates=0`, fires on).
    """

    def __init__(
        self, backbone: Backbone, modules: dict[str, CagulModule] | None = None, candidates: int = DEFAULT_CANDIDATES
    ) -> None:
        self.backbone = backbone
        self.candidates = candidates
        self.set_modules(modules or {})

    def set_modules(self, modules: dict[str, CagulModule]) -> None:
        for module_id, module in modules.items():
            if (module.n_tokens, module.hidden_size) != (self.backbone.n_visual_tokens, self.backbone.hidden_size):
                raise IncompatibleModuleError(f"module {module_id} was built for another visual token shape")
            if module.config.discriminator_input == "identity" and module.identity_dim != self.backbone.identity_dim:
                raise IncompatibleModuleError(f"module {module_id} was built for another identity encoder")
        self.module_ids = list(modules)
        self.modules = [modules[m].to(self.backbone.device).eval() for m in self.module_ids]
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(self.modules):
            d = m.discriminator
            groups.setdefault((d.input_kind, d.fc1.in_features, d.fc1.out_features), []).append(i)
        self._groups = [
            (
                torch.tensor(idx),
                StackedDiscriminators([self.modules[i].discriminator for i in idx]).to(self.backbone.device),
            )
            for idx in groups.values()
        ]

    @torch.no_grad()
    def route(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: index of the highest-scoring firing module (-1 if none) and its probability."""
        batch = z.shape[0]
        if not self.modules:
            return torch.full((batch,), -1, dtype=torch.long), torch.zeros(batch)
        probs, fired = self.firing(z)
        masked = torch.where(fired, probs, torch.full_like(probs, -1.0))
        best_score, best = masked.max(0)
        return torch.where(best_score >= 0, best, torch.full_like(best, -1)), best_score.clamp(min=0)

    @torch.no_grad()
    def firing(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[modules, batch] probabilities and firings; zero and False where stage 1 did not pick the module."""
        batch = z.shape[0]
        probs = torch.zeros(len(self.modules), batch)
        fired = torch.zeros(len(self.modules), batch, dtype=torch.bool)
        embeddings = None
        for idx, stacked in self._groups:
            if stacked.input_kind == "identity":
                embeddings = self.backbone.identity_embeddings(z) if embeddings is None else embeddings
                if 0 < self.candidates < len(idx):
                    probs[idx], fired[idx] = self._two_stage(stacked, embeddings, len(idx))
                    continue
            p = stacked(z.float() if stacked.input_kind != "identity" else embeddings).cpu()
            probs[idx], fired[idx] = p, p > stacked.thresholds.cpu()[:, None]
        return probs, fired

    def _two_stage(
        self, stacked: StackedDiscriminators, embeddings: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[size, batch] probabilities and firings, zero and False for modules stage 1 did not pick."""
        selected = stacked.candidates(embeddings, self.candidates)
        p = stacked.forward_selected(embeddings, selected).cpu()
        selected = selected.cpu()
        hits = p > stacked.thresholds.cpu()[selected]
        probs = torch.zeros(size, embeddings.shape[0]).scatter_(0, selected.T, p.T)
        fired = torch.zeros(size, embeddings.shape[0], dtype=torch.bool).scatter_(0, selected.T, hits.T)
        return probs, fired

    @torch.no_grad()
    def answer(
        self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 24
    ) -> list[GateAnswer]:
        bb = self.backbone
        rows = self.dispatch(images, questions, None, lambda b, o: bb.generate(b, o, max_new_tokens=max_new_tokens))
        return [GateAnswer(text, mid, score) for text, mid, score in rows]

    @torch.no_grad()
    def dispatch(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str] | None,
        call: Callable[[VLMBatch, VisualOverride | None], list[T]],
    ) -> list[tuple[T, str | None, float]]:
        """Run `call(batch, override)` once per group of images routed to the same module (or none).

        Returns per input row: the call's result, the firing module's id and its score. When nothing
        fires, `call` gets the exact batch and no override, as the reference model would.
        """
        bb = self.backbone
        inputs = bb.pixel_values(images)
        batch = bb.make_batch(inputs, questions, answers).to(bb.device)
        if not self.modules:
            return [(r, None, 0.0) for r in call(batch, None)]
        chosen, scores = self.route(bb.visual_tokens(inputs))
        if bool((chosen < 0).all()):
            return [(r, None, float(s)) for r, s in zip(call(batch, None), scores, strict=True)]
        results: list[tuple[T, str | None, float] | None] = [None] * len(images)
        for module_index in chosen.unique().tolist():
            rows = (chosen == module_index).nonzero().flatten().tolist()
            sub_inputs = (
                {k: v[rows] for k, v in inputs.items()}
                if "image_grid_thw" not in inputs
                else bb.pixel_values([images[r] for r in rows])
            )
            sub_answers = None if answers is None else [answers[r] for r in rows]
            sub = bb.make_batch(sub_inputs, [questions[r] for r in rows], sub_answers).to(bb.device)
            if module_index < 0:
                out, mid = call(sub, None), None
            else:
                out, mid = call(sub, self._override(self.modules[module_index], sub)), self.module_ids[module_index]
            for r, value in zip(rows, out, strict=True):
                results[r] = (value, mid, float(scores[r]))
        return [r for r in results if r is not None]

    def _override(self, module: CagulModule, batch: VLMBatch) -> VisualOverride:
        cfg = module.config
        scores = None
        if cfg.token_rule in ("lowest", "highest") and cfg.token_share < 1:
            scores = self.backbone.attention_scores(batch, cfg.attention_layers)
        mask = select_tokens(
            scores,
            module.n_tokens,
            cfg.token_rule,
            cfg.token_share,
            batch.input_ids.shape[0],
            torch.Generator().manual_seed(cfg.seed),
        )
        return lambda z: apply_encoder(module.encoder, z, mask)
