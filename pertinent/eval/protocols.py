"""The three protocols as data: which loader, which metrics, how deep, which lift.

Kept apart from the runner so that adding a protocol (or another split of one) is a
new entry here, not a new code path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pertinent.errors import InvalidInput
from pertinent.eval.datasets import EvalSet, load_cranfield, load_locomo, load_movielens

__all__ = ["PROTOCOLS", "Protocol", "get_protocol"]


@dataclass(frozen=True)
class Protocol:
    """How one data set is measured.

    `depth` is how many results every method returns per query (the deepest metric
    needs it); `overrides` are the settings every method of this protocol runs with
    unless the caller sets them (see docs/evaluation.md for why each one is there).
    `budgets` are the token budgets of `evidence_recall@<n>tok`.
    """

    name: str
    load: Callable[[Path], EvalSet]
    metrics: tuple[str, ...]
    lift_metric: str
    depth: int
    budgets: tuple[int, ...] = ()
    per_category: bool = False
    histories: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_help: str = ""


# Both legs of the reference hybrid fuse their top 100; the personalized pool matches it,
# so a user without history gets exactly the hybrid list and recall@100 is defined.
_POOL = {"candidates": 100}

PROTOCOLS: dict[str, Protocol] = {
    "cranfield": Protocol(
        name="cranfield",
        load=load_cranfield,
        metrics=("ndcg@10", "recall@100", "mrr@10"),
        lift_metric="ndcg@10",
        depth=100,
        overrides=_POOL,
        data_help="directory with corpus.jsonl, queries.jsonl, qrels.tsv",
    ),
    "locomo": Protocol(
        name="locomo",
        load=load_locomo,
        metrics=(
            "recall@5",
            "recall@10",
            "ndcg@10",
            "evidence_recall@1000tok",
            "evidence_recall@2000tok",
        ),
        lift_metric="recall@10",
        depth=100,
        budgets=(1000, 2000),
        per_category=True,
        overrides=_POOL,
        data_help="a LoCoMo JSON file (locomo10.json shape)",
    ),
    "movielens": Protocol(
        name="movielens",
        load=load_movielens,
        metrics=("ndcg@10", "recall@10", "recall@50"),
        lift_metric="ndcg@10",
        depth=100,
        histories=True,
        overrides=_POOL,
        data_help="directory with movies.csv, ratings.csv, tags.csv",
    ),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InvalidInput(
            f"Unknown evaluation protocol {name!r}; use one of: {', '.join(PROTOCOLS)}."
        ) from None
