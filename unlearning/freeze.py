"""Freezing a torch module: how base models and encoders are served, stored and trained around."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """`module` in eval mode with no parameter taking gradients; returned for chaining."""
    module.eval()
    module.requires_grad_(False)
    return module
