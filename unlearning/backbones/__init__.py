"""VLM families behind one interface: projected visual tokens, attention scores, overridable generation."""

from unlearning.backbones.base import Backbone, VisualOverride, VLMBatch, parameters_sha256
from unlearning.backbones.registry import BACKBONES, load_backbone

__all__ = ["BACKBONES", "Backbone", "VLMBatch", "VisualOverride", "load_backbone", "parameters_sha256"]
