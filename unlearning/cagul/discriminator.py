"""Discriminator D(Z_v) -> p: does an image show a forget-set subject? Many evaluate as one tensor op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """MLP over the projected visual tokens (flattened, attention- or mean-pooled) or over their identity embedding.

    With input kind "identity" the input is the backbone's identity embedding [batch, identity_dim], not tokens,
    and `prototype` (the unit mean embedding of the subject's photos) places the module in the gate's index.
    """

    threshold: torch.Tensor
    prototype: torch.Tensor

    def __init__(
        self, n_tokens: int, hidden_size: int, width: int, input_kind: str = "flatten", identity_dim: int = 0
    ) -> None:
        super().__init__()
        if input_kind == "identity" and identity_dim <= 0:
            raise ValueError("an identity discriminator needs the identity embedding's size")
        self.input_kind = input_kind
        self.n_tokens = n_tokens
        self.hidden_size = hidden_size
        in_features = {"flatten": n_tokens * hidden_size, "identity": identity_dim}.get(input_kind, hidden_size)
        self.pool_query = nn.Parameter(torch.zeros(hidden_size)) if input_kind == "attention_pool" else None
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, 1)
        # Fixed after training: the threshold calibrated on held-out negatives.
        self.register_buffer("threshold", torch.tensor(0.5))
        if input_kind == "identity":
            self.register_buffer("prototype", torch.zeros(identity_dim))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "identity":
            return z
        z = F.layer_norm(z, z.shape[-1:])
        if self.input_kind == "flatten":
            return z.flatten(1)
        if self.input_kind == "mean_pool":
            return z.mean(1)
        assert self.pool_query is not None
        weights = torch.softmax(z @ self.pool_query, dim=1)
        return (weights[..., None] * z).sum(1)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.features(z)))).squeeze(-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


class StackedDiscriminators(nn.Module):
    """M discriminators of one shape as stacked weights: [batch] -> [M, batch] probabilities in one op."""

    thresholds: torch.Tensor
    prototypes: torch.Tensor

    def __init__(self, discriminators: list[Discriminator]) -> None:
        super().__init__()
        first = discriminators[0]
        if any(
            (d.input_kind, d.n_tokens, d.hidden_size, d.fc1.in_features, d.fc1.out_features)
            != (first.input_kind, first.n_tokens, first.hidden_size, first.fc1.in_features, first.fc1.out_features)
            for d in discriminators
        ):
            raise ValueError("stacked discriminators must share input kind and shape")
        self.input_kind = first.input_kind
        self.w1 = nn.Parameter(torch.stack([d.fc1.weight.T for d in discriminators]), requires_grad=False)
        self.b1 = nn.Parameter(torch.stack([d.fc1.bias for d in discriminators]), requires_grad=False)
        self.w2 = nn.Parameter(torch.stack([d.fc2.weight[0] for d in discriminators]), requires_grad=False)
        self.b2 = nn.Parameter(torch.stack([d.fc2.bias[0] for d in discriminators]), requires_grad=False)
        self.register_buffer("thresholds", torch.stack([d.threshold for d in discriminators]))
        if self.input_kind == "identity":
            self.register_buffer("prototypes", torch.stack([d.prototype for d in discriminators]))
        if self.input_kind == "attention_pool":
            queries = [d.pool_query for d in discriminators]
            self.queries = nn.Parameter(torch.stack([q for q in queries if q is not None]), requires_grad=False)

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[batch, ...] tokens (or identity embeddings) -> [M, batch] probabilities."""
        if self.input_kind == "identity":
            return self._head(torch.einsum("bd,mdh->mbh", z, self.w1))
        z = F.layer_norm(z, z.shape[-1:])
        if self.input_kind == "flatten":
            h = torch.einsum("bi,mih->mbh", z.flatten(1), self.w1)
        elif self.input_kind == "mean_pool":
            h = torch.einsum("bd,mdh->mbh", z.mean(1), self.w1)
        else:
            weights = torch.softmax(torch.einsum("bnd,md->mbn", z, self.queries), dim=-1)
            h = torch.einsum("mbd,mdh->mbh", torch.einsum("mbn,bnd->mbd", weights, z), self.w1)
        return self._head(h)

    @torch.no_grad()
    def candidates(self, embeddings: torch.Tensor, k: int) -> torch.Tensor:
        """Stage 1: per image, the `k` modules whose prototypes lie nearest its identity embedding: [batch, k]."""
        similarity = embeddings @ self.prototypes.T
        return similarity.topk(min(k, similarity.shape[1]), dim=1).indices

    @torch.no_grad()
    def forward_selected(self, embeddings: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Stage 2: probabilities [batch, k] of the selected modules [batch, k] only (k weight sets per image)."""
        h = torch.einsum("bd,bkdh->bkh", embeddings, self.w1[selected]) + self.b1[selected]
        return torch.sigmoid(torch.einsum("bkh,bkh->bk", F.gelu(h), self.w2[selected]) + self.b2[selected])

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = F.gelu(h + self.b1[:, None, :])
        return torch.sigmoid(torch.einsum("mbh,mh->mb", h, self.w2) + self.b2[:, None])
