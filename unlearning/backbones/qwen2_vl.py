"""Qwen2-VL family (ViT with patch merger + Qwen2 language model with multimodal RoPE), at dynamic resolution.

An image becomes as many visual tokens as its size gives (`image_grid_thw`: (t, h, w) patches, merged
`merge_size` x `merge_size`). The language model and the token encoder (token-wise) take them all; the gate
(discriminator, identity encoder) reads one fixed-size view of them: the merged token grid average-pooled to
`GATE_GRID` x `GATE_GRID` regions, so one module serves every image size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from unlearning.backbones.base import Backbone, VisualOverride, VLMBatch

# Side of the pooled token grid the gate reads at dynamic resolution. Pooling over padding-with-a-mask: the gate's
# inputs (a flattened-token discriminator, the identity encoder) need a fixed size, and a pooled grid keeps where
# on the image each region lies, which a masked pool over a variable token set throws away. Measured on a small
# Qwen2-VL, photos of 9 to 24 tokens (bench/qwen_gate_input.py): one person's held-out views against others', AUC
# 0.999 pooled and flattened, 0.945 masked attention pool, 0.970 masked mean pool.
GATE_GRID = 4


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without a video processor (its video backend needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name, argument):  # type: ignore[no-untyped-def]
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


class Qwen2VLBackbone(Backbone):
    family = "qwen2_vl"
    prompt_template = (
        "<|im_start|>user\n<|vision_start|><image><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    text_prompt_template = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    def __init__(self, model: Any, processor: Any, path: Any = None) -> None:
        super().__init__(model, processor, path)
        self._call_counts: list[int] = []  # visual tokens per image of the forward pass under way

    @classmethod
    def load_processor(cls, path):  # type: ignore[no-untyped-def]
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)

    def projector(self) -> torch.nn.Module:
        return self.model.model.visual.merger

    def attention_layers(self) -> Sequence[torch.nn.Module]:
        return [layer.self_attn for layer in self.model.model.language_model.layers]

    @property
    def pixel_range(self) -> tuple[int, int]:
        """The processor's (min_pixels, max_pixels): images are resized to a pixel count in this range."""
        size = self.processor.image_processor.size
        return int(size["shortest_edge"]), int(size["longest_edge"])

    @property
    def dynamic(self) -> bool:
        """Whether images of different sizes become different numbers of visual tokens."""
        low, high = self.pixel_range
        return low != high

    @property
    def variable_token_count(self) -> bool:
        return self.dynamic

    @property
    def n_visual_tokens(self) -> int:
        if self.dynamic:
            return GATE_GRID * GATE_GRID
        ip = self.processor.image_processor
        return (int(self.pixel_range[0] ** 0.5) // ip.patch_size // ip.merge_size) ** 2

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, columns) of merged visual tokens an image of this size becomes."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = self.processor.image_processor
        factor = ip.patch_size * ip.merge_size
        low, high = self.pixel_range
        h, w = smart_resize(height, width, factor=factor, min_pixels=low, max_pixels=high)
        return h // factor, w // factor

    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        out = self.processor.image_processor(list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def image_token_counts(self, image_inputs: dict[str, torch.Tensor]) -> list[int]:
        merge = self.processor.image_processor.merge_size
        return [int(n) for n in image_inputs["image_grid_thw"].prod(-1) // merge**2]

    def make_batch(self, image_inputs, questions, answers=None, pad_left=None, slots=None) -> VLMBatch:  # type: ignore[no-untyped-def]
        batch = super().make_batch(image_inputs, questions, answers, pad_left, slots)
        batch.extra["mm_token_type_ids"] = (batch.input_ids == self.image_token_id).int()
        return batch

    def make_text_batch(self, questions, answers=None, pad_left=None, slots=None) -> VLMBatch:  # type: ignore[no-untyped-def]
        batch = super().make_text_batch(questions, answers, pad_left, slots)
        batch.extra["mm_token_type_ids"] = torch.zeros_like(batch.input_ids, dtype=torch.int)
        return batch

    @torch.no_grad()
    def visual_tokens(self, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The gate's view of every image: [n_images, n_visual_tokens, hidden] (pooled at dynamic resolution)."""
        return self.visual_tokens_with_grad(image_inputs)

    def visual_tokens_with_grad(self, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`visual_tokens` differentiable through the vision encoder, for pre-training it."""
        captured: list[torch.Tensor] = []
        handle = self.projector().register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self._run_vision({k: v.to(self.device) for k, v in image_inputs.items()})
        finally:
            handle.remove()
        grids = image_inputs["image_grid_thw"]
        merge = self.processor.image_processor.merge_size
        parts = captured[0].split(self.image_token_counts(image_inputs))
        views = [self._gate_view(z, int(g[1]) // merge, int(g[2]) // merge) for z, g in zip(parts, grids, strict=True)]
        return torch.stack(views)

    def _gate_view(self, tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """One image's merged tokens (row-major over its grid) -> the gate's fixed-size token set."""
        if not self.dynamic:
            return tokens
        grid = tokens.reshape(-1, rows, cols, tokens.shape[-1]).mean(0)  # frames of one image: averaged
        pooled = F.adaptive_avg_pool2d(grid.permute(2, 0, 1), GATE_GRID)  # a small grid is repeated up, not padded
        return pooled.flatten(1).T

    def _run_vision(self, image_inputs: dict[str, torch.Tensor]) -> None:
        self.model.get_image_features(
            pixel_values=image_inputs["pixel_values"], image_grid_thw=image_inputs["image_grid_thw"]
        )

    @contextlib.contextmanager
    def override_visual_tokens(self, override: VisualOverride | torch.Tensor | None) -> Iterator[None]:
        if override is None:
            yield
            return
        merge = self.processor.image_processor.merge_size

        def grids(_module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
            self._call_counts = [int(n) for n in grid.prod(-1) // merge**2]

        handle = self.model.model.visual.register_forward_pre_hook(grids, with_kwargs=True)
        try:
            with super().override_visual_tokens(override):
                yield
        finally:
            handle.remove()

    def _to_batched(self, projected: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The merger's flat [all tokens, hidden] -> [images, most tokens, hidden], zero-padded at the end."""
        return torch.nn.utils.rnn.pad_sequence(list(projected.split(self._call_counts)), batch_first=True)

    def _from_batched(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:n] for t, n in zip(tokens, self._call_counts, strict=True)]).reshape(like.shape)
