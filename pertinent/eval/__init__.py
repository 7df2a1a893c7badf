"""The evaluation harness: three protocols on data written by others, every method side
by side on one index, and a small search for the scoring settings.

    from pertinent.eval import run_protocol
    report = run_protocol("cranfield", "path/to/cranfield")
    print(report.table())

The command line is ``pertinent eval cranfield|locomo|movielens --data PATH`` and
``pertinent tune movielens|locomo --data PATH``; docs/evaluation.md describes the
protocols and holds the measured tables. Not imported by ``import pertinent``: it is
a tool for the project's own measurements.
"""

from pertinent.eval.datasets import (
    DatasetError,
    EvalItem,
    EvalQuery,
    EvalSet,
    HistoryEvent,
    load_cranfield,
    load_locomo,
    load_movielens,
)
from pertinent.eval.metrics import (
    Lift,
    evidence_recall,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_lift,
    recall_at_k,
)
from pertinent.eval.protocols import PROTOCOLS, Protocol
from pertinent.eval.runner import METHODS, EvalReport, run_protocol
from pertinent.eval.tune import GRIDS, TuneReport, tune

__all__ = [
    "GRIDS",
    "METHODS",
    "PROTOCOLS",
    "DatasetError",
    "EvalItem",
    "EvalQuery",
    "EvalReport",
    "EvalSet",
    "HistoryEvent",
    "Lift",
    "Protocol",
    "TuneReport",
    "evidence_recall",
    "load_cranfield",
    "load_locomo",
    "load_movielens",
    "mrr_at_k",
    "ndcg_at_k",
    "paired_bootstrap_lift",
    "recall_at_k",
    "run_protocol",
    "tune",
]
