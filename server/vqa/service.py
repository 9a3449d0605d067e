"""Answer one question, about one image or none, through the inference engine."""

from __future__ import annotations

from core.errors import InvalidRequestError
from core.settings import Settings
from server.images import check_image, decode_base64
from server.inference import InferenceEngine
from server.vqa.schemas import VQAIn, VQAOut


class VQAService:
    def __init__(self, settings: Settings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine

    def answer(self, body: VQAIn) -> VQAOut:
        if not body.question.strip():
            raise InvalidRequestError("question is blank")
        if len(body.question) > self.settings.max_text_chars:
            raise InvalidRequestError(f"question is longer than {self.settings.max_text_chars} characters")
        image = None if body.image is None else check_image(decode_base64(body.image, 0), 0, self.settings).image
        answer, version = self.engine.answer(image, body.question)
        return VQAOut(answer=answer, adapter_set_version=version)
