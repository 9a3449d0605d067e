"""Request and response bodies of /v1/vqa."""

from __future__ import annotations

from pydantic import BaseModel, Field

from server.schemas import StrictModel


class VQAIn(StrictModel):
    image: str = Field(min_length=1, description="A base64-encoded PNG or JPEG file.")
    question: str = Field(min_length=1, description="A question about the image.")


class VQAOut(BaseModel):
    answer: str
    adapter_set_version: int = Field(description="The version of the active module set this answer was served with.")
