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


def shape_key(d: Discriminator) -> tuple[str, int, int, int, int]:
    """Discriminators stack together only when these agree."""
    return (d.input_kind, d.n_tokens, d.hidden_size, d.fc1.in_features, d.fc1.out_features)


class StackedDiscriminators:
    """M discriminators of one shape as stacked weights: [batch] -> [M, batch] probabilities in one op.

    Rows are added and removed one at a time (a removed row takes the last row's place), into storage that
    grows by a quarter when full: a change of the active set copies one module's weights, not the set's.
    """

    def __init__(self, discriminators: list[Discriminator], device: str | torch.device = "cpu") -> None:
        first = discriminators[0]
        self.key = shape_key(first)
        self.input_kind = first.input_kind
        self.count = 0
        _, _, hidden, in_features, width = self.key
        pooled = first.input_kind == "attention_pool"
        identity = first.input_kind == "identity"
        shapes = {
            "w1": (in_features, width),
            "b1": (width,),
            "w2": (width,),
            "b2": (),
            "thresholds": (),
            **({"prototypes": (in_features,)} if identity else {}),
            **({"queries": (hidden,)} if pooled else {}),
        }
        self._storage = {
            name: torch.zeros(len(discriminators), *shape, device=device) for name, shape in shapes.items()
        }
        for d in discriminators:
            self.add(d)

    def __len__(self) -> int:
        return self.count

    @property
    def w1(self) -> torch.Tensor:
        return self._storage["w1"][: self.count]

    @property
    def b1(self) -> torch.Tensor:
        return self._storage["b1"][: self.count]

    @property
    def w2(self) -> torch.Tensor:
        return self._storage["w2"][: self.count]

    @property
    def b2(self) -> torch.Tensor:
        return self._storage["b2"][: self.count]

    @property
    def thresholds(self) -> torch.Tensor:
        return self._storage["thresholds"][: self.count]

    @property
    def prototypes(self) -> torch.Tensor:
        return self._storage["prototypes"][: self.count]

    @property
    def queries(self) -> torch.Tensor:
        return self._storage["queries"][: self.count]

    @torch.no_grad()
    def add(self, d: Discriminator) -> int:
        """Append one discriminator's weights; returns its row."""
        if shape_key(d) != self.key:
            raise ValueError("stacked discriminators must share input kind and shape")
        if self.count == len(self._storage["w1"]):  # a quarter more: at 10,000 rows doubling held 6,000 empty
            extra = max(1, len(self._storage["w1"]) // 4)
            self._storage = {k: torch.cat([v, v.new_zeros(extra, *v.shape[1:])]) for k, v in self._storage.items()}
        row = self.count
        values: dict[str, torch.Tensor | None] = {
            "w1": d.fc1.weight.T,
            "b1": d.fc1.bias,
            "w2": d.fc2.weight[0],
            "b2": d.fc2.bias[0],
            "thresholds": d.threshold,
            "prototypes": getattr(d, "prototype", None),
            "queries": d.pool_query,
        }
        for name, tensor in self._storage.items():
            value = values[name]
            assert value is not None  # storage exists only for what this input kind has
            tensor[row] = value
        self.count += 1
        return row

    def remove(self, row: int) -> None:
        """Drop one row; the last row moves into its place."""
        last = self.count - 1
        for tensor in self._storage.values():
            tensor[row] = tensor[last]
        self.count = last

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """[batch, ...] tokens (or identity embeddings) -> [M, batch] probabilities."""
        return torch.sigmoid(self.logits(z))

    @torch.no_grad()
    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """[batch, ...] tokens (or identity embeddings) -> [M, batch] logits."""
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

    @property
    def threshold_logits(self) -> torch.Tensor:
        return self.threshold_logits_at(slice(None))

    def threshold_logits_at(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """`threshold_logits` of `rows` alone: stage 2 needs its k candidates', not all N."""
        return torch.logit(self.thresholds[rows], eps=1e-7)

    @torch.no_grad()
    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[batch, M] cosine of each image's (unit) identity embedding to each module's prototype."""
        return embeddings @ self.prototypes.T

    @torch.no_grad()
    def nearest(self, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: per image, the `k` modules whose prototypes lie nearest its identity embedding, and their cosines:
        ([batch, k] cosines, [batch, k] rows)."""
        similarity = self.cosines(embeddings)
        values, indices = similarity.topk(min(k, similarity.shape[1]), dim=1)
        return values, indices

    def candidates(self, embeddings: torch.Tensor, k: int) -> torch.Tensor:
        """Stage 1's [batch, k] rows alone (`nearest`)."""
        return self.nearest(embeddings, k)[1]

    @torch.no_grad()
    def forward_selected(self, embeddings: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Stage 2: probabilities [batch, k] of the selected modules [batch, k] only (k weight sets per image)."""
        return torch.sigmoid(self.logits_selected(embeddings, selected))

    @torch.no_grad()
    def logits_selected(self, embeddings: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("bd,bkdh->bkh", embeddings, self.w1[selected]) + self.b1[selected]
        return torch.einsum("bkh,bkh->bk", F.gelu(h), self.w2[selected]) + self.b2[selected]

    @torch.no_grad()
    def row_logits(self, embeddings: torch.Tensor, row: int) -> torch.Tensor:
        """[batch] logits of one identity discriminator (one row of the stack) on any number of images."""
        h = F.gelu(embeddings @ self.w1[row] + self.b1[row])
        return h @ self.w2[row] + self.b2[row]

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = F.gelu(h + self.b1[:, None, :])
        return torch.einsum("mbh,mh->mb", h, self.w2) + self.b2[:, None]
