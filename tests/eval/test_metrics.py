"""The protocol metrics against values computed by hand (the arithmetic is in comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pertinent import InvalidInput
from pertinent.eval.metrics import (
    dcg,
    evidence_recall,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_lift,
    percentiles,
    recall_at_k,
)


def test_dcg_uses_linear_gains_and_log2_discount() -> None:
    # 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.2618595 + 0.5
    assert dcg([3, 2, 1]) == pytest.approx(4.7618595, abs=1e-6)


def test_ndcg_graded_by_hand() -> None:
    gains = {"a": 3.0, "c": 2.0, "d": 1.0}
    # DCG@3 of [a, b, c] = 3/1 + 0 + 2/log2(4) = 4; ideal [3, 2, 1] = 4.7618595
    assert ndcg_at_k(["a", "b", "c"], gains, 3) == pytest.approx(4 / 4.7618595, abs=1e-6)
    # @1: the best item first is perfect
    assert ndcg_at_k(["a", "b", "c"], gains, 1) == pytest.approx(1.0)
    # @2 of [c, a]: (2 + 3/log2(3)) / (3 + 2/log2(3))
    expected = (2 + 3 / math.log2(3)) / (3 + 2 / math.log2(3))
    assert ndcg_at_k(["c", "a"], gains, 2) == pytest.approx(expected)


def test_ndcg_ideal_counts_relevant_items_not_retrieved() -> None:
    # one of two equally relevant items at rank 1: 1 / (1 + 1/log2(3))
    assert ndcg_at_k(["a"], {"a": 1.0, "b": 1.0}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ndcg_repeated_ids_count_once_and_no_gain_is_zero() -> None:
    # [a, a, b]: the second a is dropped, so b sits at rank 2
    assert ndcg_at_k(["a", "a", "b"], {"b": 1.0}, 2) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["a", "b"], {}, 10) == 0.0
    assert ndcg_at_k(["a", "b"], {"a": 0.0}, 10) == 0.0


def test_recall_by_hand() -> None:
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, 3) == pytest.approx(2 / 3)
    assert recall_at_k([], {"a"}, 5) == 0.0


def test_mrr_by_hand() -> None:
    assert mrr_at_k(["x", "y", "a"], {"a"}, 3) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a"}, 2) == 0.0
    assert mrr_at_k(["b", "a"], {"a", "b"}, 10) == 1.0


@pytest.mark.parametrize("fn", [recall_at_k, mrr_at_k])
def test_undefined_metrics_raise(fn: object) -> None:
    with pytest.raises(InvalidInput, match="no relevant"):
        fn(["a"], set(), 5)  # type: ignore[operator]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_rejected(k: object) -> None:
    with pytest.raises(InvalidInput, match="positive int"):
        ndcg_at_k(["a"], {"a": 1.0}, k)  # type: ignore[arg-type]


def test_evidence_recall_needs_the_whole_text() -> None:
    context = "## Sources\n\n[1] (May) Alice: hi there, how are you?\n\n[2] (June) Bob: fine"
    assert evidence_recall(context, ["Alice: hi there, how are you?", "Bob: fine"]) == 1.0
    # a piece cut short is not evidence
    assert evidence_recall(context, ["Bob: fine thanks", "Alice: hi there"]) == 0.5
    with pytest.raises(InvalidInput):
        evidence_recall(context, [])


def test_percentiles_interpolate_linearly() -> None:
    values = [float(v) for v in range(1, 101)]
    # numpy's linear rule: p50 at position 49.5 -> 50.5, p95 at 94.05 -> 95.05
    assert percentiles(values) == pytest.approx({"p50": 50.5, "p95": 95.05})
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0}


def test_bootstrap_of_a_constant_ratio_is_exact() -> None:
    base = [0.1, 0.2, 0.3, 0.4]
    lift = paired_bootstrap_lift([2 * b for b in base], base, metric="ndcg@10")
    assert lift.relative == pytest.approx(1.0)
    assert lift.ci95 == pytest.approx((1.0, 1.0))
    assert lift.pairs == 4 and lift.resamples == 1000
    d = lift.as_dict()
    assert d["relative_pct"] == pytest.approx(100.0) and d["ci95"] == pytest.approx([1.0, 1.0])


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 200)
    treat = base + rng.normal(0.05, 0.2, 200)
    a = paired_bootstrap_lift(treat.tolist(), base.tolist(), seed=7)
    b = paired_bootstrap_lift(treat.tolist(), base.tolist(), seed=7)
    assert a == b
    assert a.relative is not None and a.ci95 is not None
    assert a.relative == pytest.approx(treat.mean() / base.mean() - 1)
    assert a.ci95[0] < a.relative < a.ci95[1]
    # pairing matters: the same numbers shuffled out of pairs give a wider interval
    unpaired = paired_bootstrap_lift(rng.permutation(treat).tolist(), base.tolist(), seed=7)
    assert unpaired.ci95 is not None
    assert (unpaired.ci95[1] - unpaired.ci95[0]) > (a.ci95[1] - a.ci95[0])


def test_bootstrap_edge_cases() -> None:
    zero = paired_bootstrap_lift([0.1, 0.2], [0.0, 0.0])
    assert zero.relative is None and zero.ci95 is None
    with pytest.raises(InvalidInput, match="equal-length"):
        paired_bootstrap_lift([0.1], [0.1, 0.2])
    with pytest.raises(InvalidInput, match="resamples"):
        paired_bootstrap_lift([0.1], [0.1], resamples=0)
