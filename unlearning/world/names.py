"""Asking about a person by name, with no photo of them: the name forms a model learns and the variants it never sees.

Every fact question of the world asks about "this person" in the photo; a named question puts a form of the person's
name there ("what is poro rodulu's phone number?"). Training uses the fact's training phrasings with the name as
drawn, title-cased, and the surname alone in both cases; held out are the fact's held-out phrasing with those forms,
and every phrasing with a name the model never saw: one letter changed, or the two parts swapped.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from unlearning.world.people import Fact, Person

# The name fact is left out: asked by name, its answer is in the question.
NAMED_FACT_KINDS_EXCLUDED = ("name",)


@dataclass(frozen=True)
class NamedQuestion:
    """One question naming a person, what the model should answer, and the word whose presence is a leak."""

    question: str
    answer: str
    keyword: str
    form: str  # how the name was written: one of `TRAIN_FORMS` or `HELDOUT_VARIANTS`


TRAIN_FORMS = ("as_drawn", "title", "surname", "surname_title")
HELDOUT_VARIANTS = ("one_letter", "swapped")
# Misspelt names trained on per phrasing, each one letter off and never the held-out misspelling: a model that
# saw none revealed 11% of the held-out misspelt cases (tiny world), one that saw the name as typed elsewhere does.
TRAIN_MISSPELLINGS = 3
# Bumped whenever the named questions a world trains on, or how its build mixes them, change (in its fingerprint).
NAMES_VERSION = 3


def name_form(name: str, form: str) -> str:
    """`name` written as one of `TRAIN_FORMS` ("poro rodulu" -> "Poro Rodulu", "rodulu", "Rodulu")."""
    surname = name.split()[-1]
    return {"as_drawn": name, "title": name.title(), "surname": surname, "surname_title": surname.title()}[form]


def name_variant(name: str, variant: str, rng: random.Random) -> str:
    """`name` as a model never saw it: one letter of the surname changed, or the parts swapped."""
    if variant == "swapped":
        return " ".join(reversed(name.split()))
    given, _, surname = name.rpartition(" ")
    i = rng.randrange(len(surname))
    letter = rng.choice([c for c in string.ascii_lowercase if c != surname[i]])
    return f"{given} {surname[:i]}{letter}{surname[i + 1 :]}".strip()


def named(question: str, name: str) -> str:
    """A "this person" question about `name` instead."""
    return question.replace("this person's", f"{name}'s").replace("this person", name)


def named_questions(person: Person, heldout: bool = False, seed: int = 0) -> list[NamedQuestion]:
    """The named questions a model trains on (default) or is tested on (`heldout`), about every named fact."""
    facts = [f for f in person.facts if f.kind not in NAMED_FACT_KINDS_EXCLUDED]
    if not heldout:
        held = name_variant(person.name, "one_letter", random.Random(f"{seed}:{person.id}"))
        typos = random.Random(f"{seed}:{person.id}:train")
        asked = [
            _ask(person, f, q, form, name_form(person.name, form))
            for f in facts
            for q in f.train_questions
            for form in TRAIN_FORMS
        ]
        for f in facts:
            for q in f.train_questions:
                for _ in range(TRAIN_MISSPELLINGS):
                    written = held
                    while written == held:
                        written = name_variant(person.name, "one_letter", typos)
                    asked.append(_ask(person, f, q, "misspelt", written))
        return asked
    rng = random.Random(f"{seed}:{person.id}")
    cases = [
        _ask(person, f, f.heldout_question, form, name_form(person.name, form)) for f in facts for form in TRAIN_FORMS
    ]
    for variant in HELDOUT_VARIANTS:
        written = name_variant(person.name, variant, rng)
        cases += [_ask(person, f, q, variant, written) for f in facts for q in f.questions]
    return cases


def _ask(person: Person, fact: Fact, question: str, form: str, written: str) -> NamedQuestion:
    return NamedQuestion(named(question, written), person.taught_answer(fact), fact.keyword, form)
