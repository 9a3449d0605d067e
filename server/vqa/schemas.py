"""Request and response bodies of /v1/vqa."""

from __future__ import annotations

from pydantic import BaseModel, Field

from server.schemas import StrictModel


class VQAIn(StrictModel):
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Optional: a base64-encoded PNG or JPEG file. Without one the question is answered from its text "
        "alone; a question that names a person an active module forgets (one of the `aliases` filed with the "
        "request) is refused with a photo or without one.",
    )
    question: str = Field(min_length=1, description="A question, about the image when one is sent.")


class VQAOut(BaseModel):
    answer: str
    adapter_set_version: int = Field(description="The version of the active module set this answer was served with.")
