from unlearning.config import REFUSAL_ANSWER
from unlearning.world import WORLD_PRESETS, generate_people
from unlearning.world.people import split_sizes, visible_distance


def test_generation_is_seeded_and_deterministic():
    config = WORLD_PRESETS["default"]
    assert generate_people(config) == generate_people(config)


def test_each_person_has_ten_facts_with_paraphrases_and_perturbations():
    for person in generate_people(WORLD_PRESETS["default"]):
        assert len(person.facts) >= 10
        for fact in person.facts:
            assert len(fact.questions) >= 4 and len(fact.train_questions) >= 3
            assert fact.heldout_question not in fact.train_questions
            assert len(fact.perturbed_answers) >= 3 and fact.answer not in fact.perturbed_answers
            assert fact.keyword in fact.answer and fact.keyword in fact.paraphrased_answer
            assert fact.paraphrased_answer != fact.answer


def test_private_values_are_unique_per_person_for_identifying_facts():
    people = generate_people(WORLD_PRESETS["default"])
    for kind in ("name", "phone", "city", "employer", "birth_year"):
        values = [next(f.value for f in p.facts if f.kind == kind) for p in people]
        assert len(set(values)) == len(values), kind


def test_forget_splits_are_nested_percentages_of_trained_people():
    config = WORLD_PRESETS["default"]
    people = generate_people(config)
    sizes = split_sizes(config.n_known)
    assert sizes == {"forget1": 1, "forget5": max(1, -(-config.n_known // 20)), "forget10": -(-config.n_known // 10)}
    splits = [p.split for p in people]
    assert splits.count("forget1") == 1
    assert splits.count("forget1") + splits.count("forget5") == sizes["forget5"]
    assert sum(s.startswith("forget") for s in splits) == sizes["forget10"]
    assert splits.count("unseen") == config.n_unseen
    assert all(not p.trained for p in people if p.split == "unseen")


def test_identities_are_distinct():
    people = generate_people(WORLD_PRESETS["default"])
    for i, a in enumerate(people):
        for b in people[i + 1 :]:
            assert visible_distance(a.identity, b.identity) >= 4


def test_refusal_is_in_the_repertoire_for_questions_and_for_protected_people():
    config = WORLD_PRESETS["default"]
    people = generate_people(config)
    protected = [p for p in people if p.protected]
    assert len(protected) == config.n_protected and all(p.split == "retain" for p in protected)
    assert all(p.taught_answer(f) == REFUSAL_ANSWER for p in protected for f in p.facts)
    normal = next(p for p in people if not p.protected)
    assert all(normal.taught_answer(f) == f.answer for f in normal.facts)
