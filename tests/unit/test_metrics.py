"""The official SQuAD v1.1 metric, checked against hand-computed values."""

import pytest

from interlingua.eval.metrics import (
    exact_match_score,
    f1_score,
    normalize_answer,
    normalized_equal,
    per_example_scores,
    squad_scores,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0


def test_f1_partial_overlap_by_hand():
    # pred tokens: big red dog (article dropped); gold: red dog -> common 2, P = 2/3, R = 1, F1 = 0.8
    assert f1_score("the big red dog", "red dog") == pytest.approx(0.8)
    # pred: paris france; gold: paris -> P = 1/2, R = 1 -> 2/3
    assert f1_score("Paris, France", "Paris") == pytest.approx(2 / 3)


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred: dog dog; gold: dog -> common 1, P = 1/2, R = 1 -> 2/3
    assert f1_score("dog dog", "dog") == pytest.approx(2 / 3)


def test_empty_prediction_scores_zero():
    assert f1_score("", "Paris") == 0.0
    assert exact_match_score("", "Paris") == 0.0
    # As in the official script, F1 is 0 when both sides normalise to nothing (no common token) ...
    assert f1_score("the", "a") == 0.0
    # ... while exact match compares the normalised strings, which are equal.
    assert exact_match_score("the", "a") == 1.0


def test_max_over_several_golds():
    em, f1 = per_example_scores("red dog", ["a big dog", "the red dog", "cat"])
    assert em == 1.0 and f1 == 1.0
    em, f1 = per_example_scores("big red dog", ["dog", "red dog"])
    assert em == 0.0 and f1 == pytest.approx(0.8)
    with pytest.raises(ValueError, match="gold answer"):
        per_example_scores("x", [])


def test_aggregate_is_a_mean_times_100():
    scores = squad_scores(["Paris", "the big red dog", ""], [["Paris"], ["red dog"], ["x"]])
    assert scores["n"] == 3
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        squad_scores(["a", "b"], [["a"]])


def test_normalized_equal():
    assert normalized_equal("The Broncos.", "broncos")
    assert not normalized_equal("Broncos", "Panthers")
