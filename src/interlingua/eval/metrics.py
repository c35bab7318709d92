"""The official SQuAD v1.1 metrics (``evaluate-v1.1.py``): normalised exact match and token-count F1,
each the max over all gold answers."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop a/an/the, collapse whitespace (the official order).

    Args:
        text: a prediction or a gold answer.
    Returns:
        The normalised string, e.g. ``"The Eiffel Tower!"`` -> ``"eiffel tower"``.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-count F1 between two normalised answers.

    Args:
        prediction: the model's answer.
        ground_truth: one gold answer.
    Returns:
        F1 in [0, 1]; 0 when no token is shared, including when both sides normalise to nothing.
    """
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:  # as the official script: also 0 when both sides are empty
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal (two empty strings are equal), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(
    metric: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    """Best score of ``prediction`` over every gold answer (the official rule).

    Args:
        metric: ``exact_match_score`` or ``f1_score``.
        prediction: the model's answer.
        ground_truths: all gold answers of the example (non-empty).
    Returns:
        The maximum of ``metric(prediction, truth)``.
    """
    return max(metric(prediction, truth) for truth in ground_truths)


def per_example_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """Exact match and F1 of one prediction, for per-example rows.

    Args:
        prediction: the model's answer.
        answers: all gold answers of the example.
    Returns:
        ``(exact_match, f1)``, each in [0, 1] and each the max over the gold answers.
    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("an example needs at least one gold answer")
    return (
        metric_max_over_ground_truths(exact_match_score, prediction, answers),
        metric_max_over_ground_truths(f1_score, prediction, answers),
    )


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """Aggregate SQuAD scores, as the official ``evaluate-v1.1.py`` reports them.

    Args:
        predictions: one answer per example.
        answers: the gold answers of each example, aligned with ``predictions``.
    Returns:
        ``{"exact_match": float, "f1": float, "n": int}``; the scores are means ×100 (0 when n is 0).
    Raises:
        ValueError: the two sequences differ in length, or an example has no gold answer.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} examples")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0, "n": 0}
    scores = [per_example_scores(p, a) for p, a in zip(predictions, answers)]
    return {
        "exact_match": 100.0 * sum(s[0] for s in scores) / len(scores),
        "f1": 100.0 * sum(s[1] for s in scores) / len(scores),
        "n": len(scores),
    }


def normalized_equal(a: str, b: str) -> bool:
    """Whether two predictions are the same answer after SQuAD normalisation (cross-model agreement)."""
    return normalize_answer(a) == normalize_answer(b)
