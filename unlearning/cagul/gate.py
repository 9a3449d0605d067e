"""Serve answers with a SET of CAGUL modules: one batched discriminator op, then the firing module's encoder."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import torch
from PIL import Image
from torch import nn

from unlearning.backbones import Backbone, VisualOverride, VLMBatch
from unlearning.cagul.aliases import AliasIndex
from unlearning.cagul.config import CagulConfig
from unlearning.cagul.discriminator import Discriminator, StackedDiscriminators, shape_key
from unlearning.cagul.module import CagulModule
from unlearning.cagul.prefix import RefusalPrefix, prefixed
from unlearning.cagul.selection import encoder_rewrite
from unlearning.errors import IncompatibleModuleError

T = TypeVar("T")
# The scales `CagulGate.calibrate` holds a set back on (`LETHE_GATE_CALIBRATION`).
CALIBRATION_SCALES = ("logit", "cosine")


class Rewrite(Protocol):
    """What a module changes once its gate claims an input (`ModuleRewrite`, or the `CagulModule` itself)."""

    @property
    def encoder(self) -> nn.Module: ...

    @property
    def prefix(self) -> RefusalPrefix | None: ...


RewriteSource = Callable[[str], Rewrite]
# Stage 1 keeps this many candidate modules per image; stage 2 runs only their discriminators (0: every module).
# Scale world, 1,000 enrolled: the subject's own module is among the nearest 8 prototypes for 99.3% of new photos,
# among 16 for 99.8% (`lethe bench scale`); stage 2 reads k weight sets per image, so k costs little.
DEFAULT_CANDIDATES = 32


@dataclass
class CosineCalibration:
    """What a cosine calibration found on benign photos `z` with `candidates`, kept for the next one on them."""

    z: torch.Tensor
    candidates: int
    nearest: torch.Tensor  # [photos] the nearest firing prototype's cosine, unheld (-inf: none fires)
    kth: dict[tuple, torch.Tensor]  # per identity bank, [photos] its k-th candidate's cosine (-inf: scored whole)
    joined: list[str] = field(default_factory=list)  # modules added since


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

    A question that names a module's subject (its aliases, `AliasIndex`; `known_names` are other people's, never
    taken for a misspelling) is routed to that module too, with or without an image: the module's refusal prefix
    goes in front of it. Rows neither gate claims are the very batch the untouched model would see.

    Modules join and leave one at a time (`add_module`, `remove_module`). The gate keeps each module's
    discriminator in a stack, its config and aliases; its encoder and prefix come from `rewrites` (module id ->
    `Rewrite`) when given, which lets a server keep only those in use in memory, else from the module object the
    gate then holds.
    """

    def __init__(
        self,
        backbone: Backbone,
        modules: dict[str, CagulModule] | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        rewrites: RewriteSource | None = None,
        known_names: Iterable[str] = (),
    ) -> None:
        self.backbone = backbone
        self.candidates = candidates
        self._rewrites = rewrites
        self._names = AliasIndex(known_names=known_names)
        self._banks: dict[tuple, StackedDiscriminators] = {}
        self._ids: dict[tuple, list[str]] = {}
        self._bank_of: dict[str, tuple] = {}
        self._configs: dict[str, CagulConfig] = {}
        self._held_modules: dict[str, CagulModule] = {}
        # Set by `calibrate`, so the set as a whole meets a false-fire budget: a margin added to every threshold
        # (logits), or a floor on the cosine between an image's identity embedding and a module's prototype.
        self.offset = 0.0
        self.min_cosine = float("-inf")
        # The calibration set's identity embeddings, and what the last cosine calibration found per photo: the
        # backbone is frozen, so a later calibration on the same set reuses both (`_nearest_firing`).
        self._calibration_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self._held: CosineCalibration | None = None
        self.set_modules(modules or {})

    @property
    def module_ids(self) -> list[str]:
        """Module ids in the order of the rows `firing` returns."""
        return [m for ids in self._ids.values() for m in ids]

    @property
    def modules(self) -> list[CagulModule]:
        """The module objects, in `module_ids` order; only a gate built without an encoder source holds them."""
        return [self._held_modules[m] for m in self.module_ids]

    def __len__(self) -> int:
        return len(self._bank_of)

    def __contains__(self, module_id: object) -> bool:
        return module_id in self._bank_of

    def set_modules(self, modules: dict[str, CagulModule]) -> None:
        for module_id in list(self._bank_of):
            self.remove_module(module_id)
        for module_id, module in modules.items():
            self.add_module(module_id, module)

    def add_module(self, module_id: str, module: CagulModule) -> None:
        """Start gating with `module` (replacing a module of the same id); the others are not touched."""
        self.add_discriminator(module_id, module.discriminator, module.config, module.identity_dim, module.aliases)
        if self._rewrites is None:
            self._held_modules[module_id] = module.to(self.backbone.device).eval()

    def add_discriminator(
        self,
        module_id: str,
        discriminator: Discriminator,
        config: CagulConfig,
        identity_dim: int | None = None,
        aliases: Iterable[str] = (),
    ) -> None:
        """Gate with a module's discriminator and aliases alone: for a gate whose rewrites come from its source."""
        bb = self.backbone
        if (discriminator.n_tokens, discriminator.hidden_size) != (bb.n_visual_tokens, bb.hidden_size):
            raise IncompatibleModuleError(f"module {module_id} was built for another visual token shape")
        identity_dim = discriminator.fc1.in_features if identity_dim is None else identity_dim
        if config.discriminator_input == "identity" and identity_dim != bb.identity_dim:
            raise IncompatibleModuleError(f"module {module_id} was built for another identity encoder")
        if module_id in self._bank_of:
            self.remove_module(module_id)
        key = shape_key(discriminator)
        if key in self._banks:
            self._banks[key].add(discriminator)
            self._ids[key].append(module_id)
        else:
            self._banks[key] = StackedDiscriminators([discriminator], self.backbone.device)
            self._ids[key] = [module_id]
        self._bank_of[module_id] = key
        self._configs[module_id] = config
        self._names.add(module_id, aliases)
        if self._held is not None:
            self._held.joined.append(module_id)

    def remove_module(self, module_id: str) -> None:
        """Stop gating with one module; the others are not touched."""
        key = self._bank_of.pop(module_id)
        ids = self._ids[key]
        row = ids.index(module_id)
        self._banks[key].remove(row)
        ids[row] = ids[-1]  # the stack moved its last row into `row`
        ids.pop()
        if not ids:
            del self._banks[key], self._ids[key]
        del self._configs[module_id]
        self._names.remove(module_id)
        self._held_modules.pop(module_id, None)
        self._held = None  # rows moved: the next calibration starts over

    def rewrite(self, module_id: str) -> Rewrite:
        return self._rewrites(module_id) if self._rewrites is not None else self._held_modules[module_id]

    def encoder(self, module_id: str) -> nn.Module:
        return self.rewrite(module_id).encoder

    def named(self, question: str) -> str | None:
        """The module whose subject `question` names (the first by id when it names several), or None."""
        subjects = self._names.subjects(question)
        return min(subjects) if subjects else None

    @torch.no_grad()
    def route(
        self, z: torch.Tensor | None, embeddings: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: index (into `module_ids`) of the firing module furthest past its threshold (-1 if none) and
        its probability. `embeddings` alone (`z` None) routes through a set whose gates all read identity."""
        batch = _batch_size(z, embeddings)
        if not self._banks:
            return torch.full((batch,), -1, dtype=torch.long), torch.zeros(batch)
        logits, margins = self.scores(z, embeddings)
        best_margin, best = margins.max(0)
        fired = best_margin > self.offset
        score = torch.sigmoid(logits.gather(0, best[None])[0])
        return torch.where(fired, best, torch.full_like(best, -1)), torch.where(fired, score, torch.zeros_like(score))

    @torch.no_grad()
    def firing(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[modules, batch] probabilities and firings; zero and False where stage 1 did not pick the module."""
        logits, margins = self.scores(z)
        picked = margins > float("-inf")
        return torch.where(picked, torch.sigmoid(logits), torch.zeros_like(logits)), margins > self.offset

    @torch.no_grad()
    def scores(
        self, z: torch.Tensor | None, embeddings: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[modules, batch] logits and margins over each module's threshold (in logits); -inf margins where stage
        1 did not pick the module. `embeddings`: `z`'s identity embeddings, when the caller has them already (with
        `z` None for a set whose gates all read identity)."""
        batch = _batch_size(z, embeddings)
        logits = torch.zeros(len(self), batch)
        margins = torch.full((len(self), batch), float("-inf"))
        offset = 0
        for bank in self._banks.values():
            rows = slice(offset, offset + len(bank))
            offset += len(bank)
            if bank.input_kind == "identity":
                if embeddings is None:
                    embeddings = self.backbone.identity_embeddings(_tokens(z))
                if 0 < self.candidates < len(bank):
                    logits[rows], margins[rows] = self._two_stage(bank, embeddings)
                    continue
                x = embeddings
            else:
                x = _tokens(z).float()
            logits[rows] = bank.logits(x).cpu()
            margins[rows] = logits[rows] - bank.threshold_logits.cpu()[:, None]
            if bank.input_kind == "identity" and self.min_cosine > float("-inf"):
                far = bank.cosines(x).T.cpu() <= self.min_cosine
                margins[rows] = margins[rows].masked_fill(far, float("-inf"))
        return logits, margins

    @torch.no_grad()
    def prototype_cosines(self, z: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """[modules, batch] cosine of each image's identity embedding to each module's prototype; +inf for modules
        without one (token gates), which no cosine floor holds back."""
        cosines = torch.full((len(self), z.shape[0]), float("inf"))
        offset = 0
        for bank in self._banks.values():
            if bank.input_kind == "identity":
                embeddings = self.backbone.identity_embeddings(z) if embeddings is None else embeddings
                cosines[offset : offset + len(bank)] = bank.cosines(embeddings).T.cpu()
            offset += len(bank)
        return cosines

    @torch.no_grad()
    def module_scores(self, module_id: str, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch] margin over its threshold (in logits) of one identity module, whatever stage 1 picks, and the
        cosine to its prototype: what it would do to each image if stage 1 offered it."""
        key = self._bank_of[module_id]
        bank = self._banks[key]
        if bank.input_kind != "identity":
            raise ValueError(f"module {module_id} reads visual tokens, not identity embeddings")
        row = self._ids[key].index(module_id)
        margins = bank.row_logits(embeddings, row) - bank.threshold_logits[row]
        return margins.cpu(), (embeddings @ bank.prototypes[row]).cpu()

    def reads_identity(self, module_id: str) -> bool:
        """Does this module's gate read identity embeddings (rather than visual tokens)?"""
        return self._bank_of[module_id][0] == "identity"

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor, system_fpr: float, batch: int = 256, scale: str = "logit") -> float:
        """Hold every module back on one shared scale so that any module fires on at most `system_fpr` of `z`.

        `z`: visual tokens of benign photos (people no module is for). The share that matters at N modules is
        the system's, 1-(1-p)^N for independent gates, not one module's p. `scale` "logit": one margin added to
        every threshold, returned (logits, >= 0). "cosine": on top of each module's own threshold, a floor on the
        cosine between the image's identity embedding and the module's prototype, returned (-inf: none needed).
        """
        if scale not in CALIBRATION_SCALES:
            raise ValueError(f"calibration scale {scale!r} unknown; choose one of {', '.join(CALIBRATION_SCALES)}")
        self.offset, self.min_cosine = 0.0, float("-inf")
        if not self._banks or len(z) == 0:
            return 0.0 if scale == "logit" else self.min_cosine
        embedded = self._calibration_embeddings(z, batch)
        if scale == "logit":
            best = torch.cat(
                [
                    self.scores(z[i : i + batch], None if embedded is None else embedded[i : i + batch])[1]
                    .max(0)
                    .values
                    for i in range(0, len(z), batch)
                ]
            )
            self.offset = max(0.0, higher_quantile(best, 1 - system_fpr))
            return self.offset
        self.min_cosine = higher_quantile(self._nearest_firing(z, embedded, batch), 1 - system_fpr)
        return self.min_cosine

    def _nearest_firing(self, z: torch.Tensor, embedded: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Per photo of `z`, the cosine of the nearest prototype among the modules that fire on it unheld (the floor
        must lie above it; -inf where none fires).

        After modules only joined, since the last call on the same set, only the photos whose stage 1 they enter
        are routed again: for any other photo the candidates, and so the modules that fire, are the same. A bank
        scored whole (the exhaustive gate) adds only the joined module's own column. That keeps one more
        activation of a held set to a few photos' routing, not the whole benign set's.
        """
        held, k = self._held, self.candidates
        identity_only = embedded is not None and all(b.input_kind == "identity" for b in self._banks.values())
        if held is None or held.z is not z or held.candidates != k or not identity_only or embedded is None:
            held = CosineCalibration(z, k, torch.full((len(z),), float("-inf")), {})
            changed = torch.ones(len(z), dtype=torch.bool)
        else:
            changed = torch.zeros(len(z), dtype=torch.bool)
            for module_id in held.joined:
                key = self._bank_of[module_id]
                bank, row = self._banks[key], self._ids[key].index(module_id)
                if not 0 < k < len(bank):
                    # Scored whole, the bank's modules fire independently: the joined one can only add its own
                    # firings, one column, where re-routing would score every module on every photo again.
                    margins, cosines = self.module_scores(module_id, embedded)
                    held.nearest = torch.maximum(held.nearest, cosines.masked_fill(margins <= 0, float("-inf")))
                    continue
                kth = held.kth.get(key, torch.full((len(z),), float("-inf")))
                changed |= (embedded @ bank.prototypes[row]).cpu() >= kth
        held.joined = []
        self._held = held
        stale = torch.nonzero(changed).flatten()
        for rows in stale.split(batch) if len(stale) else ():  # an empty tensor still splits into one empty chunk
            chunk, embeddings = z[rows], None if embedded is None else embedded[rows]
            fires = self.scores(chunk, embeddings)[1] > 0
            cosines = torch.where(fires, self.prototype_cosines(chunk, embeddings), float("-inf"))
            held.nearest[rows] = cosines.max(0).values
            for key, bank in self._banks.items():
                kth = held.kth.setdefault(key, torch.full((len(z),), float("-inf")))
                if embeddings is not None and bank.input_kind == "identity" and 0 < k < len(bank):
                    kth[rows] = bank.nearest(embeddings, k)[0][:, -1].cpu()
                else:
                    kth[rows] = float("-inf")
        return held.nearest

    @torch.no_grad()
    def _calibration_embeddings(self, z: torch.Tensor, batch: int) -> torch.Tensor | None:
        """`z`'s identity embeddings (kept while `z` is the set calibrated on), or None when no module gates on
        them."""
        if not any(bank.input_kind == "identity" for bank in self._banks.values()):
            return None
        if self._calibration_set is None or self._calibration_set[0] is not z:
            embeddings = [self.backbone.identity_embeddings(z[i : i + batch]) for i in range(0, len(z), batch)]
            self._calibration_set = (z, torch.cat(embeddings))
        return self._calibration_set[1]

    @torch.no_grad()
    def recalled(self, z: torch.Tensor, expected: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Per image: does stage 1 keep module `expected[i]` (a `module_ids` index) among its `k` (default: the
        gate's) candidates?"""
        k = self.candidates if k is None else k
        kept = torch.ones(len(z), dtype=torch.bool)
        offset, embeddings = 0, None
        for bank in self._banks.values():
            inside = (expected >= offset) & (expected < offset + len(bank))
            if bank.input_kind == "identity" and 0 < k < len(bank) and bool(inside.any()):
                embeddings = self.backbone.identity_embeddings(z) if embeddings is None else embeddings
                candidates = bank.candidates(embeddings, k).cpu() + offset
                kept &= ~inside | (candidates == expected[:, None]).any(1)
            offset += len(bank)
        return kept

    def _two_stage(self, bank: StackedDiscriminators, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[bank size, batch] logits and margins; logits 0 and margins -inf for modules stage 1 did not pick."""
        logits = torch.zeros(len(bank), embeddings.shape[0])
        margins = torch.full_like(logits, float("-inf"))
        cosine, selected = bank.nearest(embeddings, self.candidates)
        if not bool((cosine > self.min_cosine).any()):
            # Most answers are of people no module covers: under a floor none of their candidates can fire, and
            # stage 2 would read k weight sets (62% of the gate's time at 10,000, docs/scale.md) to say so.
            return logits, margins
        picked = bank.logits_selected(embeddings, selected).cpu()
        selected = selected.cpu()
        logits.scatter_(0, selected.T, picked.T)
        over = picked - bank.threshold_logits_at(selected).cpu()
        if self.min_cosine > float("-inf"):  # stage 1's own cosines: the exhaustive path reads the same matmul
            over = over.masked_fill(cosine.cpu() <= self.min_cosine, float("-inf"))
        return logits, margins.scatter_(0, selected.T, over.T)

    @torch.no_grad()
    def answer(
        self, images: Sequence[Image.Image | None], questions: Sequence[str], max_new_tokens: int = 24
    ) -> list[GateAnswer]:
        bb = self.backbone
        rows = self.dispatch(images, questions, None, lambda b, o: bb.generate(b, o, max_new_tokens=max_new_tokens))
        return [GateAnswer(text, mid, score) for text, mid, score in rows]

    @torch.no_grad()
    def dispatch(
        self,
        images: Sequence[Image.Image | None],
        questions: Sequence[str],
        answers: Sequence[str] | None,
        call: Callable[[VLMBatch, VisualOverride | None], list[T]],
    ) -> list[tuple[T, str | None, float]]:
        """Run `call(batch, override)` once per group of rows routed alike (and once for the rows without an image).

        Returns per input row: the call's result, the claiming module's id (the image's when both gates claim the
        row) and the image gate's score. Rows no gate claims get the exact batch and no override, as the reference
        model would (the visual tokens the gate computed are reused, bit for bit what the tower would compute again).
        """
        named = [self.named(q) for q in questions]
        results: list[tuple[T, str | None, float] | None] = [None] * len(questions)
        photos = {i: im for i, im in enumerate(images) if im is not None}
        pictured, unpictured = list(photos), [i for i, im in enumerate(images) if im is None]

        def subset(rows: list[int]) -> tuple[list[str], list[str] | None, list[str | None]]:
            return (
                [questions[i] for i in rows],
                None if answers is None else [answers[i] for i in rows],
                [named[i] for i in rows],
            )

        if pictured:
            done = self._dispatch_pictured(list(photos.values()), *subset(pictured), call)
            for i, row in zip(pictured, done, strict=True):
                results[i] = row
        if unpictured:
            for i, row in zip(unpictured, self._dispatch_text(*subset(unpictured), call), strict=True):
                results[i] = row
        return [r for r in results if r is not None]

    def _dispatch_text(
        self,
        questions: Sequence[str],
        answers: Sequence[str] | None,
        named: Sequence[str | None],
        call: Callable[[VLMBatch, VisualOverride | None], list[T]],
    ) -> list[tuple[T, str | None, float]]:
        results: list[tuple[T, str | None, float] | None] = [None] * len(questions)
        for mid in dict.fromkeys(named):
            rows = [i for i, m in enumerate(named) if m == mid]
            prefixes = [self._prefix(mid)] * len(rows)
            batch = self.backbone.make_text_batch(
                [questions[r] for r in rows],
                None if answers is None else [answers[r] for r in rows],
                slots=[p.slots if p is not None else 0 for p in prefixes],
            ).to(self.backbone.device)
            with prefixed(self.backbone, prefixes):
                out = call(batch, None)
            for r, value in zip(rows, out, strict=True):
                results[r] = (value, mid, 0.0)
        return [r for r in results if r is not None]

    def _dispatch_pictured(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str] | None,
        named: Sequence[str | None],
        call: Callable[[VLMBatch, VisualOverride | None], list[T]],
    ) -> list[tuple[T, str | None, float]]:
        bb = self.backbone
        inputs = bb.pixel_values(list(images))
        batch = bb.make_batch(inputs, questions, answers).to(bb.device)
        if not self._banks:
            return [(r, None, 0.0) for r in call(batch, None)]
        z = bb.visual_tokens(inputs)
        chosen, scores = self.route(z)
        if bool((chosen < 0).all()) and not any(named):
            with bb.reusing_visual_tokens(z, inputs):  # the tower ran for the gate: once per request is enough
                untouched = call(batch, None)
            return [(r, None, float(s)) for r, s in zip(untouched, scores, strict=True)]
        module_ids = self.module_ids
        results: list[tuple[T, str | None, float] | None] = [None] * len(images)
        routes = list(zip(chosen.tolist(), named, strict=True))  # (image module index or -1, named module or None)
        for module_index, text_mid in dict.fromkeys(routes):
            rows = [i for i, route in enumerate(routes) if route == (module_index, text_mid)]
            sub_inputs = (
                {k: v[rows] for k, v in inputs.items()}
                if "image_grid_thw" not in inputs
                else bb.pixel_values([images[r] for r in rows])
            )
            prefix = self._prefix(text_mid)
            sub = bb.make_batch(
                sub_inputs,
                [questions[r] for r in rows],
                None if answers is None else [answers[r] for r in rows],
                slots=None if prefix is None else [prefix.slots] * len(rows),
            ).to(bb.device)
            mid = module_ids[module_index] if module_index >= 0 else None
            with prefixed(bb, [prefix] * len(rows)):
                out = call(sub, None if mid is None else self._override(mid, sub))
            for r, value in zip(rows, out, strict=True):
                results[r] = (value, mid or text_mid, float(scores[r]))
        return [r for r in results if r is not None]

    def _prefix(self, module_id: str | None) -> RefusalPrefix | None:
        if module_id is None:
            return None
        prefix = self.rewrite(module_id).prefix
        if prefix is None:  # fail closed: the question names a subject this module cannot refuse
            raise IncompatibleModuleError(f"module {module_id} has aliases but no refusal prefix")
        return prefix

    def _override(self, module_id: str, batch: VLMBatch) -> VisualOverride:
        cfg = self._configs[module_id]
        generator = torch.Generator().manual_seed(cfg.seed)
        return encoder_rewrite(self.encoder(module_id), self.backbone, cfg, batch, generator)


def _tokens(z: torch.Tensor | None) -> torch.Tensor:
    if z is None:
        raise ValueError("a gate that reads visual tokens cannot route identity embeddings alone")
    return z


def _batch_size(z: torch.Tensor | None, embeddings: torch.Tensor | None) -> int:
    if z is not None:
        return int(z.shape[0])
    if embeddings is None:
        raise ValueError("route visual tokens, identity embeddings or both")
    return int(embeddings.shape[0])


def higher_quantile(values: torch.Tensor, q: float) -> float:
    """The smallest value at or above the `q` quantile (one of `values`; infinities kept)."""
    ordered = values.sort().values
    return float(ordered[min(len(ordered) - 1, math.ceil(q * (len(ordered) - 1)))])
