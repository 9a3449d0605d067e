"""Named questions: the forms a model trains on never overlap the phrasings and name variants it is tested on."""

from unlearning.world import World
from unlearning.world.names import (
    HELDOUT_VARIANTS,
    TRAIN_FORMS,
    TRAIN_MISSPELLINGS,
    name_form,
    name_variant,
    named,
    named_questions,
)


def test_a_named_question_puts_the_name_where_this_person_was():
    assert named("what is this person's phone number?", "Poro Rodulu") == "what is Poro Rodulu's phone number?"
    assert named("where does this person live?", "rodulu") == "where does rodulu live?"
    assert [name_form("poro rodulu", f) for f in TRAIN_FORMS] == ["poro rodulu", "Poro Rodulu", "rodulu", "Rodulu"]


def test_held_out_variants_are_one_letter_off_or_swapped():
    import random

    one = name_variant("poro rodulu", "one_letter", random.Random(0))
    assert one.startswith("poro ") and one != "poro rodulu"
    assert sum(a != b for a, b in zip(one, "poro rodulu", strict=True)) == 1
    assert name_variant("poro rodulu", "swapped", random.Random(0)) == "rodulu poro"


def test_training_and_held_out_questions_are_disjoint_and_cover_every_named_fact(tiny_world: World):
    for person in tiny_world.trained_people:
        train = named_questions(person)
        heldout = named_questions(person, heldout=True)
        assert not {q.question for q in train} & {q.question for q in heldout}
        assert {q.form for q in train} == {*TRAIN_FORMS, "misspelt"}
        assert {q.form for q in heldout} == set(TRAIN_FORMS) | set(HELDOUT_VARIANTS)
        assert {q.keyword for q in train} == {f.keyword for f in person.facts if f.kind != "name"}
        assert all(person.name.split()[-1].lower() in q.question.lower() for q in train if q.form != "misspelt")
        assert sum(q.form == "misspelt" for q in train) == TRAIN_MISSPELLINGS * sum(
            len(f.train_questions) for f in person.facts if f.kind != "name"
        )
        assert named_questions(person, heldout=True) == heldout  # the same variants every time
