"""The text gate's alias index: a forgotten name however it is written, never someone else's."""

from unlearning.cagul.aliases import AliasIndex, edits, words
from unlearning.world import World
from unlearning.world.names import named_questions


def test_questions_are_compared_without_case_possessives_or_punctuation():
    assert words("What is  PORO Rodulu's phone number?") == ("what", "is", "poro", "rodulu", "phone", "number")
    assert [edits("rodulu", w) for w in ("rodulu", "rodlu", "roudlu", "rodulus", "radalu")] == [0, 1, 1, 1, 2]


def test_a_forgotten_name_is_found_in_any_form_one_letter_off_or_swapped():
    index = AliasIndex({"p000": ["poro rodulu", "rodulu"]})
    for question in (
        "what is poro rodulu's phone number?",
        "WHERE does Poro  Rodulu live",
        "where does rodulu poro work?",
        "who does poro rodlu work for?",
        "which city is Rodulo's home?",
    ):
        assert index.subjects(question) == {"p000"}, question
    for question in ("where does poro live?", "what is this person's name?", "where does poro radalu live?"):
        assert index.subjects(question) == set(), question


def test_a_known_person_one_letter_away_is_that_person():
    index = AliasIndex({"p000": ["poro rodulu", "rodulu"]}, known_names=["poro rodula", "rodula"])
    assert index.subjects("where does poro rodula live?") == set()
    assert index.subjects("where does rodula live?") == set()


def test_a_known_name_that_is_forgotten_is_found_in_either_order():
    index = AliasIndex({"p000": ["poro rodulu"]}, known_names=["poro rodulu", "elta geromi"])
    assert index.subjects("where does rodulu poro live?") == {"p000"}
    assert index.subjects("where does Poro Rodulu's sister live?") == {"p000"}
    assert index.subjects("where does poro rodulu live?") == {"p000"}


def test_the_world_s_forgotten_are_found_and_nobody_else(tiny_world: World):
    trained = [p for p in tiny_world.trained_people if not p.protected]
    forgotten, others = trained[:3], [p for p in tiny_world.people if p not in trained[:3]]
    index = AliasIndex(
        {p.id: [p.name, p.name.split()[-1]] for p in forgotten},
        known_names=[form for p in others for form in (p.name, p.name.split()[-1])],
    )
    for person in forgotten:
        assert all(index.subjects(q.question) == {person.id} for q in named_questions(person, heldout=True))
    assert not any(index.subjects(q.question) for p in others for q in named_questions(p))


def test_subjects_join_and_leave_one_at_a_time():
    index = AliasIndex({"p000": ["poro rodulu"], "p001": ["elta geromi", "geromi"]})
    index.add("p002", ["rodulu"])  # shares a word with p000
    assert index.subjects("where does poro rodulu live?") == {"p000", "p002"}
    index.remove("p000")
    assert index.subjects("where does poro rodulu live?") == {"p002"}
    assert index.subjects("who is rodulo?") == {"p002"}
    index.remove("p002")
    assert index.subjects("where does poro rodulu live?") == set() and "p002" not in index
    assert index.subjects("who does geromi work for?") == {"p001"}
    index.add("p001", ["elta"])  # names replaced, not added to
    assert index.subjects("who does geromi work for?") == set()
    index.remove("p001")
    assert index._by_word == {} and index._keys == {}  # nothing left behind
