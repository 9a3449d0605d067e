"""The one interface CAGUL needs from a vision-language model, whatever its family.

Extension point: a new VLM family subclasses `Backbone`, implements the few family-specific
hooks (where the projected visual tokens come from, where the attention layers are, how a
prompt is laid out) and registers itself in `unlearning.backbones.registry`.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unlearning.augment import AugmentConfig, augment
from unlearning.data import validate_image
from unlearning.errors import IncompatibleModuleError, InvalidInputError
from unlearning.freeze import freeze
from unlearning.identity.config import GATE_TOKENS

VisualOverride = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class VLMBatch:
    """Model inputs for a batch of (image, question[, answer]) samples."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None  # None: a text-only batch (no image in any row)
    labels: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> VLMBatch:
        return VLMBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=None if self.pixel_values is None else self.pixel_values.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            extra={k: v.to(device) for k, v in self.extra.items()},
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        images = {} if self.pixel_values is None else {"pixel_values": self.pixel_values}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **images, **self.extra}


class Backbone(ABC):
    """A frozen VLM seen through projected visual tokens, attention scores and overridable generation."""

    family: str = ""
    prompt_template: str = "USER: <image>\n{question} ASSISTANT:"
    text_prompt_template: str = "USER: {question} ASSISTANT:"

    def __init__(self, model: Any, processor: Any, path: Path | None = None) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.path = path
        self._fingerprint: str | None = None
        # The shared identity encoder trained on this model's visual tokens, where one is stored beside it.
        self.identity: Any = None
        self.identity_digest: str | None = None
        # Which visual tokens the gate reads (`GATE_TOKENS`): those the identity encoder was trained on.
        self.gate_tokens = "projected"

    # ---- family-specific hooks -------------------------------------------------------------
    @classmethod
    def load_processor(cls, path: Path) -> Any:
        """The checkpoint's processor, from local files only."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, local_files_only=True)

    @abstractmethod
    def projector(self) -> torch.nn.Module:
        """The module whose output is the sequence of projected visual tokens."""

    @abstractmethod
    def attention_layers(self) -> Sequence[torch.nn.Module]:
        """The language model's self-attention modules, in depth order."""

    @abstractmethod
    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Pixel tensors (and family extras) for a list of images."""

    @abstractmethod
    def _to_batched(self, projected: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Projector output in the family's layout -> [batch, n_visual, hidden]."""

    @abstractmethod
    def _from_batched(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[batch, n_visual, hidden] -> projector output layout (the inverse of `_to_batched`)."""

    # ---- shape facts --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def gate_shapes(self) -> dict[str, tuple[int, int]]:
        """(n_tokens, hidden size) of each kind of visual tokens this model can give the gate.

        Extension point: a family whose projector takes the tower's tokens one per visual token adds "tower".
        """
        return {"projected": (self.n_visual_tokens, self.hidden_size)}

    @contextlib.contextmanager
    def reading_gate_tokens(self, tokens: str) -> Iterator[None]:
        """Within the block, `visual_tokens` gives `tokens` (`GATE_TOKENS`): how an identity encoder is trained."""
        previous = self.gate_tokens
        self._read_gate_tokens(tokens)
        try:
            yield
        finally:
            self.gate_tokens = previous

    def _read_gate_tokens(self, tokens: str) -> None:
        if tokens not in GATE_TOKENS:
            raise InvalidInputError(f"gate tokens must be one of {GATE_TOKENS}")
        if tokens not in self.gate_shapes():
            raise IncompatibleModuleError(f"a {self.family} model cannot give its gate {tokens} visual tokens")
        self.gate_tokens = tokens

    @property
    def num_layers(self) -> int:
        return len(self.attention_layers())

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    # ---- inputs ---------------------------------------------------------------------------
    def check_image(self, image: Image.Image) -> Image.Image:
        return validate_image(image)

    def prompt_ids(self, question: str, n_image: int | None = None) -> list[int]:
        """Prompt token ids with `n_image` image placeholders (default: the fixed count, `n_visual_tokens`)."""
        if not question.strip():
            raise InvalidInputError("question is empty: send a non-empty question")
        text = self.prompt_template.format(question=question.strip())
        n_image = self.n_visual_tokens if n_image is None else n_image
        ids: list[int] = []
        before, _, after = text.partition("<image>")
        if self.tokenizer.bos_token_id is not None:
            ids.append(self.tokenizer.bos_token_id)
        ids += self.tokenizer.encode(before, add_special_tokens=False)
        ids += [self.image_token_id] * n_image
        ids += self.tokenizer.encode(after, add_special_tokens=False)
        return ids

    def text_prompt_ids(self, question: str) -> list[int]:
        """Prompt token ids of a question asked with no image."""
        if not question.strip():
            raise InvalidInputError("question is empty: send a non-empty question")
        bos = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        text = self.text_prompt_template.format(question=question.strip())
        return bos + self.tokenizer.encode(text, add_special_tokens=False)

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer.encode(" " + answer.strip(), add_special_tokens=False) + [self.tokenizer.eos_token_id]

    @property
    @abstractmethod
    def n_visual_tokens(self) -> int:
        """Number of visual tokens per image the gate reads (discriminator and identity encoder input); for a
        fixed-resolution family also the number one image becomes in the language model's input."""

    @property
    def variable_token_count(self) -> bool:
        """Whether images of different sizes become different numbers of visual tokens (dynamic resolution)."""
        return False

    def image_token_counts(self, image_inputs: dict[str, torch.Tensor]) -> list[int]:
        """Visual tokens each processed image becomes in the language model's input.

        Extension point: a dynamic-resolution family counts them from its image inputs.
        """
        return [self.n_visual_tokens] * int(image_inputs["pixel_values"].shape[0])

    def visual_counts(self, batch: VLMBatch) -> torch.Tensor:
        """Visual tokens of each row of a batch (one image a row): [batch]."""
        return (batch.input_ids == self.image_token_id).sum(1).cpu()

    def pixel_values(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return self._image_inputs([self.check_image(im) for im in images])

    def make_batch(
        self,
        image_inputs: dict[str, torch.Tensor],
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        pad_left: bool | None = None,
        slots: Sequence[int] | None = None,
    ) -> VLMBatch:
        """Tokenise prompts (and answers, masked into labels) around already-processed images; `slots`: per row,
        how many text-prefix placeholders end the prompt (see `unlearning.cagul.prefix`)."""
        counts = self.image_token_counts(image_inputs)
        if len(counts) != len(questions):
            raise InvalidInputError(f"{len(counts)} images for {len(questions)} questions: send one image a question")
        prompts = [self.prompt_ids(q, n) for q, n in zip(questions, counts, strict=True)]
        ids, mask, labels = self._packed(self._with_slots(prompts, slots), answers, pad_left)
        pixel = image_inputs["pixel_values"]
        extra = {k: v for k, v in image_inputs.items() if k != "pixel_values"}
        return VLMBatch(ids, mask, pixel, labels, extra)

    def make_text_batch(
        self,
        questions: Sequence[str],
        answers: Sequence[str] | None = None,
        pad_left: bool | None = None,
        slots: Sequence[int] | None = None,
    ) -> VLMBatch:
        """Tokenise questions asked with no image (and answers, masked into labels); `slots` as in `make_batch`."""
        prompts = self._with_slots([self.text_prompt_ids(q) for q in questions], slots)
        ids, mask, labels = self._packed(prompts, answers, pad_left)
        return VLMBatch(ids, mask, None, labels)

    @property
    def slot_token_id(self) -> int:
        """The placeholder a text prefix's vectors replace: the unknown token, which no encoded question holds."""
        return int(self.tokenizer.unk_token_id)

    def _with_slots(self, prompts: list[list[int]], slots: Sequence[int] | None) -> list[list[int]]:
        """Each prompt with its row's count of slot tokens at its end, where the answer starts; rows with none
        unchanged."""
        if slots is None:
            return prompts
        return [p + [self.slot_token_id] * k for p, k in zip(prompts, slots, strict=True)]

    def _packed(
        self, prompts: list[list[int]], answers: Sequence[str] | None, pad_left: bool | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prompt (+ answer) ids padded into one batch: ids, attention mask, labels (answers only, or None)."""
        targets = [self.answer_ids(a) for a in answers] if answers is not None else [[] for _ in prompts]
        pad_left = answers is None if pad_left is None else pad_left
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p) + len(t) for p, t in zip(prompts, targets, strict=True))
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        labels = torch.full((len(prompts), width), -100, dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
            seq = p + t
            start = width - len(seq) if pad_left else 0
            ids[i, start : start + len(seq)] = torch.tensor(seq)
            mask[i, start : start + len(seq)] = 1
            if t:
                labels[i, start + len(p) : start + len(seq)] = torch.tensor(t)
        return ids, mask, labels if answers is not None else None

    # ---- the three operations CAGUL needs -------------------------------------------------
    @contextlib.contextmanager
    def override_visual_tokens(self, override: VisualOverride | torch.Tensor | None) -> Iterator[None]:
        """Within the block, the projected visual tokens are replaced (tensor) or rewritten (callable)."""
        if override is None:
            yield
            return

        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            batch = self._to_batched(output, -1)
            new = override(batch) if callable(override) else override.to(batch.dtype)
            if new.shape != batch.shape:
                raise InvalidInputError(f"visual override has shape {tuple(new.shape)}, expected {tuple(batch.shape)}")
            return self._from_batched(new, output)

        handle = self.projector().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def reusing_visual_tokens(self, tokens: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> Iterator[None]:
        """Within the block, the model takes `tokens` (what `visual_tokens(image_inputs)` returned) instead of
        running its vision tower on those inputs again.

        Extension point: a family that cannot skip its tower keeps this default and runs it twice.
        """
        yield

    @torch.no_grad()
    def visual_tokens(self, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The visual tokens Z_v the gate reads of every image: [n_images, n_visual, gate hidden]; the projector's
        output, or its input where the gate reads the tower's tokens (`gate_tokens`)."""
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            captured.append(output if self.gate_tokens == "projected" else inputs[0])

        handle = self.projector().register_forward_hook(hook)
        try:
            self._run_vision({k: v.to(self.device) for k, v in image_inputs.items()})
        finally:
            handle.remove()
        return self._to_batched(captured[0], int(image_inputs["pixel_values"].shape[0]))

    def _run_vision(self, image_inputs: dict[str, torch.Tensor]) -> None:
        self.model.get_image_features(pixel_values=image_inputs["pixel_values"])

    def tokens_of(self, images: Sequence[Image.Image], batch: int = 64) -> torch.Tensor:
        """The gate's visual tokens of many images, in batches: [n_images, n_visual, hidden] fp32 on the CPU."""
        parts = [self.visual_tokens(self.pixel_values(images[i : i + batch])) for i in range(0, len(images), batch)]
        return torch.cat(parts).float().cpu()

    def augmented_inputs(
        self, images: Sequence[Image.Image], config: AugmentConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Image inputs of randomly changed views (crop, rotation, flip, colour, noise) of `images`."""
        checked = [self.check_image(im) for im in images]
        views: list[Image.Image | None] = [None] * len(checked)
        for size in dict.fromkeys(im.size for im in checked):  # one augment call per image size, order kept
            rows = [i for i, im in enumerate(checked) if im.size == size]
            raw = torch.stack([torch.from_numpy(np.asarray(checked[i], dtype=np.float32) / 255.0) for i in rows])
            changed = augment(raw.permute(0, 3, 1, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), config, generator)
            arrays = (changed.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            for i, a in zip(rows, arrays, strict=True):
                views[i] = Image.fromarray(a)
        return self._image_inputs([v for v in views if v is not None])

    def logits(
        self, batch: VLMBatch, override: VisualOverride | torch.Tensor | None = None, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """Next-token logits of the whole sequence, or of its last `logits_to_keep` positions."""
        with self.override_visual_tokens(override):
            return self.model(**batch.model_inputs(), use_cache=False, logits_to_keep=logits_to_keep).logits

    def attention_scores(
        self,
        batch: VLMBatch,
        layers: Sequence[int] | None = None,
        override: VisualOverride | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention from the question's text tokens to each visual token, averaged over heads,
        question tokens and `layers`: [batch, n_visual]. Only those rows and columns are kept. With images of
        different token counts, rows are padded at the end with zeros (see `visual_counts`)."""
        all_layers = self.attention_layers()
        chosen = list(range(len(all_layers))) if layers is None else [i % len(all_layers) for i in layers]
        image_cols = batch.input_ids == self.image_token_id  # [B, T]
        last_image = torch.where(image_cols, torch.arange(image_cols.shape[1], device=image_cols.device), -1).amax(1)
        positions = torch.arange(image_cols.shape[1], device=image_cols.device)[None, :]
        question_rows = (positions > last_image[:, None]) & batch.attention_mask.bool()
        if batch.labels is not None:
            question_rows &= batch.labels == -100
        totals: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            weights = output[1]
            if weights is None:
                raise RuntimeError("attention weights unavailable: load the model with attn_implementation='eager'")
            per_token = weights.mean(1)  # heads -> [B, T, T]
            rows = (per_token * question_rows[:, :, None]).sum(1) / question_rows.sum(1, keepdim=True).clamp(min=1)
            totals.append(_per_row(rows, image_cols))

        handles = [all_layers[i].register_forward_hook(hook) for i in chosen]
        try:
            with torch.no_grad(), self.eager_attention(), self.override_visual_tokens(override):
                self.model(**batch.model_inputs(), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(totals).float().mean(0)

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Within the block the model runs eager attention, the only kind that returns its weights (sdpa gives None);
        every other pass keeps the memory-efficient kind the model was loaded with."""
        before = self.model.config._attn_implementation
        if before == "eager":
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    @torch.no_grad()
    def generate(
        self, batch: VLMBatch, override: VisualOverride | torch.Tensor | None = None, max_new_tokens: int = 24
    ) -> list[str]:
        """Greedy answers for a left-padded prompt batch."""
        with self.override_visual_tokens(override):
            out = self.model.generate(
                **batch.model_inputs(),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out[:, batch.input_ids.shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # ---- identity --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 over the base model's class and parameters (and its identity encoder): what a module is bound to."""
        if self._fingerprint is None:
            digest = parameters_sha256(self.model)
            if self.identity_digest is not None:
                digest = hashlib.sha256(f"{digest}:{self.identity_digest}".encode()).hexdigest()
            self._fingerprint = digest
        return self._fingerprint

    def attach_identity(self, encoder: torch.nn.Module, digest: str) -> None:
        """Use `encoder` for identity embeddings, and the gate reads the visual tokens it reads; modules trained from
        now on are bound to it too."""
        self._read_gate_tokens(str(getattr(encoder, "tokens", "projected")))
        self.identity = encoder.to(self.device)
        self.identity_digest = digest
        self._fingerprint = None

    @property
    def identity_dim(self) -> int:
        return int(self._identity_encoder().dim)

    @torch.no_grad()
    def identity_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit identity embeddings [n_images, dim] of the gate's visual tokens [n_images, n_visual, hidden]."""
        return self._identity_encoder()(tokens)  # type: ignore[no-any-return]

    def _identity_encoder(self) -> Any:
        if self.identity is None:
            raise InvalidInputError(
                f"the base model at {self.path} has no identity encoder: build the world again (`lethe world build`) "
                "or train modules with discriminator_input 'flatten'"
            )
        return self.identity

    def freeze(self) -> None:
        freeze(self.model)


def _per_row(values: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """values[i, chosen[i]] per row, zero-padded at the end to the longest row: [batch, max chosen]."""
    counts = chosen.sum(1)
    if bool((counts == counts[0]).all()):
        return values[chosen].view(values.shape[0], -1)
    return torch.nn.utils.rnn.pad_sequence([v[c] for v, c in zip(values, chosen, strict=True)], batch_first=True)


def parameters_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
