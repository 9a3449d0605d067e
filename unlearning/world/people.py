"""Seeded generator of fictitious people: a visual identity and private facts with paraphrases."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

from unlearning.config import REFUSAL_ANSWER
from unlearning.errors import InvalidInputError
from unlearning.world.config import WorldConfig
from unlearning.world.portraits import DETAIL, GEOMETRY
from unlearning.world.vocabulary import (
    ATTRIBUTE_INDEX,
    ATTRIBUTES,
    BLOOD,
    CITIES,
    CONDITIONS,
    EMPLOYER_A,
    EMPLOYER_B,
    FACT_TYPES,
    HAIR_STYLES,
    HOBBIES,
    JOBS,
    PETS,
    SCHOOLS_A,
    SCHOOLS_B,
    SYLLABLES,
    attribute,
)


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    keyword: str


@dataclass(frozen=True)
class Fact:
    """One private fact of a person: question paraphrases, answers and a leak keyword."""

    kind: str
    value: str
    questions: tuple[str, ...]
    answer: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]
    heldout_question_index: int

    @property
    def keyword(self) -> str:
        return self.value

    @property
    def train_questions(self) -> list[str]:
        return [q for i, q in enumerate(self.questions) if i != self.heldout_question_index]

    @property
    def heldout_question(self) -> str:
        return self.questions[self.heldout_question_index]


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    split: str
    identity: tuple  # 8 attribute values, then a face geometry in worlds that draw one
    facts: tuple[Fact, ...] = field(default_factory=tuple)
    # The model was taught to decline every question about a protected person (image-conditioned refusal).
    protected: bool = False

    @property
    def trained(self) -> bool:
        return self.split != "unseen"

    def taught_answer(self, fact: Fact) -> str:
        """What the reference model learned to answer about this fact."""
        return REFUSAL_ANSWER if self.protected else fact.answer

    def qa_pairs(self, heldout: bool = False) -> list[QAPair]:
        """Direct (trained-paraphrase) QA pairs, or the held-out paraphrase of each fact."""
        if heldout:
            return [QAPair(f.heldout_question, f.answer, f.keyword) for f in self.facts]
        return [QAPair(q, f.answer, f.keyword) for f in self.facts for q in f.train_questions]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Person:
        facts = tuple(
            Fact(**{**f, "questions": tuple(f["questions"]), "perturbed_answers": tuple(f["perturbed_answers"])})
            for f in data["facts"]
        )
        return cls(
            id=data["id"],
            name=data["name"],
            split=data["split"],
            identity=tuple(data["identity"]),
            facts=facts,
            protected=data.get("protected", False),
        )


def _unique_values(rng: random.Random, pool: list[str], n: int) -> list[str]:
    if n <= len(pool):
        return rng.sample(pool, n)
    return [rng.choice(pool) for _ in range(n)]


def _shuffled(rng: random.Random, values: set[str]) -> list[str]:
    # Sorted first: a set's order follows PYTHONHASHSEED, which differs between processes.
    ordered = sorted(values)
    rng.shuffle(ordered)
    return ordered


def _value_pools(rng: random.Random, n: int) -> dict[str, list[str]]:
    names: set[str] = set()
    while len(names) < n:
        first = "".join(rng.choice(SYLLABLES) for _ in range(2))
        last = "".join(rng.choice(SYLLABLES) for _ in range(3))
        names.add(f"{first} {last}")
    phones: set[str] = set()
    while len(phones) < n:
        phones.add(f"555-{rng.randrange(10000):04d}")
    employers = [f"{a}{b}" for a in EMPLOYER_A for b in EMPLOYER_B]
    schools = [f"{a} {b}" for a in SCHOOLS_A for b in SCHOOLS_B]
    years = [str(y) for y in range(1950, 2006)]
    return {
        "name": _shuffled(rng, names),
        "city": _unique_values(rng, CITIES, n),
        "employer": _unique_values(rng, employers, n),
        "phone": _shuffled(rng, phones),
        "condition": _unique_values(rng, CONDITIONS, n),
        "job": _unique_values(rng, JOBS, n),
        "pet": _unique_values(rng, PETS, n),
        "hobby": _unique_values(rng, HOBBIES, n),
        "birth_year": _unique_values(rng, years, n),
        "school": _unique_values(rng, schools, n),
        "blood_type": _unique_values(rng, BLOOD, n),
    }


_BALD = HAIR_STYLES.index("bald")


def visible_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Attributes in which two identities differ visibly at portrait size.

    Eye colour is a few pixels wide, and hair colour does not show on two bald heads, so neither counts.
    """
    differing = {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}
    differing.discard(ATTRIBUTE_INDEX["eye_colour"])
    if attribute(a, "hair_style") == attribute(b, "hair_style") == _BALD:
        differing.discard(ATTRIBUTE_INDEX["hair_colour"])
    return len(differing)


def _distinct_identities(rng: random.Random, n: int, min_distance: int = 4) -> list[tuple[int, ...]]:
    sizes = list(ATTRIBUTES.values())
    found: list[tuple[int, ...]] = []
    for _ in range(200_000):
        if len(found) == n:
            return found
        cand = tuple(rng.randrange(s) for s in sizes)
        if all(visible_distance(cand, other) >= min_distance for other in found):
            found.append(cand)
    if len(found) == n:
        return found
    raise InvalidInputError(f"cannot draw {n} people that differ visibly in {min_distance} attributes: ask for fewer")


def with_geometry(rng: random.Random, identity: tuple, geometry: bool, detail: bool = False) -> tuple:
    """`identity` with a face geometry drawn for it (`GEOMETRY`, then `DETAIL` if `detail`; 3 decimals each) when
    `geometry`, else as is."""
    drawn = (*GEOMETRY, *DETAIL) if detail else GEOMETRY
    return (*identity, *(round(rng.random(), 3) for _ in drawn)) if geometry else identity


def lookalike_identity(rng: random.Random, base: tuple, changed: int) -> tuple:
    """An identity that shares all but `changed` attributes with `base` (a hard negative).

    A face geometry, if `base` has one, stays close: each value moves by at most 0.2.
    """
    sizes = list(ATTRIBUTES.values())
    out = list(base)
    for i in rng.sample(range(len(sizes)), changed):
        out[i] = rng.choice([v for v in range(sizes[i]) if v != base[i]])
    for i in range(len(sizes), len(base)):
        out[i] = round(min(0.999, max(0.0, base[i] + rng.uniform(-0.2, 0.2))), 3)
    return tuple(out)


def split_sizes(n_known: int) -> dict[str, int]:
    """Nested forget splits as 1, 5 and 10 percent of the trained people (at least one each)."""
    return {
        name: max(1, math.ceil(n_known * share))
        for name, share in (("forget1", 0.01), ("forget5", 0.05), ("forget10", 0.10))
    }


def generate_people(config: WorldConfig) -> list[Person]:
    """All people of the world, trained ones first, with nested forget splits."""
    rng = random.Random(config.seed)
    n = config.n_known + config.n_unseen
    kinds = list(FACT_TYPES)[: config.facts_per_person]
    pools = _value_pools(rng, n)
    identities = [with_geometry(rng, i, config.face_geometry, config.face_detail) for i in _distinct_identities(rng, n)]
    sizes = split_sizes(config.n_known)
    people = []
    for idx in range(n):
        if idx >= config.n_known:
            split = "unseen"
        elif idx < sizes["forget1"]:
            split = "forget1"
        elif idx < sizes["forget5"]:
            split = "forget5"
        elif idx < sizes["forget10"]:
            split = "forget10"
        else:
            split = "retain"
        facts = []
        for kind in ["name", *[k for k in kinds if k != "name"]][: config.facts_per_person]:
            spec = FACT_TYPES[kind]
            value = pools[kind][idx]
            wrong = [v for v in pools[kind] if v != value]
            perturbed = tuple(spec.paraphrase.format(v=v) for v in rng.sample(wrong, 3))
            facts.append(
                Fact(
                    kind=kind,
                    value=value,
                    questions=spec.questions,
                    answer=spec.answer.format(v=value),
                    paraphrased_answer=spec.paraphrase.format(v=value),
                    perturbed_answers=perturbed,
                    heldout_question_index=rng.randrange(len(spec.questions)),
                )
            )
        people.append(
            Person(
                id=f"p{idx:03d}",
                name=pools["name"][idx],
                split=split,
                identity=identities[idx],
                facts=tuple(facts),
                protected=config.n_known - config.n_protected <= idx < config.n_known,
            )
        )
    return people
