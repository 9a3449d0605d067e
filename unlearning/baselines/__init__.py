"""Fine-tuning unlearning baselines (GA, GD, KL, IDK, NPO) as LoRA adapters on the frozen reference model."""

from unlearning.baselines.config import BASELINE_METHODS, BaselineConfig
from unlearning.baselines.trainer import BaselineReport, BaselineTrainer

__all__ = ["BASELINE_METHODS", "BaselineConfig", "BaselineReport", "BaselineTrainer"]
