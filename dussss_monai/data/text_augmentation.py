"""Text augmentation for the intra-modal contrast (``L_T2T``) of DuSSS stage 1.

The paper never says how text is augmented. This module uses three meaning-preserving edits, chosen so
that the augmented sentence still describes the same image (a positive pair must stay a positive pair):

1. clause shuffle: the comma-separated clauses of a sentence are put in a random order ("Bilateral
   pulmonary infection, two infected areas, lower left lung." -> "Two infected areas, bilateral pulmonary
   infection, lower left lung."). The order of findings in these templated reports carries no meaning.
2. synonym templates: a fixed list of phrase substitutions ("infected areas" -> "infection regions",
   "pulmonary" -> "lung", ...), each applied with probability ``synonym_prob``.
3. word dropout: each *function word* (articles, prepositions, "is", "are", ...; see
   :data:`DEFAULT_DROPPABLE_WORDS`) is dropped with probability ``word_dropout``. Content words (numbers,
   laterality, location, findings, negations) are never dropped, and a sentence is never emptied.

All randomness comes from a :class:`numpy.random.Generator` owned by the augmenter (seeded by ``seed``) or
passed to the call; the global random state is never used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import numpy as np

from dussss_monai.errors import ConfigError

__all__ = ["TextAugmenter", "DEFAULT_SYNONYMS", "DEFAULT_DROPPABLE_WORDS"]

#: phrase -> alternatives (matched case-insensitively on word boundaries, longest phrase first)
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "infected areas": ("infection regions", "infected regions"),
    "infected area": ("infection region", "infected region"),
    "pulmonary infection": ("lung infection",),
    "nuclei density": ("density of nuclei",),
    "is high": ("is large",),
    "is low": ("is small",),
}

#: function words that may be dropped without changing what the sentence says
DEFAULT_DROPPABLE_WORDS: frozenset[str] = frozenset(
    {"the", "a", "an", "of", "in", "on", "at", "is", "are", "with", "there", "to", "and", "which", "that"}
)


def _lower_first(clause: str) -> str:
    # lower-case a capitalised first word, but keep acronyms ("CT", "COVID")
    if len(clause) >= 2 and clause[0].isupper() and not clause[1].isupper():
        return clause[0].lower() + clause[1:]
    return clause


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


class TextAugmenter:
    """Meaning-preserving random edits of sentences (see the module docstring).

    Args:
        word_dropout: probability of dropping each droppable function word, in ``[0, 1)``.
        clause_shuffle: shuffle comma-separated clauses.
        synonym_prob: probability of applying each matching synonym template, in ``[0, 1]``.
        synonyms: phrase -> alternatives; ``None`` uses :data:`DEFAULT_SYNONYMS`, ``{}`` disables them.
        droppable_words: words eligible for dropout; ``None`` uses :data:`DEFAULT_DROPPABLE_WORDS`.
        seed: seed of the augmenter's own generator (``None``: fresh entropy, not reproducible).

    Raises:
        ConfigError: for probabilities out of range or malformed synonym lists.

    Example::

        aug = TextAugmenter(seed=0)
        aug(["Bilateral pulmonary infection, two infected areas."])
    """

    def __init__(
        self,
        word_dropout: float = 0.1,
        clause_shuffle: bool = True,
        synonym_prob: float = 0.5,
        synonyms: Mapping[str, Sequence[str]] | None = None,
        droppable_words: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= word_dropout < 1.0:
            raise ConfigError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if not 0.0 <= synonym_prob <= 1.0:
            raise ConfigError(f"synonym_prob must be in [0, 1], got {synonym_prob}")
        syn = DEFAULT_SYNONYMS if synonyms is None else synonyms
        self.synonyms: dict[str, tuple[str, ...]] = {}
        for k, v in syn.items():
            alts = (v,) if isinstance(v, str) else tuple(v)
            if not str(k).strip() or not alts or not all(isinstance(a, str) and a.strip() for a in alts):
                raise ConfigError(f"synonym {k!r} needs a non-empty phrase and non-empty alternatives, got {v!r}")
            self.synonyms[str(k).lower()] = alts
        # longest phrase first so that "infected areas" wins over "infected area"
        self._patterns = [
            (re.compile(r"\b" + re.escape(k) + r"\b", re.IGNORECASE), alts)
            for k, alts in sorted(self.synonyms.items(), key=lambda kv: -len(kv[0]))
        ]
        self.word_dropout = float(word_dropout)
        self.clause_shuffle = bool(clause_shuffle)
        self.synonym_prob = float(synonym_prob)
        self.droppable_words = frozenset(
            w.lower() for w in (DEFAULT_DROPPABLE_WORDS if droppable_words is None else droppable_words)
        )
        self.rng = np.random.default_rng(seed)

    def __call__(self, texts: Sequence[str] | str, rng: np.random.Generator | None = None) -> list[str]:
        """Augment each sentence independently.

        Args:
            texts: sentences (a single ``str`` is treated as one sentence).
            rng: generator to draw from instead of the augmenter's own.

        Returns:
            the augmented sentences, in the same order (never empty for a non-empty input).

        Raises:
            ConfigError: for non-string items.
        """
        if isinstance(texts, str):
            texts = [texts]
        bad = sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
        if bad:
            raise ConfigError(f"TextAugmenter expects strings, got items of type {bad}")
        g = self.rng if rng is None else rng
        return [self.augment_one(t, g) for t in texts]

    def augment_one(self, text: str, rng: np.random.Generator) -> str:
        """Augment one sentence with ``rng``."""
        stripped = text.strip()
        if not stripped:
            return text
        end = stripped[-1] if stripped[-1] in ".!?" else ""
        body = stripped[: len(stripped) - len(end)] if end else stripped
        for pattern, alts in self._patterns:
            # (cast: mypy cannot infer a lambda with a default argument)
            repl = cast(Callable[[re.Match[str]], str], lambda m, alts=alts: self._synonym(m, alts, rng))
            body = pattern.sub(repl, body)
        clauses = [c.strip() for c in body.split(",") if c.strip()]
        if self.clause_shuffle and len(clauses) > 1:
            was_capital = clauses[0][:1].isupper()
            clauses = [_lower_first(c) for c in clauses]
            clauses = [clauses[i] for i in rng.permutation(len(clauses))]
            if was_capital:
                clauses[0] = _upper_first(clauses[0])
        if self.word_dropout > 0:
            clauses = [self._drop_words(c, rng) for c in clauses]
            clauses = [c for c in clauses if c] or [body]
        out = ", ".join(clauses) + end
        return _upper_first(out) if stripped[:1].isupper() else out

    def _synonym(self, match: re.Match, alts: tuple[str, ...], rng: np.random.Generator) -> str:
        if rng.random() >= self.synonym_prob:
            return match.group(0)
        alt = alts[int(rng.integers(len(alts)))]
        return _upper_first(alt) if match.group(0)[:1].isupper() else alt

    def _drop_words(self, clause: str, rng: np.random.Generator) -> str:
        words = clause.split()
        keep = [
            w
            for w in words
            if not (w.lower().strip(".;:") in self.droppable_words and rng.random() < self.word_dropout)
        ]
        if not keep:  # never empty a clause: keep its first word
            keep = words[:1]
        out = " ".join(keep)
        if clause[:1].isupper():
            out = _upper_first(out)
        return out
