"""memp_cli.eval: ranking metrics against hand-computed values, and the task-label rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memp_cli.eval.labels import TaskLabel, grade, norm_task, target_object, task_label, task_type_of
from memp_cli.eval.metrics import (
    Interval,
    bootstrap_intervals,
    dcg,
    ideal_dcg,
    ndcg,
    paired_bootstrap,
    precision_at_k,
    reciprocal_rank,
    score_ranking,
)

LOG2_3 = 1.584962500721156  # log2(3), the discount of rank 2


def test_precision_at_k() -> None:
    grades = [0, 2, 1, 0, 1]
    assert precision_at_k(grades, 1) == 0.0
    assert precision_at_k(grades, 3) == pytest.approx(2 / 3)
    assert precision_at_k(grades, 5) == pytest.approx(3 / 5)
    # a ranking shorter than k: the missing ranks are misses, not dropped from the denominator
    assert precision_at_k([1, 1], 4) == 0.5
    with pytest.raises(ValueError):
        precision_at_k(grades, 0)


def test_reciprocal_rank() -> None:
    assert reciprocal_rank([0, 0, 1, 2]) == pytest.approx(1 / 3)
    assert reciprocal_rank([2, 0]) == 1.0
    assert reciprocal_rank([0, 0, 0]) == 0.0
    assert reciprocal_rank([0, 0, 1], k=2) == 0.0  # beyond the cut
    assert reciprocal_rank([]) == 0.0


def test_dcg_and_ndcg_with_graded_relevance() -> None:
    # ranking grades 0, 2, 1: gains 0, 3, 1 at discounts log2(2)=1, log2(3), log2(4)=2
    ranked = [0, 2, 1]
    assert dcg(ranked, 3) == pytest.approx(3 / LOG2_3 + 1 / 2)  # 2.392789...
    assert dcg(ranked, 1) == 0.0
    # the store holds grades 2, 1, 1, 0, 0: the ideal top 3 is 2, 1, 1 -> 3/1 + 1/log2(3) + 1/2
    ideal = ideal_dcg([0, 1, 2, 0, 1], 3)
    assert ideal == pytest.approx(3 + 1 / LOG2_3 + 1 / 2)  # 4.130930...
    assert ndcg(ranked, ideal, 3) == pytest.approx(0.579237, abs=1e-6)
    assert ndcg([2, 1, 1], ideal, 3) == pytest.approx(1.0)
    assert ndcg([0, 0, 0], 0.0, 3) == 0.0  # nothing relevant anywhere: 0, not a division by zero


def test_score_ranking_cuts_at_k() -> None:
    grades = [0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # the grade-2 item at rank 11 is beyond k=10
    ideal = ideal_dcg([2, 2, 1], 10)
    s = score_ranking(grades, ideal, k=10, precision_k=3)
    assert (s.p1, s.pk, s.mrr) == (0.0, pytest.approx(2 / 3), 0.5)
    expected = (1 / LOG2_3 + 3 / 2) / (3 + 3 / LOG2_3 + 1 / 2)
    assert s.ndcg == pytest.approx(expected)
    assert math.isclose(s.ndcg, 0.39514, abs_tol=1e-5)


def test_bootstrap_is_deterministic_with_a_seed() -> None:
    values = np.array([[1.0, 0.5], [0.0, 0.25], [1.0, 1.0], [1.0, 0.0], [0.0, 0.75]])
    a = bootstrap_intervals(values, seed=7)
    assert a == bootstrap_intervals(values, seed=7)
    assert [iv.mean for iv in a] == [pytest.approx(0.6), pytest.approx(0.5)]
    for iv in a:
        assert iv.low <= iv.mean <= iv.high
    # continuous scores: another seed draws other resamples, hence other percentiles
    scores = np.linspace(0.0, 1.0, 23) ** 2
    assert bootstrap_intervals(scores, seed=7) == bootstrap_intervals(scores, seed=7)
    assert bootstrap_intervals(scores, seed=7) != bootstrap_intervals(scores, seed=8)


def test_bootstrap_interval_width_and_edge_cases() -> None:
    # 100 queries, half hit: the 95% interval of the mean is about 0.5 +- 1.96 * sqrt(0.25 / 100)
    (iv,) = bootstrap_intervals([1.0, 0.0] * 50, resamples=4000, seed=0)
    assert iv.mean == 0.5
    assert 0.38 <= iv.low <= 0.42 and 0.58 <= iv.high <= 0.62
    # a constant column has a zero-width interval; one query is its own interval
    assert bootstrap_intervals([0.25] * 10) == [Interval(0.25, 0.25, 0.25)]
    assert bootstrap_intervals([0.8]) == [Interval(0.8, 0.8, 0.8)]
    # a wider confidence gives a wider interval on the same resamples
    (narrow,) = bootstrap_intervals([1.0, 0.0] * 50, confidence=0.5, seed=0)
    assert iv.low < narrow.low < narrow.high < iv.high
    with pytest.raises(ValueError):
        bootstrap_intervals([])
    with pytest.raises(ValueError):
        bootstrap_intervals([1.0], confidence=1.0)


def test_paired_bootstrap_is_the_bootstrap_of_differences() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((30, 2)), rng.random((30, 2))
    assert paired_bootstrap(a, b, seed=3) == bootstrap_intervals(a - b, seed=3)
    # a ranker that wins on every query by 0.1 has the interval [0.1, 0.1]
    (iv,) = paired_bootstrap([0.6, 0.9, 0.3], [0.5, 0.8, 0.2], seed=0)
    assert (iv.mean, iv.low, iv.high) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("text", "kind", "obj"),
    [
        ("put a clean mug in coffeemachine.", "clean", "mug"),
        ("clean some soapbar and put it in toilet.", "clean", "soapbar"),
        ("heat some egg and put it in garbagecan.", "heat", "egg"),
        ("put a hot apple in fridge.", "heat", "apple"),
        ("cool some lettuce and put it in diningtable.", "cool", "lettuce"),
        ("put a cold tomato in microwave.", "cool", "tomato"),
        ("put two cellphone in sofa.", "puttwo", "cellphone"),
        ("find two book and put them in bed.", "puttwo", "book"),
        ("look at alarmclock under the desklamp.", "examine", "alarmclock"),
        ("examine the pen with the desklamp.", "examine", "pen"),
        ("Put some  KeyChain on sofa.", "put", "keychain"),
        ("find a vase and put it in shelf", "put", "vase"),
        ("book a flight to Paris", "put", None),  # not ALFWorld: the rule's fallback, no object
    ],
)
def test_task_type_and_target_object(text: str, kind: str, obj: str | None) -> None:
    assert task_type_of(text) == kind
    assert target_object(text) == obj


def test_norm_task() -> None:
    assert norm_task("  Put a Clean mug\tin coffeemachine. ") == "put a clean mug in coffeemachine"
    assert norm_task("put a mug in sink") == norm_task("put a mug in sink.")


def test_labels_and_grades() -> None:
    q = task_label("put a clean mug in coffeemachine.")
    assert q == TaskLabel("clean", "mug")
    assert task_label("put a clean mug in coffeemachine.", task_type="pick_clean_then_place") == TaskLabel(
        "pick_clean_then_place", "mug"
    )
    assert grade(q, task_label("clean some mug and put it in cabinet.")) == 2
    assert grade(q, task_label("put a clean plate in cabinet.")) == 1
    assert grade(q, task_label("put a hot mug in cabinet.")) == 0
    # a shared type label without objects (another domain): same type is relevant, grade 1
    assert grade(TaskLabel("easy-3day"), TaskLabel("easy-3day")) == 1
    assert grade(TaskLabel("easy-3day"), TaskLabel("hard-7day")) == 0


def test_bootstrap_is_the_percentile_interval_of_seeded_resamples() -> None:
    # The documented recipe, so figures stay reproducible across versions: resample query indices
    # with numpy's default_rng(seed), one draw shared by every column; take the tail percentiles.
    values = np.linspace(0.0, 1.0, 17) ** 3
    idx = np.random.default_rng(5).integers(0, 17, size=(300, 17))
    means = values[idx].mean(axis=1)
    (iv,) = bootstrap_intervals(values, resamples=300, confidence=0.9, seed=5)
    assert (iv.low, iv.high) == (np.percentile(means, 5.0), np.percentile(means, 95.0))
    (iv,) = bootstrap_intervals(values, resamples=300, seed=5)
    assert (iv.low, iv.high) == (np.percentile(means, 2.5), np.percentile(means, 97.5))
