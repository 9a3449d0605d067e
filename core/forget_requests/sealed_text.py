"""The plaintext a request's `qa_ciphertext` seals: its QA pairs and the subject's aliases, one JSON document."""

from __future__ import annotations

import json
from typing import Any


def pack_text(qa_pairs: list[dict[str, Any]], aliases: list[str]) -> bytes:
    """The request's text uploads as one document, sealed and purged together."""
    return json.dumps({"qa_pairs": qa_pairs, "aliases": aliases}).encode()


def unpack_text(plaintext: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """(QA pairs, aliases) of a sealed document; requests filed before aliases sealed a bare list of QA pairs."""
    document = json.loads(plaintext)
    if isinstance(document, list):
        return document, []
    return list(document["qa_pairs"]), [str(a) for a in document.get("aliases", [])]
