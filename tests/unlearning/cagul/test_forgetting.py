"""CAGUL end to end on the tiny reference world: real LLaVA, real training, measured acceptance figures.

One module forgetting one person (leak before and after, everyone else untouched) is asserted through the command
that reports it, `lethe demo`, in tests/lethe/test_cli.py: the same run, trained once per suite."""

from __future__ import annotations

import pytest
import torch

from unlearning.artifacts import load_module, save_module
from unlearning.backbones import Backbone, parameters_sha256
from unlearning.cagul import CagulConfig, CagulGate, CagulModule, CagulTrainer
from unlearning.config import REFUSAL_ANSWER
from unlearning.evaluation.drivers.forgetting import identical_share, leak_splits
from unlearning.evaluation.metrics.gate import gate_rates
from unlearning.evaluation.metrics.leakage import leak_rate
from unlearning.world import World
from unlearning.world.names import named_questions
from unlearning.world.requests import forget_data, world_retain_set

pytestmark = pytest.mark.slow


def test_only_the_module_trains_and_the_base_model_is_unchanged(backbone: Backbone, tiny_world: World):
    before = parameters_sha256(backbone.model)
    trainer = CagulTrainer(backbone, CagulConfig(steps=3, discriminator_steps=3, positive_augmentations=2))
    module, report = trainer.train(
        forget_data(tiny_world, ["p001"]), world_retain_set(tiny_world, exclude=["p001"], lookalikes=10)
    )
    assert parameters_sha256(backbone.model) == before
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert report.trainable_params == module.num_parameters() < sum(p.numel() for p in backbone.model.parameters())
    assert module.encoder.fc2.weight.abs().sum() > 0  # the encoder did move


@pytest.fixture(scope="module")
def three_modules(backbone: Backbone, tiny_world: World, tmp_path_factory) -> CagulGate:
    """Three people forgotten by three separate modules, saved to disk and loaded back, active together; p000's
    request gives their names too."""
    subjects = ["p000", "p002", "p003"]
    root = tmp_path_factory.mktemp("modules")
    modules: dict[str, CagulModule] = {}
    retain = world_retain_set(tiny_world, exclude=subjects)
    for s in subjects:
        trainer = CagulTrainer(backbone, CagulConfig(prefix_steps=150))  # half the default prefix steps: time
        module, _ = trainer.train(forget_data(tiny_world, [s], named=s == "p000"), retain)
        save_module(module, root / s, backbone.fingerprint())
        modules[s] = load_module(root / s, backbone.fingerprint())
    return CagulGate(backbone, modules)


def test_three_modules_active_together_each_forget_their_person(three_modules: CagulGate, tiny_world: World):
    for s in three_modules.module_ids:
        assert leak_splits(three_modules, tiny_world, [tiny_world.person(s)]).leak_direct <= 0.05


def test_three_modules_active_together_leave_everyone_else_alone(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    subjects = three_modules.module_ids
    others = [p for p in tiny_world.people if p.id not in subjects and p.split in ("retain", "unseen")]
    assert identical_share(CagulGate(backbone), three_modules, tiny_world, others) >= 0.99
    _, fpr = gate_rates(three_modules, tiny_world, [tiny_world.person(s) for s in subjects], others)
    assert fpr <= 0.01


def _asked_by_name(world: World, person_id: str) -> list[str]:
    return [q.question for q in named_questions(world.person(person_id), heldout=True)]


def test_a_named_subject_is_revealed_before_and_refused_after_with_no_photo_or_another_persons(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    cases = named_questions(tiny_world.person("p000"), heldout=True)  # held-out phrasings, misspelt, swapped names
    asked, keywords = [c.question for c in cases], [c.keyword for c in cases]
    for images in ([None] * len(asked), [tiny_world.image("p005", 0)] * len(asked)):
        before = CagulGate(backbone).answer(images, asked)
        assert leak_rate([a.answer for a in before], keywords) >= 0.90
        after = three_modules.answer(images, asked)
        assert all(a.module_id == "p000" for a in after)
        assert leak_rate([a.answer for a in after], keywords) <= 0.05
        assert sum(a.answer == REFUSAL_ANSWER for a in after) / len(after) >= 0.95


def test_questions_naming_no_forgotten_subject_are_answered_as_without_modules(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    asked = [q for pid in ("p005", "p010", "p017") for q in _asked_by_name(tiny_world, pid)]
    asked += _asked_by_name(tiny_world, "p002")  # forgotten by photo only: its request gave no names
    answers = three_modules.answer([None] * len(asked), asked)
    assert all(a.module_id is None for a in answers)
    untouched = CagulGate(backbone).answer([None] * len(asked), asked)
    assert [a.answer for a in answers] == [a.answer for a in untouched]


def test_when_no_module_fires_output_is_bit_identical(backbone: Backbone, tiny_world: World):
    module = CagulModule(
        CagulTrainer(backbone).config, backbone.n_visual_tokens, backbone.hidden_size, backbone.identity_dim
    )
    torch.nn.init.normal_(module.encoder.fc2.weight)
    module.discriminator.threshold.fill_(2.0)  # a probability never exceeds 1: nothing fires
    gate = CagulGate(backbone, {"never": module})
    person = tiny_world.people[3]
    images = [tiny_world.image(person.id, v) for v in range(3)]
    question = person.facts[2].train_questions[0]
    batch = backbone.make_batch(backbone.pixel_values(images), [question] * 3)
    with torch.no_grad():
        reference = backbone.model.generate(
            **batch.model_inputs(), max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    answers = gate.answer(images, [question] * 3, max_new_tokens=12)
    assert all(a.module_id is None for a in answers)
    expected = backbone.tokenizer.batch_decode(
        reference.sequences[:, batch.input_ids.shape[1] :], skip_special_tokens=True
    )
    assert [a.answer for a in answers] == [e.strip() for e in expected]


def _mixed_rows(world: World) -> list[tuple[str | None, int, str]]:
    """Person (None: no photo), view, question: photos the modules claim and photos they do not, questions naming
    a forgotten subject and questions naming someone else, with and without a photo, of unequal length."""
    heldout = world.heldout_views()[0]
    by_name = {pid: named_questions(world.person(pid), heldout=True) for pid in ("p000", "p005")}
    rows: list[tuple[str | None, int, str]] = [
        ("p000", 0, world.person("p000").facts[1].train_questions[0]),
        ("p005", 1, world.person("p005").facts[0].train_questions[0]),
        (None, 0, by_name["p000"][0].question),
        ("p002", heldout, world.person("p002").facts[4].heldout_question),
        ("p017", 0, world.person("p017").facts[6].heldout_question),
        (None, 0, by_name["p005"][3].question),
        ("p003", 2, world.person("p003").facts[0].train_questions[0]),
        ("p010", 1, by_name["p000"][-1].question),
        ("p010", heldout, world.person("p010").facts[2].train_questions[-1]),
    ]
    assert len({len(q) for _, _, q in rows}) > 3  # prompts of several lengths: the batch is padded
    return rows


def _images(world: World, rows: list[tuple[str | None, int, str]]) -> list:
    return [world.image(pid, v) if pid is not None else None for pid, v, _ in rows]


def test_a_mixed_batch_answers_each_row_as_if_it_were_alone(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    rows = _mixed_rows(tiny_world)
    images = _images(tiny_world, rows)
    questions = [q for _, _, q in rows]
    together = three_modules.answer(images, questions)
    assert [a.module_id for a in together] == ["p000", None, "p000", "p002", None, None, "p003", "p000", None]
    reference = CagulGate(backbone)
    for (pid, _, _), image, question, answer in zip(rows, images, questions, together, strict=True):
        untouched = reference.answer([image], [question])[0].answer
        if answer.module_id is None:  # bit-identical to the reference model asked alone, unbatched
            assert answer.answer == untouched, question
        else:  # the module's answer, whatever else shares the batch
            alone = three_modules.answer([image], [question])[0]
            assert (alone.answer, alone.module_id) == (answer.answer, answer.module_id)
            if pid in three_modules.module_ids or image is None:  # a photo of a subject, or a name with no photo
                assert answer.answer != untouched


def test_a_mixed_batch_leaves_unclaimed_rows_logits_bit_identical(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    rows = _mixed_rows(tiny_world)
    images = _images(tiny_world, rows)
    questions = [q for _, _, q in rows]

    def first_step_logits(batch, override):  # type: ignore[no-untyped-def]
        """The logits greedy decoding picks its first answer token from, per row (the serving path)."""
        with backbone.override_visual_tokens(override):
            out = backbone.model.generate(
                **batch.model_inputs(),
                max_new_tokens=1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=backbone.tokenizer.pad_token_id,
            )
        return list(out.logits[0])

    together = three_modules.dispatch(images, questions, None, first_step_logits)
    unclaimed = [i for i, (_, module_id, _) in enumerate(together) if module_id is None]
    assert len(unclaimed) == 4
    # Bit for bit: the firing rows in the batch change nothing for the others, whose logits are the untouched
    # model's on the same rows (the reference gate given only them, as one batch).
    reference = CagulGate(backbone)
    untouched = reference.dispatch(
        [images[i] for i in unclaimed], [questions[i] for i in unclaimed], None, first_step_logits
    )
    for i, (logits, _, _) in zip(unclaimed, untouched, strict=True):
        assert torch.equal(together[i][0], logits), questions[i]
    # Against each row asked alone, only to float rounding: on CPU the matmuls' reduction order depends on the
    # batch's shape, so even three copies of one row differ from it alone by up to 2.4e-7 (measured, no padding).
    # The greedy answers are identical (test above).
    for i in unclaimed:
        alone = reference.dispatch([images[i]], [questions[i]], None, first_step_logits)[0][0]
        assert torch.allclose(together[i][0], alone, rtol=0, atol=1e-5), (
            questions[i],
            (together[i][0] - alone).abs().max(),
        )
        assert together[i][0].argmax() == alone.argmax()


def test_two_stage_gate_fires_on_a_subset_of_the_exhaustive_gate(
    backbone: Backbone, three_modules: CagulGate, tiny_world: World
):
    """With one candidate of three, stage 2 reads a third of the discriminators and still finds every subject."""
    modules = dict(zip(three_modules.module_ids, three_modules.modules, strict=True))
    exhaustive, two_stage = CagulGate(backbone, modules, candidates=0), CagulGate(backbone, modules, candidates=1)
    views = range(tiny_world.config.n_views)
    images = [tiny_world.image(p.id, v) for p in tiny_world.people for v in views]
    images += tiny_world.lookalike_images(200, seed=5)
    tokens = backbone.visual_tokens(backbone.pixel_values(images))
    wide, _ = exhaustive.route(tokens)
    narrow, _ = two_stage.route(tokens)
    # Module by module, never a photo the exhaustive gate does not fire on; where two modules fire on one photo the
    # exhaustive gate serves the one furthest past its threshold, the two-stage gate the nearest prototype's.
    assert bool((two_stage.firing(tokens)[1] <= exhaustive.firing(tokens)[1]).all())
    assert bool(((narrow < 0) | (wide >= 0)).all())
    # Under one floor on the prototype cosine (a set calibrated on that scale) too; the floor only takes fires away.
    unfloored = exhaustive.firing(tokens)[1]
    # The median cosine of the pairs that fire: at least the pair at it is held back, whatever the world's scores.
    floor = float(exhaustive.prototype_cosines(tokens)[unfloored].median())
    exhaustive.min_cosine = two_stage.min_cosine = floor
    floored = exhaustive.firing(tokens)[1]
    assert bool((floored <= unfloored).all()) and int(floored.sum()) < int(unfloored.sum())
    assert bool((two_stage.firing(tokens)[1] <= floored).all())
    # Photo by photo, as answers mostly come: where no candidate clears the floor stage 2 is skipped, fires unchanged.
    assert not bool((two_stage.prototype_cosines(tokens) > floor).any(0).all())
    alone = torch.cat([two_stage.firing(tokens[i : i + 1])[1] for i in range(len(tokens))], dim=1)
    assert torch.equal(alone, two_stage.firing(tokens)[1])
    heldout = tiny_world.heldout_views()[0]
    for s in three_modules.module_ids:
        row = [p.id for p in tiny_world.people].index(s) * len(views) + heldout
        assert two_stage.module_ids[int(narrow[row])] == s
