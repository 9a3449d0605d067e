"""The text gate's alias index on a world's people: fires on questions naming the forgotten, and on nobody else?

    python bench/alias_gate.py [--world default] [--forgotten 12] [--json PATH]

The first `--forgotten` trained people are forgotten (aliases: full name and surname); everyone else of the world is
a name the index knows belongs to someone else. Measured on named questions (`unlearning.world.names`):
- fires: the forgotten people's held-out named questions (held-out phrasing, one-letter misspelling, swapped parts);
- false fires: every other person's named questions (trained, unseen), the fact questions about "this person", and
  near-miss names drawn for each forgotten person, one or two letters from the name, unknown to the index (a real
  misspelling and a stranger one letter off are the same string: the index can only tell them apart by a known name)
  and, separately, the same near misses declared as known people.
No model is needed: the world's people are generated from its config, nothing is built.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time

from unlearning.cagul.aliases import AliasIndex
from unlearning.world import WORLD_PRESETS
from unlearning.world.names import named, named_questions
from unlearning.world.people import generate_people
from unlearning.world.vocabulary import FACT_TYPES


def near_miss(name: str, letters: int, rng: random.Random) -> str:
    """`name` with `letters` letters of its surname changed (each to a different letter)."""
    given, _, surname = name.rpartition(" ")
    chars = list(surname)
    for i in rng.sample(range(len(chars)), letters):
        chars[i] = rng.choice([c for c in string.ascii_lowercase if c != chars[i]])
    return f"{given} {''.join(chars)}"


def rate(index: AliasIndex, questions: list[str]) -> float:
    return sum(bool(index.subjects(q)) for q in questions) / max(len(questions), 1)


def drawn_name(rng: random.Random) -> str:
    syllables = ["ka", "ro", "ta", "le", "mi", "no", "zu", "pe", "ri", "so", "va", "de", "lu", "fa", "gi", "ho"]
    return " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(2))


def lookup_cost(templates: list[str], rng: random.Random) -> dict[int, float]:
    """Microseconds per question with N drawn subjects forgotten: flat in N is what the hash probes buy."""
    cost = {}
    for n in (10, 1000, 10_000):
        names = [drawn_name(rng) for _ in range(n)]
        index = AliasIndex({f"s{i}": [name, name.split()[-1]] for i, name in enumerate(names)})
        questions = [named(rng.choice(templates), rng.choice(names)) for _ in range(500)]
        started = time.perf_counter()
        for q in questions:
            index.subjects(q)
        cost[n] = round((time.perf_counter() - started) / len(questions) * 1e6, 1)
    return cost


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", default="default")
    parser.add_argument("--forgotten", type=int, default=12)
    parser.add_argument("--near-misses", type=int, default=20, help="Drawn per forgotten person and distance.")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    people = generate_people(WORLD_PRESETS[args.world])
    trained = [p for p in people if p.trained and not p.protected]
    forgotten, others = trained[: args.forgotten], [p for p in people if p not in trained[: args.forgotten]]
    aliases = {p.id: [p.name, p.name.split()[-1]] for p in forgotten}
    known = [form for p in others for form in (p.name, p.name.split()[-1])]
    index = AliasIndex(aliases, known_names=known)
    rng = random.Random(0)
    templates = [q for kind, spec in FACT_TYPES.items() if kind != "name" for q in spec.questions]
    near = {d: [near_miss(p.name, d, rng) for p in forgotten for _ in range(args.near_misses)] for d in (1, 2)}
    near_questions = {d: [named(rng.choice(templates), n) for n in names] for d, names in near.items()}
    started = time.perf_counter()
    fires = [bool(index.subjects(q.question) & {p.id}) for p in forgotten for q in named_questions(p, heldout=True)]
    result = {
        "world": args.world,
        "forgotten": len(forgotten),
        "fires_on_heldout_named": round(sum(fires) / len(fires), 4),
        "false_fires": {
            "other_people_named": rate(index, [q.question for p in others for q in named_questions(p)]),
            "this_person_questions": rate(index, templates),
            "near_miss_1_letter_unknown": rate(index, near_questions[1]),
            "near_miss_2_letters_unknown": rate(index, near_questions[2]),
        },
    }
    known_index = AliasIndex(aliases, known_names=known + near[1] + near[2])
    result["false_fires"]["near_miss_1_letter_known"] = rate(known_index, near_questions[1])
    result["false_fires"]["near_miss_2_letters_known"] = rate(known_index, near_questions[2])
    result["lookup_us"] = round((time.perf_counter() - started) / (len(fires) + 1) * 1e6, 1)
    result["lookup_us_at_n"] = lookup_cost(templates, rng)
    print(json.dumps(result, indent=1))
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
