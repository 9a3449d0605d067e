"""A module's text prefix: the frozen model refuses a question naming its subject, and a row without the prefix
is computed exactly as without the module."""

import torch

from unlearning.backbones import Backbone
from unlearning.cagul.prefix import RefusalPrefix, prefixed, train_refusal_prefix
from unlearning.config import REFUSAL_ANSWER
from unlearning.world import World
from unlearning.world.names import named_questions


def test_rows_without_placeholders_are_bit_identical_beside_a_prefixed_row(backbone: Backbone, tiny_world: World):
    questions = ["where does poro rodulu live?", "who does elta geromi work for?"]
    prefix = RefusalPrefix(4, backbone.hidden_size, seed=1)
    alone = backbone.make_text_batch(questions[1:], pad_left=False)
    mixed = backbone.make_text_batch(questions, slots=[4, 0], pad_left=False)
    width = alone.input_ids.shape[1]
    assert torch.equal(mixed.input_ids[1, :width], alone.input_ids[0])  # the very tokens it has without the module
    assert int((mixed.input_ids[0] == backbone.slot_token_id).sum()) == 4
    with torch.no_grad():
        plain = backbone.model(**mixed.model_inputs()).logits
        with prefixed(backbone, [prefix, None]):
            got = backbone.model(**mixed.model_inputs()).logits
    assert torch.equal(got[1], plain[1]) and not torch.equal(got[0], plain[0])


def test_a_trained_prefix_makes_the_frozen_model_refuse_named_questions_it_never_saw(
    backbone: Backbone, tiny_world: World
):
    person = tiny_world.person("p000")
    before = [p.detach().clone() for p in backbone.model.parameters()]
    prefix, loss = train_refusal_prefix(backbone, [(q.question, None) for q in named_questions(person)], steps=150)
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.model.parameters(), strict=True))
    held = [q.question for q in named_questions(person, heldout=True)]
    with prefixed(backbone, [prefix] * len(held)):
        answers = backbone.generate(backbone.make_text_batch(held, slots=[prefix.slots] * len(held)))
    assert sum(a == REFUSAL_ANSWER for a in answers) / len(answers) >= 0.9, (loss, answers[:5])
