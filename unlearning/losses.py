"""Answer-token losses shared by every unlearning method (forget losses, retain losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _answer_mask(labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("a batch without answers has no answer tokens")
    return labels[:, 1:] != -100


def answer_nll(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token NLL over answer tokens, per sample: [batch]."""
    mask = _answer_mask(labels)
    assert labels is not None
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:].clamp(min=0), reduction="none")
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


def answer_kl(
    ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None, tokens: int | None = None
) -> torch.Tensor:
    """KL(reference || current) of the next-token distributions, averaged over answer positions (or summed and
    divided by `tokens`, the answer positions of the whole batch a micro-batch belongs to)."""
    mask = _answer_mask(labels).float()
    ref = F.log_softmax(ref_logits[:, :-1].float(), -1)
    new = F.log_softmax(logits[:, :-1].float(), -1)
    kl = (ref.exp() * (ref - new)).sum(-1)
    return (kl * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else max(1, tokens))


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation: pushes the answer's likelihood below the reference's, bounded."""
    return -2 / beta * F.logsigmoid(beta * (nll - ref_nll)).mean()


def answer_token_stats(
    logits: torch.Tensor, labels: torch.Tensor
) -> list[tuple[list[float], list[float], list[float]]]:
    """Per sample, at each answer token: log p(token), and mean and std of log p over the vocabulary."""
    mask = _answer_mask(labels)
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    token = logp.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sd = ((p * logp.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
    return [(token[i][mask[i]].tolist(), mu[i][mask[i]].tolist(), sd[i][mask[i]].tolist()) for i in range(len(mask))]
