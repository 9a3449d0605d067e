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
from collections import Counter, defaultdict
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


def _probes(word: str) -> set[str]:
    """The keys under which an alias word is indexed: its deletions, or itself when too short to misspell."""
    return _deletions(word) if len(word) >= FUZZY_MIN_LETTERS else {word}


class AliasIndex:
    """Forgotten subjects' aliases, looked up by the names a question mentions; subjects join and leave one at a
    time."""

    def __init__(self, aliases: Mapping[str, Iterable[str]] | None = None, known_names: Iterable[str] = ()) -> None:
        self._names: dict[tuple[str, ...], set[str]] = defaultdict(set)  # alias words -> subject ids
        self._of: dict[str, set[tuple[str, ...]]] = {}  # subject id -> its alias words
        self._keys: dict[str, set[tuple[str, ...]]] = defaultdict(set)  # an alias word -> the aliases holding it
        self._by_word: dict[str, set[str]] = defaultdict(set)  # a deletion of an alias word -> alias words
        self._lengths: Counter[int] = Counter()
        self._known = {key for key in map(words, known_names) if key}
        self._known_lengths = sorted({len(k) for k in self._known})
        for subject, names in (aliases or {}).items():
            self.add(subject, names)

    def __contains__(self, subject: object) -> bool:
        return subject in self._of

    def add(self, subject: str, names: Iterable[str]) -> None:
        """Index `subject` under `names` (replacing the names it had)."""
        self.remove(subject)
        keys = {key for key in map(words, names) if key}
        if not keys:
            return
        self._of[subject] = keys
        for key in keys:
            if not self._names[key]:
                self._lengths[len(key)] += 1
                for word in key:
                    self._keys[word].add(key)
                    for probe in _probes(word):
                        self._by_word[probe].add(word)
            self._names[key].add(subject)

    def remove(self, subject: str) -> None:
        """Stop finding `subject` (nothing if it is not indexed)."""
        for key in self._of.pop(subject, ()):
            self._names[key].discard(subject)
            if self._names[key]:
                continue
            del self._names[key]
            self._lengths[len(key)] -= 1
            for word in key:
                self._keys[word].discard(key)
                if self._keys[word]:
                    continue
                del self._keys[word]
                for probe in _probes(word):
                    self._by_word[probe].discard(word)
                    if not self._by_word[probe]:
                        del self._by_word[probe]

    def subjects(self, question: str) -> set[str]:
        """The subjects `question` names (empty when it names none of them)."""
        if not self._of:
            return set()
        said = words(question)
        known = set()  # positions of a name the index was told belongs to someone else
        for n in self._known_lengths:
            for start in range(len(said) - n + 1):
                span = said[start : start + n]
                forgotten = span in self._names or span[::-1] in self._names  # a known name may be forgotten too
                if (span in self._known or span[::-1] in self._known) and not forgotten:
                    known |= set(range(start, start + n))
        found: set[str] = set()
        for n in sorted(n for n, count in self._lengths.items() if count):
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
        found: set[str] = set().union(*(self._by_word.get(p, set()) for p in probes))
        return {w for w in found if w == word or (len(w) >= FUZZY_MIN_LETTERS and edits(w, word) <= 1)}
