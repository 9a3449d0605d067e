"""Serving with the active module set: the set loaded one adapter at a time, the request batcher, the engine."""

from server.inference.engine import InferenceEngine

__all__ = ["InferenceEngine"]
