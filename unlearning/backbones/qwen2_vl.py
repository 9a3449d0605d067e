"""Qwen2-VL family (ViT with patch merger + Qwen2 language model with multimodal RoPE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

from unlearning.backbones.base import Backbone, VLMBatch
from unlearning.errors import InvalidInputError


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
    def n_visual_tokens(self) -> int:
        ip = self.processor.image_processor
        side = int(ip.size["shortest_edge"] ** 0.5) if "shortest_edge" in ip.size else int(ip.min_pixels**0.5)
        return (side // ip.patch_size // ip.merge_size) ** 2

    def _image_inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        out = self.processor.image_processor(list(images), return_tensors="pt")
        n = int(out["image_grid_thw"][0].prod()) // self.processor.image_processor.merge_size**2
        if n != self.n_visual_tokens or not bool((out["image_grid_thw"] == out["image_grid_thw"][0]).all()):
            raise InvalidInputError("images must be resized to the processor's fixed size (min_pixels == max_pixels)")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def make_batch(self, image_inputs, questions, answers=None, pad_left=None) -> VLMBatch:  # type: ignore[no-untyped-def]
        batch = super().make_batch(image_inputs, questions, answers, pad_left)
        batch.extra["mm_token_type_ids"] = (batch.input_ids == self.image_token_id).int()
        return batch

    def _run_vision(self, image_inputs: dict[str, torch.Tensor]) -> None:
        self.model.get_image_features(
            pixel_values=image_inputs["pixel_values"], image_grid_thw=image_inputs["image_grid_thw"]
        )

    def _to_batched(self, projected: torch.Tensor, batch_size: int) -> torch.Tensor:
        return projected.reshape(-1, self.n_visual_tokens, projected.shape[-1])

    def _from_batched(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return tokens.reshape(like.shape)
