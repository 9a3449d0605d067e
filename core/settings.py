"""All runtime configuration in one pydantic-settings class (environment variables prefixed LETHE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".lethe"), description="Where worlds, models and module artifacts live.")
    world: str = Field(default="default", description="Reference world preset: 'default' or 'tiny'.")
    model_path: Path | None = Field(
        default=None, description="A local VLM checkpoint directory to use instead of the reference world's model."
    )
    device: str = Field(default="cpu", description="torch device for training and serving, e.g. 'cuda'.")


def get_settings() -> Settings:
    return Settings()
