"""Each protocol end to end on a tiny slice written here: real MiniLM, real LanceDB,
real tiktoken. The full evaluations are never run in CI (docs/evaluation.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from pertinent import InvalidInput, Settings
from pertinent.cli import main
from pertinent.embeddings import Embedder
from pertinent.eval.datasets import load_cranfield, load_locomo, load_movielens
from pertinent.eval.replica import SearchReplica
from pertinent.eval.runner import (
    build_index,
    method_functions,
    parse_overrides,
    run_protocol,
    settings_with,
)
from pertinent.eval.tune import parse_grid, tune
from pertinent.stores.base import SearchFilter

REQUIRED = {"dataset", "queries", "methods", "lift"}

# --------------------------------------------------------------------------- fixtures


def write_cranfield(root: Path) -> Path:
    root.mkdir(parents=True)
    docs = {
        "1": ("wing slipstream", "the lift of a wing inside a propeller slipstream"),
        "2": ("boundary layer", "laminar boundary layer on a flat plate at low speed"),
        "3": ("shock waves", "hypersonic flow and the shock wave ahead of a blunt nose"),
        "4": ("heat transfer", "aerodynamic heating of a re-entry vehicle surface"),
        "5": ("flutter", "aeroelastic flutter of thin wings at transonic speed"),
        "6": ("buckling", "buckling of thin cylindrical shells under axial load"),
    }
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"id": k, "title": t, "text": x}) for k, (t, x) in docs.items())
    )
    queries = [
        {"id": "1", "text": "lift of wings in a propeller slipstream"},
        {"id": "2", "text": "heating of re-entry vehicles"},
        {"id": "3", "text": "flutter of wings"},
    ]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (root / "qrels.tsv").write_text(
        "query_id\tdoc_id\tcleverdon_code\n1\t1\t1\n1\t5\t3\n2\t4\t2\n3\t5\t1\n3\t1\t4\n"
    )
    return root


def write_locomo(path: Path) -> Path:
    def conv(sample_id: str, a: str, b: str, lines: Sequence[tuple[str, str]]) -> dict[str, object]:
        turns = [
            {"speaker": a if i % 2 == 0 else b, "dia_id": dia, "text": text}
            for i, (dia, text) in enumerate(lines)
        ]
        return {
            "sample_id": sample_id,
            "conversation": {
                "speaker_a": a,
                "speaker_b": b,
                "session_1_date_time": "1:56 pm on 8 May, 2023",
                "session_1": [t for t in turns if t["dia_id"].startswith("D1:")],
                "session_2_date_time": "10:37 am on 27 June, 2023",
                "session_2": [t for t in turns if t["dia_id"].startswith("D2:")],
            },
            "qa": [],
        }

    one = conv(
        "conv-1",
        "Ann",
        "Bo",
        [
            ("D1:1", "I adopted a grey cat called Miso last week."),
            ("D1:2", "Lovely! I started training for a marathon in October."),
            ("D2:1", "We went hiking in the Alps with my sister."),
            ("D2:2", "I finished the marathon in four hours."),
        ],
    )
    one["qa"] = [
        {
            "question": "What is the name of Ann's cat?",
            "answer": "Miso",
            "evidence": ["D1:1"],
            "category": 1,
        },
        {
            "question": "Where did Ann go hiking?",
            "answer": "Alps",
            "evidence": ["D2:01"],
            "category": 4,
        },
    ]
    two = conv(
        "conv-2",
        "Cy",
        "Di",
        [
            ("D1:1", "My cat knocked over the plant again."),
            ("D1:2", "I am learning to bake sourdough bread."),
            ("D2:1", "The sourdough came out flat."),
        ],
    )
    two["qa"] = [
        {
            "question": "What is Di learning to bake?",
            "answer": "sourdough",
            "evidence": ["D1:2"],
            "category": 2,
        },
    ]
    path.write_text(json.dumps([one, two]))
    return path


GENRES = {
    "Sci-Fi": "Space Voyage",
    "Romance": "Love Letters",
    "Comedy": "Funny Business",
    "Horror": "Night Terror",
}


def write_movielens(root: Path) -> Path:
    """60 movies, two users with 45 ratings each and opposite tastes."""
    root.mkdir(parents=True)
    movies = ["movieId,title,genres"]
    ids: dict[str, list[int]] = {}
    n = 0
    for genre, title in GENRES.items():
        for i in range(15):
            n += 1
            movies.append(f"{n},{title} {i + 1} ({1990 + i}),{genre}")
            ids.setdefault(genre, []).append(n)
    ratings = ["userId,movieId,rating,timestamp"]
    tastes = {
        "1": {"Sci-Fi": 5.0, "Romance": 1.0, "Comedy": 3.0},
        "2": {"Horror": 5.0, "Comedy": 1.0, "Romance": 3.0},
    }
    for user, taste in tastes.items():
        order = [(g, m) for i in range(15) for g in taste for m in [ids[g][i]]]
        for ts, (genre, movie) in enumerate(order, start=1):
            ratings.append(f"{user},{movie},{taste[genre]},{1_500_000_000 + 86400 * ts}")
    (root / "movies.csv").write_text("\n".join(movies) + "\n")
    (root / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,Classic,1500000001\n")
    return root


def run(name: str, data: Path, embedder: Embedder, tmp_path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    return run_protocol(
        name,
        data,
        embedder=embedder,
        use_cache=False,
        workdir=tmp_path,
        progress=False,
        resamples=200,
        **kwargs,  # type: ignore[arg-type]
    )


def check_shape(report: dict[str, object], methods: Sequence[str]) -> None:
    assert set(report) >= REQUIRED
    assert list(report["methods"]) == list(methods)  # type: ignore[call-overload]
    for values in report["methods"].values():  # type: ignore[attr-defined]
        assert set(values["latency_ms"]) == {"p50", "p95"}
        assert 0 <= values["latency_ms"]["p50"] <= values["latency_ms"]["p95"]
        for key, v in values.items():
            if key not in ("latency_ms", "counted"):
                assert 0.0 <= v <= 1.0, (key, v)
    assert report["commit"] is None or isinstance(report["commit"], str)
    json.dumps(report)  # plain JSON all the way down


# --------------------------------------------------------------------------- protocols


def test_cranfield_cold_user_gets_exactly_hybrid(tmp_path: Path, embedder: Embedder) -> None:
    data = write_cranfield(tmp_path / "cran")
    report = run("cranfield", data, embedder, tmp_path, overrides={"mmr_lambda": 1.0})
    d = report.as_dict()
    check_shape(d, ["bm25", "vector", "hybrid", "personalized"])
    assert d["queries"] == 3 and d["counts"]["documents"] == 6
    assert set(d["methods"]["hybrid"]) >= {"ndcg@10", "recall@100", "mrr@10"}
    # a user with no events: the personalized list is the hybrid list, query by query
    assert d["checks"]["personalized_same_ranking_as_hybrid"] == 1.0
    assert d["lift"]["relative"] == 0.0 and d["lift"]["ci95"] == [0.0, 0.0]
    # the obvious answers are found: wing/slipstream doc first for query 1
    assert report.per_query["hybrid"]["mrr@10"][0] == 1.0
    assert d["config"]["settings"]["candidates"] == 100  # the protocol's pool
    assert d["config"]["settings"]["mmr_lambda"] == 1.0


def test_locomo_isolates_conversations_and_packs_evidence(
    tmp_path: Path, embedder: Embedder
) -> None:
    path = write_locomo(tmp_path / "locomo.json")
    report = run("locomo", path, embedder, tmp_path)
    d = report.as_dict()
    check_shape(d, ["bm25", "vector", "hybrid", "personalized"])
    assert d["queries"] == 3
    # a whole conversation fits in 1000 tokens, and every method returns all its turns
    for m in ("vector", "hybrid", "personalized"):
        assert d["methods"][m]["evidence_recall@1000tok"] == 1.0
    assert set(d["per_category"]["hybrid"]) == {"1", "2", "4"}
    assert d["per_category"]["hybrid"]["1"]["queries"] == 1

    evalset = load_locomo(path)
    settings = settings_with(Settings(), {"candidates": 100, "query_cache_size": 0})
    index = build_index(
        evalset, tmp_path / "store", settings, embedder, cache_dir=None, progress=False
    )
    try:
        fns = method_functions(index, settings, 100, None)
        for q in evalset.queries:
            for name, fn in fns.items():
                results = fn(q)
                owners = {r.chunk.owner for r in results}
                assert owners == {q.owner}, (name, q.id, owners)
    finally:
        index.close()


class OverlapReranker:
    """Scores a passage by the query words it contains: a real (if simple) reranker."""

    def score(self, query: str, texts: Sequence[str]) -> Sequence[float]:
        words = set(query.lower().split())
        return [float(len(words & set(t.lower().split()))) for t in texts]


def test_movielens_histories_exclusions_and_rerank(tmp_path: Path, embedder: Embedder) -> None:
    data = write_movielens(tmp_path / "ml")
    report = run("movielens", data, embedder, tmp_path, reranker=OverlapReranker())
    d = report.as_dict()
    check_shape(d, ["bm25", "vector", "hybrid", "personalized", "personalized+rerank"])
    assert d["queries"] == 2 and d["counts"]["users_with_queries"] == 2
    assert d["lift"]["metric"] == "ndcg@10" and d["lift"]["pairs"] == 2
    assert d["checks"]["users_with_history"] == 2
    # with 30 events per user the profile acts: rankings differ from hybrid
    assert d["checks"]["personalized_same_ranking_as_hybrid"] < 1.0

    evalset = load_movielens(data)
    settings = settings_with(Settings(), {"candidates": 100, "query_cache_size": 0})
    index = build_index(
        evalset, tmp_path / "store", settings, embedder, cache_dir=None, progress=False
    )
    try:
        fns = method_functions(index, settings, 100, None)
        for q in evalset.queries:
            for name, fn in fns.items():
                got = {r.chunk.doc_id for r in fn(q)}
                assert got and not (got & set(q.exclude)), name
    finally:
        index.close()


@pytest.mark.parametrize("kind", ["cranfield", "locomo"])
def test_replica_matches_the_store(kind: str, tmp_path: Path, embedder: Embedder) -> None:
    # Texts without BM25 ties: among equal scores LanceDB's order is its own, and the
    # replica's top-k could hold other (equally scored) items.
    if kind == "cranfield":
        evalset = load_cranfield(write_cranfield(tmp_path / "data"))
    else:
        evalset = load_locomo(write_locomo(tmp_path / "data.json"))
    settings = settings_with(Settings(), {"query_cache_size": 0})
    index = build_index(
        evalset, tmp_path / "store", settings, embedder, cache_dir=None, progress=False
    )
    try:
        store = index.px.store
        replica = SearchReplica(store, [c for cs in index.chunks_of.values() for c in cs])
        first = evalset.items[0].id
        for q in evalset.queries:
            vec = embedder.embed_query(q.text)
            for exclude in ((), index.chunk_ids((first,))):
                where = SearchFilter(user_id=q.owner, exclude_ids=exclude)
                for k in (2, 50):
                    a = store.hybrid_search(q.text, vec, k=k, alpha=0.5, where=where)
                    b = replica.hybrid_search(q.text, vec, k=k, alpha=0.5, where=where)
                    assert [h.id for h in a] == [h.id for h in b]
                    assert [h.hybrid for h in a] == pytest.approx([h.hybrid for h in b], abs=1e-5)
                    kw = store.keyword_search(q.text, k=k, where=where)
                    assert [h.id for h in kw] == [
                        h.id for h in replica.keyword_search(q.text, k=k, where=where)
                    ]
                    dense = store.vector_search(vec, k=k, where=where)
                    assert [h.id for h in dense] == [
                        h.id for h in replica.vector_search(vec, k=k, where=where)
                    ]
    finally:
        index.close()


def test_tune_finds_settings_on_a_slice(tmp_path: Path, embedder: Embedder) -> None:
    data = write_movielens(tmp_path / "ml")
    report = tune(
        "movielens",
        data,
        embedder=embedder,
        grid={"rho": (0.0, 1.0), "weights.user": (0.5, 4.0)},
        params=["rho", "weights.user"],
        rounds=1,
        use_cache=False,
        workdir=tmp_path,
        progress=False,
        resamples=100,
    )
    d = report.as_dict()
    assert d["queries"] == 2 and d["objective"] == "ndcg@10"
    assert d["best_score"] >= d["start_score"]
    assert max(t["score"] for t in d["trials"]) == pytest.approx(d["best_score"])
    # every grid value of the changed parameters was tried once from the start point
    tried_rho = {t["overrides"].get("rho") for t in d["trials"]}
    assert {0.0, 1.0} <= tried_rho
    assert set(d["halves"]) == {"half A", "half B"}
    assert set(d["grid"]) == {"rho", "weights.user"} and len(d["trials"]) <= 5
    assert "--set" in report.summary()
    with pytest.raises(InvalidInput, match="No grid values for nope"):
        tune("movielens", data, embedder=embedder, params=["nope"], use_cache=False)


# --------------------------------------------------------------------------- CLI


def test_cli_eval_writes_json_and_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_cranfield(tmp_path / "cran")
    out = tmp_path / "results.json"
    cache = tmp_path / "cache"
    argv = ["eval", "cranfield", "--data", str(data), "--out", str(out), "--cache", str(cache)]
    assert main([*argv, "--no-progress", "--methods", "bm25,hybrid,personalized"]) == 0
    printed = capsys.readouterr().out
    assert "cranfield: 3 queries" in printed and "lift personalized vs hybrid" in printed
    first = json.loads(out.read_text())
    check_shape(first, ["bm25", "hybrid", "personalized"])
    assert first["counts"]["embedding_cache"]["misses"] == first["counts"]["chunks"]
    # the second run reads every document vector from the cache
    assert main([*argv, "--no-progress", "--set", "alpha=0.7", "--format", "markdown"]) == 0
    assert "| method |" in capsys.readouterr().out
    second = json.loads(out.read_text())
    assert second["counts"]["embedding_cache"]["misses"] == 0
    assert second["config"]["settings"]["alpha"] == 0.7
    assert "--set alpha=0.7" in second["config"]["command"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "movielens", "--data", str(tmp_path / "none")]) == 2
    assert "DatasetError" in capsys.readouterr().err
    data = write_cranfield(tmp_path / "cran")
    assert main(["eval", "cranfield", "--data", str(data), "--set", "nope=1"]) == 2
    assert "Unknown setting 'nope'" in capsys.readouterr().err
    assert main(["eval", "cranfield", "--data", str(data), "--set", "alpha=7"]) == 2
    assert "InvalidInput" in capsys.readouterr().err


def test_override_and_grid_parsing() -> None:
    assert parse_overrides(["weights.user=2", "mmr_lambda=1", "embedding_model=x"]) == {
        "weights.user": 2,
        "mmr_lambda": 1,
        "embedding_model": "x",
    }
    assert parse_grid(["rho=0,0.5"]) == {"rho": (0, 0.5)}
    with pytest.raises(InvalidInput):
        parse_overrides(["weights.user"])
    with pytest.raises(InvalidInput):
        parse_grid(["rho="])
    s = settings_with(Settings(), {"weights.user": 3, "half_life_days": 7})
    assert s.weights.user == 3 and s.half_life_days == 7
    with pytest.raises(InvalidInput, match="no sub-fields"):
        settings_with(Settings(), {"alpha.x": 1})
