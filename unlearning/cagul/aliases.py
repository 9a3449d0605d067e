"""The text side of the gate: which forgotten subject, if any, a question names.

A normalised alias index. Questions and aliases are lower-cased, possessives and punctuation dropped; a name in a
question is a run of its words that equals an alias's words, in either order, with at most one letter inserted,
dropped, changed or two swapped over the whole name (words shorter than `FUZZY_MIN_LETTERS` must match exactly). A
run that is exactly the name of someone the index was told is a different person (`known_names`) is that person,
never a misspelling of a forgotten one. Lookups probe each word's one-deletion neighbourhood in a hash map, so their
cost does not grow with the number of subjects.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

FUZZY_MIN_LETTERS = 5
_POSSESSIVE = re.compile(r"(?<=\w)['’]s?\b")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def words(text: str) -> tuple[str, ...]:
    """`text` as the index compares it: lower case, possessives and punctuation dropped, split on spacing."""
    return tuple(_NOT_WORD.sub(" ", _POSSESSIVE.sub("", text.lower())).split())


def edits(a: str, b: str, limit: int = 1) -> int:
    """Optimal-string-alignment distance between `a` and `b`, or `limit + 1` once it is over `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], previous2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        previous2, previous = previous, row
    return min(previous[-1], limit + 1)


def _deletions(word: str) -> set[str]:
    return {word} | {word[:i] + word[i + 1 :] for i in range(len(word))}


class AliasIndex:
    """Forgotten subjects' aliases, looked up by the names a question mentions."""

    def __init__(self, aliases: Mapping[str, Iterable[str]], known_names: Iterable[str] = ()) -> None:
        self._names: dict[tuple[str, ...], set[str]] = defaultdict(set)  # alias words -> subject ids
        for subject, names in aliases.items():
            for name in names:
                key = words(name)
                if key:
                    self._names[key].add(subject)
        self._known = {words(n) for n in known_names} - set(self._names)
        self._by_word: dict[str, set[str]] = defaultdict(set)  # a deletion of an alias word -> alias words
        self._keys: dict[str, set[tuple[str, ...]]] = defaultdict(set)  # an alias word -> the aliases holding it
        for key in self._names:
            for word in key:
                self._keys[word].add(key)
                for probe in _deletions(word) if len(word) >= FUZZY_MIN_LETTERS else {word}:
                    self._by_word[probe].add(word)
        self._lengths = sorted({len(k) for k in self._names})
        self._known_lengths = sorted({len(k) for k in self._known})

    def subjects(self, question: str) -> set[str]:
        """The subjects `question` names (empty when it names none of them)."""
        said = words(question)
        known = set()  # positions of a name the index was told belongs to someone else
        for n in self._known_lengths:
            for start in range(len(said) - n + 1):
                if said[start : start + n] in self._known or said[start : start + n][::-1] in self._known:
                    known |= set(range(start, start + n))
        found: set[str] = set()
        for n in self._lengths:
            for start in range(len(said) - n + 1):
                if known & set(range(start, start + n)):
                    continue
                for key in self._candidates(said[start : start + n]):
                    found |= self._names[key]
        return found

    def _candidates(self, span: tuple[str, ...]) -> set[tuple[str, ...]]:
        """Alias keys of `span`'s length within one edit of it, in its order or reversed."""
        near = [self._near(word) for word in span]
        found = set()
        for order, close in ((span, near), (span[::-1], near[::-1])):
            keys = {k for w in close[0] for k in self._keys[w] if len(k) == len(order)}
            for key in keys:
                near_each = all(k in c for k, c in zip(key, close, strict=True))
                if near_each and sum(edits(k, w) for k, w in zip(key, order, strict=True)) <= 1:
                    found.add(key)
        return found

    def _near(self, word: str) -> set[str]:
        """Alias words within one edit of `word` (exact only for short ones)."""
        probes = _deletions(word) if len(word) >= FUZZY_MIN_LETTERS - 1 else {word}
        found = set().union(*(self._by_word.get(p, set()) for p in probes))
        return {w for w in found if w == word or (len(w) >= FUZZY_MIN_LETTERS and edits(w, word) <= 1)}
