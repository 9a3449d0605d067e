"""All runtime configuration in one pydantic-settings class (environment variables prefixed LETHE_)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, computed_field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keys.tokens import TOKEN_FORMAT, split_token

# The CAGUL parameters a deletion request may set, and their bounds: a few times each default (steps 400,
# discriminator_steps 600, batch_size 16, encoder_hidden 256, ...) so a request can ask for more effort but never
# for unbounded cost. Anything else (what the model says, what the gate fires on) is the operator's.
DEFAULT_REQUEST_PARAM_BOUNDS: dict[str, tuple[int | float, int | float]] = {
    "steps": (1, 2000),
    "discriminator_steps": (1, 2000),
    "batch_size": (1, 64),
    "encoder_hidden": (1, 1024),
    "discriminator_hidden": (1, 512),
    "positive_augmentations": (1, 128),
    "negative_augmentations": (0, 8),
    "hard_negatives": (0, 400),
    "hard_negative_augmentations": (0, 16),
    "lr": (1e-5, 0.1),
    "discriminator_lr": (1e-5, 0.1),
    "weight_decay": (0.0, 1.0),
    "warmup_ratio": (0.0, 0.5),
    "grad_clip": (0.01, 100.0),
    "retain_ce_weight": (0.0, 10.0),
    "kl_weight": (0.0, 10.0),
    "seed": (0, 2**31 - 1),
}


class Settings(BaseSettings):
    # A malformed secret is named in errors, never echoed.
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Field(default=Path(".lethe"), description="Where worlds, models and module artifacts live.")
    world: str = Field(
        default="default",
        description="Reference world preset: 'default', 'tiny' or 'scale'.",
    )
    model_path: Path | None = Field(
        default=None, description="A local VLM checkpoint directory to use instead of the reference world's model."
    )
    device: str = Field(default="cpu", description="torch device for training and serving, e.g. 'cuda'.")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights of the served model: 'auto' is bfloat16 on a GPU and float32 on the CPU (whose "
        "half-precision kernels are slow). Modules are bound to the weights, so changing it retrains them.",
    )
    retain_dir: Path | None = Field(
        default=None,
        validate_default=True,
        description="The operator's retain set folder (layout in README; `lethe retain init DIR` writes one). "
        "Required with LETHE_MODEL_PATH; default: the reference world's retain people.",
    )
    train_micro_batch: int = Field(
        default=0,
        ge=0,
        description="Samples per forward/backward pass of an encoder step, gradients accumulated over the step "
        "(the same loss and gradient): bounds the activations kept for backward. 0: the whole batch at once.",
    )
    train_max_answer_tokens: int = Field(
        default=32,
        ge=1,
        description="Answer tokens a training sample keeps (longer answers are cut): bounds the sequence, and so "
        "the memory, of every encoder step.",
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite in the data dir (the embedded default)."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker URL; default: kombu's SQLAlchemy transport on SQLite in the data dir."
    )
    artifact_root: Path | None = Field(
        default=None, description="Where module artifacts go; default: DATA_DIR/modules."
    )

    master_key: SecretStr | None = Field(
        default=None,
        description="Fernet key wrapping each request's data key; never stored beside the data. "
        "Default: the key in LETHE_MASTER_KEY_FILE.",
    )
    master_key_file: Path | None = Field(
        default=None,
        description="File holding the master key, created on first start, refused inside DATA_DIR; "
        "default: $XDG_CONFIG_HOME/lethe/master.key (~/.config/lethe/master.key).",
    )
    signing_key: SecretStr | None = Field(
        default=None, description="Ed25519 private key (base64, raw 32 bytes) signing erasure certificates."
    )
    certificate_validity_s: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="How long an erasure certificate or signed status answer holds after issue; then fetch a new one.",
    )
    callback_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing callbacks; default: DATA_DIR/secrets/callback.key."
    )
    callback_max_attempts: int = Field(default=8, description="Deliveries of one callback before giving up.")
    callback_backoff_s: float = Field(default=2.0, description="First retry delay; doubles on each failure.")
    callback_allow_private: bool = Field(
        default=False, description="Allow callback URLs on loopback/private addresses (tests, single-host setups)."
    )
    bootstrap_admin_key: SecretStr | None = Field(
        default=None, description="On a database without keys, the first admin key (else one is generated and printed)."
    )
    max_images: int = Field(default=16, description="Most images one deletion request may carry.")
    max_image_bytes: int = Field(default=4 * 2**20, description="Largest accepted image file.")
    max_image_pixels: int = Field(default=4096 * 4096, description="Largest accepted image (width x height).")
    max_qa_pairs: int = Field(default=200, description="Most QA pairs one deletion request may carry.")
    max_text_chars: int = Field(default=1000, description="Longest accepted question, answer or subject.")
    max_body_bytes: int = Field(
        default=8 * 2**20,
        gt=0,
        description="Largest request body on any route but filing a deletion request (whose limit follows from "
        "max_images and max_image_bytes); counted as it arrives, chunked uploads included.",
    )
    request_param_bounds: dict[str, tuple[int | float, int | float]] = Field(
        default_factory=lambda: dict(DEFAULT_REQUEST_PARAM_BOUNDS),
        description="The method parameters a request may set, each to [min, max] (JSON object); any other "
        "parameter is refused. Whole-number bounds take whole numbers only.",
    )
    max_probe_questions: int = Field(
        default=16,
        ge=0,
        description="Most identity-probing questions a request may give (params.probe_questions; each at most "
        "max_text_chars long); they are trained towards the refusal, never an answer. 0: requests cannot set them.",
    )
    refusal_answer: str | None = Field(
        default=None,
        description="What a module trains the model to answer about its subject: a refusal the served model already "
        "says. Operator configuration, never request input; default: the reference world's refusal.",
    )

    verify_max_leak: float = Field(
        default=0.05,
        description="Highest leak rate, as an upper confidence bound, on held-out cases the reference model reveals.",
    )
    verify_confidence: float = Field(default=0.95, description="One-sided confidence of the verification bounds.")
    verify_min_cases: int = Field(
        default=60, description="Held-out cases the reference must reveal to decide; fewer: nothing to forget."
    )
    verify_target_cases: int = Field(default=120, description="Held-out cases generated per verification.")
    verify_min_gate_tpr: float = Field(
        default=0.9, description="Lowest share (lower bound) of held-out photos the module's gate must fire on."
    )
    verify_min_retain_identical: float = Field(
        default=0.98, description="Lowest share of canary answers (never-trained people) that must stay identical."
    )
    verify_canaries: int = Field(default=96, description="Canary questions asked per verification.")
    verify_max_benign_fire: float = Field(
        default=0.01,
        description="Highest share of the benign set (people no request filed) a new gate may fire on.",
    )
    verify_max_new_tokens: int = Field(default=48, description="Answers are generated to their end, at most this long.")
    verify_min_photos_to_hold_out: int = Field(
        default=3, description="With at least this many photos, one is kept out of training and verified on."
    )
    verify_max_attempts: int = Field(
        default=3, description="Training attempts per request, each stronger than the last, before it is rejected."
    )
    train_time_limit_s: int = Field(
        default=3600,
        ge=1,
        description="Time budget of one delivery of a training job (every attempt's training and verification), "
        "checked between steps inside the worker: past it the job fails.",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="Deliveries of one training job (a worker starting it) before it fails instead of being sent "
        "again: a request that kills its worker (e.g. out of memory) is not re-sent forever.",
    )
    heartbeat_stale_s: float = Field(
        default=120, description="An in-flight job silent this long (no heartbeat, not re-sent) is sent again."
    )
    reconcile_interval_s: float = Field(default=15, description="How often the API looks for silent jobs.")
    progress_event_interval_s: float = Field(
        default=5,
        ge=1,
        description="Least time between two stored progress events of a job (each phase's first and last step are "
        "always stored); cancellation is still read every second.",
    )
    vqa_max_batch: int = Field(default=16, description="Most /v1/vqa requests answered in one forward pass (1: none).")
    vqa_batch_wait_s: float = Field(default=0.005, description="How long a request waits for others to batch with.")
    # Off by default, as measured. Scale world (`lethe bench scale`, 2026-12-02): held back on the prototype cosine
    # to 1% the set keeps TPR 1.0 at 10 and 100 modules (false fires 11% -> 0.9%, 64% -> 2.1%) but 0.85 at 1,000
    # (0.97 unheld, where every benign photo fires). Default world, people filed one after another as the README's
    # walkthrough does (`bench/many_requests.py`, 2026-12-03): at 1% 3 of the first 10 ended rejected_verification
    # (their own gates held below 0.9 of their held-out photos, and they would have released 40-196 stored probes of
    # earlier subjects), where unheld all 22 went active. One cosine floor serves every module, and the benign photos
    # nearest some prototype set it (look-alikes of world people, people drawn outside it): with the 7 that went
    # active it stood at 0.756 under their probes' lowest own cosine, 0.80; each rejected gate raised it past its own.
    gate_system_fpr: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Budget of the share of benign photos (the reference world's benign set) on which any active "
        "module fires: the set is held back (LETHE_GATE_CALIBRATION) until it meets it. 0: per-module thresholds only.",
    )
    # Measured side by side at a 1% budget (`lethe bench scale`, scale world, 1,000 modules): TPR 0.85 on the cosine,
    # 0.22 with one logit margin (at 100: 1.0 and 0.98, at 10 both 1.0).
    gate_calibration: Literal["logit", "cosine"] = Field(
        default="cosine",
        description="How the set meets LETHE_GATE_SYSTEM_FPR: 'logit' raises every module's threshold by one margin; "
        "'cosine' keeps each module's threshold and fires it only on images whose identity embedding lies nearer its "
        "prototype than one calibrated cosine.",
    )
    gate_candidates: int = Field(
        default=32,
        ge=0,
        description="Modules whose prototypes lie nearest an image's identity are the only ones whose "
        "discriminators run (two-stage gate); 0 runs every module's (exhaustive).",
    )
    engine_sync_interval_s: float = Field(
        default=0.5, description="How often the server reads the registry's active set (off the request path)."
    )
    engine_integrity_interval_s: float = Field(
        default=1.0, description="How often a background pass re-verifies served module artifacts."
    )
    engine_integrity_batch: int = Field(default=32, description="Module artifacts re-verified per integrity pass.")
    engine_encoder_cache: int = Field(
        default=256, description="Module encoders kept in memory (least recently used dropped first)."
    )

    @field_validator("model_path", "retain_dir", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        # Compose passes `${LETHE_MODEL_PATH:-}` through when unset: empty means the reference world's model,
        # not a checkpoint (or a retain set) in the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("retain_dir")
    @classmethod
    def _retain_with_checkpoint(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # A real checkpoint knows no reference world: its retain data, canaries and benign photos are the operator's.
        if value is None and info.data.get("model_path") is not None:
            raise ValueError(
                "LETHE_MODEL_PATH is set, so LETHE_RETAIN_DIR must name the operator's retain set folder "
                "(`lethe retain init DIR` writes an example from the reference world)"
            )
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_model_dtype(self) -> str:
        """The served model's dtype name: 'auto' is bfloat16 on a GPU, float32 elsewhere."""
        if self.model_dtype != "auto":
            return self.model_dtype
        return "bfloat16" if self.device.startswith("cuda") else "float32"

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _admin_key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked with the settings, so a bad key stops a start before minutes of world building, not after.
        if value is not None and split_token(value.get_secret_value()) is None:
            raise ValueError(f"LETHE_BOOTSTRAP_ADMIN_KEY must look like {TOKEN_FORMAT} (e.g. from `lethe keys create`)")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_forget_request_bytes(self) -> int:
        """Largest body filing a deletion request: every image at its limit, base64 or multipart, plus the text."""
        return self.max_images * self.max_image_bytes * 2 + 1_000_000

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lethe.db').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.data_dir / "modules"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_master_key_file(self) -> Path:
        config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        return self.master_key_file or Path(config_home) / "lethe" / "master.key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
