"""LLaVA family (CLIP or SigLIP vision tower + projector + Llama/Qwen2/... language model)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from unlearning.augment import AugmentConfig, augment
from unlearning.backbones.base import Backbone


class LlavaBackbone(Backbone):
    family = "llava"

    def projector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    def attention_layers(self) -> Sequence[torch.nn.Module]:
        return [layer.self_attn for layer in self.model.model.language_model.layers]

    @property
    def n_visual_tokens(self) -> int:
        vision = self.model.config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        if self.model.config.vision_feature_select_strategy == "full":
            n += 1
        return n

    def gate_shapes(self) -> dict[str, tuple[int, int]]:
        # The projector maps each of the tower's patch tokens to one visual token: the same count, the tower's width.
        return {
            **super().gate_shapes(),
            "tower": (self.n_visual_tokens, int(self.model.config.vision_config.hidden_size)),
        }

    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]}

    def augmented_inputs(
        self, images: Sequence[Image.Image], config: AugmentConfig, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        # CLIP-style inputs are plain normalised pixels, so augment them directly rather than via PIL.
        pixels = self._image_inputs([self.check_image(im) for im in images])["pixel_values"]
        ip = self.processor.image_processor
        return {"pixel_values": augment(pixels, ip.image_mean, ip.image_std, config, generator)}

    def _to_batched(self, projected: torch.Tensor, batch_size: int) -> torch.Tensor:
        return projected

    def _from_batched(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tokens

    @contextlib.contextmanager
    def reusing_visual_tokens(self, tokens: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> Iterator[None]:
        inner = self.model.model
        pixels = image_inputs["pixel_values"]
        # The tower's tokens go through the projector as the model's own pass takes them: the same output, bit for bit.
        projected = tokens if self.gate_tokens == "projected" else inner.multi_modal_projector(tokens)

        def features(pixel_values: torch.Tensor, **kwargs: Any) -> Any:
            if pixel_values.shape != pixels.shape or not torch.equal(pixel_values.to(pixels.device), pixels):
                return type(inner).get_image_features(inner, pixel_values=pixel_values, **kwargs)
            # A list, as LLaVA's own get_image_features returns (the annotation says tensor).
            return BaseModelOutputWithPooling(pooler_output=list(projected.to(pixel_values.device)))  # type: ignore[arg-type]

        inner.get_image_features = features
        try:
            yield
        finally:
            del inner.get_image_features
