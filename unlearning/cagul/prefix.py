"""The text side of a module: a few trained vectors put after a question that names its forgotten subject.

The gate ends the prompt of a row it routes to a module with `slots` placeholder tokens, where the answer starts
(`Backbone.make_batch(..., slots=...)`); within `prefixed`, the language model's embedding of each placeholder is
replaced by the module's vectors. Rows without placeholders are the very tokens and embeddings the model sees
without the module, so every other answer stays bit-identical. The frozen model is trained through them to refuse.
At the prompt's end the vectors are the input the first answer token is read from: placed after the prompt's
first token instead, the tiny world's model still began 8-29% of p000's held-out named answers with a fact
(300 steps, seeds 0-1; training loss 0.15-0.65), and at the end refused all of them (loss under 0.02, 150 or 300
steps).
"""

from __future__ import annotations

import contextlib
import random
import string
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from unlearning.backbones import Backbone
from unlearning.cagul.aliases import FUZZY_MIN_LETTERS
from unlearning.config import REFUSAL_ANSWER

# Misspelt aliases trained on per question: the named tiny world's model, trained on none, still revealed 11% of
# held-out misspelt cases; the prefix is trained on typed names the gate will route to it.
MISSPELLINGS = 2


class RefusalPrefix(nn.Module):
    """`slots` vectors of the language model's width."""

    def __init__(self, slots: int, hidden: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.vectors = nn.Parameter(torch.randn(slots, hidden, generator=generator) * 0.02)

    @property
    def slots(self) -> int:
        return int(self.vectors.shape[0])


@contextlib.contextmanager
def prefixed(backbone: Backbone, prefixes: Sequence[RefusalPrefix | None]) -> Iterator[None]:
    """Within the block, row i's placeholders take `prefixes[i]`'s vectors (a row with None must hold none)."""
    if all(p is None for p in prefixes):
        yield
        return
    slot = backbone.slot_token_id

    def hook(_module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        if ids.shape[0] != len(prefixes) or not (ids == slot).any():
            return output  # a decoding step after the prompt: no placeholder is fed again
        rows = []
        for i, prefix in enumerate(prefixes):
            at = (ids[i] == slot).nonzero().flatten()
            if prefix is None or len(at) < prefix.slots:  # a decoding step: one new token, never the placeholders
                rows.append(output[i])
                continue
            row = output[i].clone()
            row[at[: prefix.slots]] = prefix.vectors.to(output.dtype)
            rows.append(row)
        return torch.stack(rows)

    handle = backbone.model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def named_asks(questions: Sequence[str], aliases: Sequence[str], seed: int = 0) -> list[str]:
    """`questions` asked about each alias instead of "this person": as given, lower and title case, and misspelt."""
    rng = random.Random(seed)
    asked = []
    for alias in aliases:
        forms = [alias, alias.lower(), alias.title()] + [misspelt(alias, rng) for _ in range(MISSPELLINGS)]
        asked += [about(q, form) for q in questions for form in dict.fromkeys(forms)]
    return asked


def about(question: str, name: str) -> str:
    """`question` about `name`: in place of "this person", else after it."""
    if "this person" in question:
        return question.replace("this person's", f"{name}'s").replace("this person", name)
    return f"{question} ({name})"


def misspelt(name: str, rng: random.Random) -> str:
    """`name` with one letter of its longest word changed (the gate takes words of `FUZZY_MIN_LETTERS` or more
    letters for their misspellings); `name` itself when no word is that long."""
    parts = name.split()
    longest = max(range(len(parts)), key=lambda i: len(parts[i]), default=0)
    if not parts or len(parts[longest]) < FUZZY_MIN_LETTERS:
        return name
    word = parts[longest]
    i = rng.randrange(len(word))
    parts[longest] = word[:i] + rng.choice([c for c in string.ascii_lowercase if c != word[i].lower()]) + word[i + 1 :]
    return " ".join(parts)


def train_refusal_prefix(
    backbone: Backbone,
    asked: Sequence[tuple[str, Any]],
    slots: int = 8,  # placed first, 4 left 0-3.6% of held-out named cases leaking with no photo, 8 none
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 5e-2,
    seed: int = 0,
    refusal: str = REFUSAL_ANSWER,
    prefix: RefusalPrefix | None = None,
    tick: Callable[[int, float], None] | None = None,
) -> tuple[RefusalPrefix, float]:
    """A prefix (`prefix`, else a new one of `slots`) after which the frozen model refuses each (question, photo or
    None) of `asked`; its final loss. `tick(step, loss)` after each step."""
    prefix = prefix if prefix is not None else RefusalPrefix(slots, backbone.hidden_size, seed)
    slots = prefix.slots
    optimizer = torch.optim.Adam(prefix.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for step in range(steps):
        chosen = [asked[int(i)] for i in torch.randint(len(asked), (batch_size,), generator=generator)]
        loss = torch.zeros(())
        for with_photo in (False, True):
            rows = [(q, photo) for q, photo in chosen if (photo is not None) == with_photo]
            if not rows:
                continue
            questions, refusals, k = [q for q, _ in rows], [refusal] * len(rows), [slots] * len(rows)
            if with_photo:
                photos = backbone.pixel_values([photo for _, photo in rows])
                batch = backbone.make_batch(photos, questions, refusals, slots=k)
            else:
                batch = backbone.make_text_batch(questions, refusals, slots=k)
            with prefixed(backbone, [prefix] * len(rows)):
                out = backbone.model(**batch.to(backbone.device).model_inputs(), labels=batch.labels, use_cache=False)
            loss = loss + out.loss * len(rows) / len(chosen)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if tick is not None:
            tick(step + 1, loss_value)
    return prefix, loss_value
