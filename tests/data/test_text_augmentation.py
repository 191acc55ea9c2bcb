from __future__ import annotations

import random

import numpy as np
import pytest

from dussss_monai.data.text_augmentation import DEFAULT_DROPPABLE_WORDS, TextAugmenter
from dussss_monai.errors import ConfigError

QATA = [
    "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, upper left lung.",
    "Bilateral pulmonary infection, three infected areas, middle left lung and upper lower right lung.",
]
MONUSEG = ["The nuclei density in the upper right is high."]


def _content_words(text: str) -> list[str]:
    words = text.replace(",", " ").replace(".", " ").lower().split()
    return sorted(w for w in words if w not in DEFAULT_DROPPABLE_WORDS)


def test_seeded_is_deterministic_and_seeds_differ():
    a = [TextAugmenter(word_dropout=0.3, seed=1)(QATA * 4) for _ in range(2)]
    assert a[0] == a[1]
    assert TextAugmenter(word_dropout=0.3, seed=2)(QATA * 4) != a[0]
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    aug = TextAugmenter(seed=0)
    assert aug(QATA, rng=g1) == aug(QATA, rng=g2)


def test_no_global_random_state_is_used():
    np_state, py_state = np.random.get_state(), random.getstate()
    TextAugmenter(word_dropout=0.5, seed=0)(QATA * 10)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and (after[1] == np_state[1]).all() and after[2:] == np_state[2:]


def test_identity_when_everything_is_off():
    aug = TextAugmenter(word_dropout=0.0, clause_shuffle=False, synonym_prob=0.0, seed=0)
    assert aug(QATA + MONUSEG) == QATA + MONUSEG


def test_clause_shuffle_keeps_clauses_and_changes_order():
    aug = TextAugmenter(word_dropout=0.0, synonym_prob=0.0, seed=0)
    outs = aug([QATA[0]] * 30)
    assert len(set(outs)) > 1
    for out in outs:
        assert out[0].isupper() and out.endswith(".")
        assert sorted(c.strip().lower() for c in out[:-1].split(",")) == sorted(
            c.strip().lower() for c in QATA[0][:-1].split(",")
        )


def test_word_dropout_only_drops_function_words_and_never_empties():
    aug = TextAugmenter(word_dropout=0.9, clause_shuffle=False, synonym_prob=0.0, seed=0)
    for src in QATA + MONUSEG:
        for out in aug([src] * 10):
            assert _content_words(out) == _content_words(src)
    out = aug(MONUSEG * 20)
    assert any(len(o.split()) < len(MONUSEG[0].split()) for o in out)  # something was dropped
    assert all(o.strip() for o in aug(["the of a.", "The."] * 10))


def test_synonyms_replace_whole_phrases():
    aug = TextAugmenter(word_dropout=0.0, clause_shuffle=False, synonym_prob=1.0, seed=0)
    out = aug([QATA[1]])[0]
    assert "infected area" not in out and ("infection region" in out or "infected region" in out)
    assert "lung infection" in out
    custom = TextAugmenter(
        word_dropout=0.0, clause_shuffle=False, synonym_prob=1.0, synonyms={"left": "sinister"}, seed=0
    )
    assert custom(["Upper left lung."]) == ["Upper sinister lung."]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="word_dropout"):
        TextAugmenter(word_dropout=1.0)
    with pytest.raises(ConfigError, match="synonym_prob"):
        TextAugmenter(synonym_prob=2.0)
    with pytest.raises(ConfigError, match="synonym"):
        TextAugmenter(synonyms={"x": []})
    with pytest.raises(ConfigError, match="strings"):
        TextAugmenter()(["ok", None])
