"""The three loaders on small files written here, each rule of its protocol checked."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pertinent import DocumentLoadError, PertinentError
from pertinent.eval.datasets import (
    DatasetError,
    cleverdon_gain,
    load_cranfield,
    load_locomo,
    load_movielens,
    normalize_evidence,
)

# --------------------------------------------------------------------------- Cranfield


def write_cranfield(root: Path, qrels: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    corpus = [
        {"id": "1", "title": "wing flow", "author": "a", "text": "lift of a wing in a slipstream"},
        {"id": "2", "title": "", "author": "b", "text": "boundary layer"},
        {"id": "3", "title": "shock", "author": "c", "text": "hypersonic shock waves"},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus) + "\n")
    queries = [{"id": "1", "text": "wing lift"}, {"id": "4", "text": "shock"}]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    default = "query_id\tdoc_id\tcleverdon_code\n1\t1\t1\n1\t2\t4\n1\t3\t-1\n4\t3\t3\n9\t1\t1\n"
    (root / "qrels.tsv").write_text(qrels if qrels is not None else default)
    return root


@pytest.mark.parametrize(
    ("code", "gain"), [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0), (5, 0.0), (-1, 0.0)]
)
def test_cleverdon_gains(code: int, gain: float) -> None:
    assert cleverdon_gain(code) == gain


def test_cranfield_items_gains_and_relevance(tmp_path: Path) -> None:
    data = load_cranfield(write_cranfield(tmp_path / "cran"))
    assert [i.text for i in data.items] == [
        "wing flow lift of a wing in a slipstream",
        "boundary layer",
        "shock hypersonic shock waves",
    ]
    q1, q4 = data.queries
    assert (q1.id, q1.text) == ("1", "wing lift")
    # code 1 -> 4, code 4 -> 1 (judged but not relevant), code -1 -> no gain
    assert dict(q1.gains) == {"1": 4.0, "2": 1.0}
    assert q1.relevant == frozenset({"1"})
    assert dict(q4.gains) == {"3": 2.0} and q4.relevant == frozenset({"3"})
    # the judgement of query 9 (not in queries.jsonl) is ignored
    assert data.counts["queries"] == 2 and data.counts["queries_with_relevant"] == 2
    assert q1.user_id is None and q1.exclude == ()


def test_cranfield_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"corpus\.jsonl") as info:
        load_cranfield(tmp_path / "missing")
    assert isinstance(info.value, DocumentLoadError) and isinstance(info.value, PertinentError)

    root = write_cranfield(tmp_path / "bad-doc", qrels="1\t99\t1\n")
    with pytest.raises(DatasetError, match=r"'99' is not in corpus\.jsonl"):
        load_cranfield(root)

    root = write_cranfield(tmp_path / "bad-json")
    (root / "queries.jsonl").write_text('{"id": "1", "text": "ok"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"queries.jsonl:2 is not valid JSON"):
        load_cranfield(root)

    root = write_cranfield(tmp_path / "bad-code", qrels="1\t1\tx\n")
    with pytest.raises(DatasetError, match="'x' is not an integer"):
        load_cranfield(root)


# --------------------------------------------------------------------------- LoCoMo


def write_locomo(path: Path) -> Path:
    sample = {
        "sample_id": "conv-x",
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bo",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a cat."},
                {
                    "speaker": "Bo",
                    "dia_id": "D1:2",
                    "text": "Nice!",
                    "img_url": ["http://example.invalid/cat.jpg"],
                    "blip_caption": "a photo of a cat",
                },
            ],
            "session_2_date_time": "10:37 am on 27 June, 2023",
            "session_2": [
                {"speaker": "Ann", "dia_id": "D2:1", "text": "We went hiking."},
                {"speaker": "Bo", "dia_id": "D2:2", "text": "Where?"},
            ],
            # a date without turns (the original data has these) is not a session
            "session_3_date_time": "9:00 am on 1 July, 2023",
        },
        "qa": [
            {"question": "What pet?", "answer": "cat", "evidence": ["D1:1"], "category": 1},
            {
                "question": "When hiking?",
                "answer": "June",
                "evidence": ["D:2:1; D01:02"],
                "category": 2,
            },
            {
                "question": "Adversarial?",
                "adversarial_answer": "x",
                "evidence": ["D1:1"],
                "category": 5,
            },
            {"question": "Nothing?", "answer": "-", "evidence": ["D9:9", "D"], "category": 3},
        ],
    }
    path.write_text(json.dumps([sample]))
    return path


def test_normalize_evidence() -> None:
    assert normalize_evidence(["D8:6; D9:17"]) == ["D8:6", "D9:17"]
    assert normalize_evidence(["D:11:26", "D30:05", "D", "", 7]) == ["D11:26", "D30:5"]
    assert normalize_evidence("D1:3 D1:3\tD2:4") == ["D1:3", "D2:4"]


def test_locomo_turns_and_questions(tmp_path: Path) -> None:
    data = load_locomo(write_locomo(tmp_path / "locomo.json"))
    assert [i.id for i in data.items] == [
        "conv-x/D1:1",
        "conv-x/D1:2",
        "conv-x/D2:1",
        "conv-x/D2:2",
    ]
    cat = data.items[1]
    assert cat.text == "Bo: Nice! [image: a photo of a cat]"
    assert cat.owner == "conv-x" and cat.title == "1:56 pm on 8 May, 2023"
    assert (
        cat.metadata["timestamp"] == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc).isoformat()
    )
    assert data.items[2].metadata["session"] == 2
    assert data.items[2].metadata["timestamp"].startswith("2023-06-27T10:37")

    assert [q.text for q in data.queries] == ["What pet?", "When hiking?"]
    hiking = data.queries[1]
    assert hiking.relevant == frozenset({"conv-x/D2:1", "conv-x/D1:2"})
    assert dict(hiking.gains) == {"conv-x/D1:2": 1.0, "conv-x/D2:1": 1.0}
    assert (hiking.category, hiking.user_id, hiking.owner) == ("2", "conv-x", "conv-x")
    assert data.counts["skipped_category"] == 1 and data.counts["skipped_no_evidence"] == 1


def test_locomo_rejects_other_shapes(tmp_path: Path) -> None:
    bad = tmp_path / "obj.json"
    bad.write_text('{"qa": []}')
    with pytest.raises(DatasetError, match="JSON list"):
        load_locomo(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DatasetError, match="not a UTF-8 JSON file"):
        load_locomo(broken)
    with pytest.raises(DatasetError, match="does not exist"):
        load_locomo(tmp_path / "none.json")


# --------------------------------------------------------------------------- MovieLens

MOVIES = """movieId,title,genres
1,Alpha (1990),Action|Comedy
2,Beta (1991),Action
3,Gamma (1992),Comedy|Drama
4,Delta (1993),Action|Drama
5,Epsilon (1994),Drama
6,Zeta (1995),(no genres listed)
7,"Eta, The (1996)",Action|Comedy
8,Theta (1997),Action|Drama
9,Iota (1998),Comedy
10,Kappa (1999),Action
"""

# User 1 (10 ratings, written out of time order): the first 8 by time are the history.
# Movies 10 and 4 share ts 800; file order puts 10 first, so 10 is history, 4 is test.
# User 2 has 3 ratings (too few to be a user, but their tags count); user 3 has 5.
RATINGS = """userId,movieId,rating,timestamp
1,7,5.0,900
1,1,5.0,100
1,2,1.0,200
1,3,3.0,300
1,5,4.5,300
1,6,2.0,400
1,8,4.0,500
1,9,3.5,600
1,10,2.5,800
1,4,4.0,800
2,1,4.0,10
2,2,4.0,20
2,3,4.0,30
3,1,4.0,1
3,2,4.0,2
3,3,4.0,3
3,4,4.0,4
3,5,4.0,5
"""

TAGS = """userId,movieId,tag,timestamp
1,1,Funny,150
1,3,Boring,900
2,1,funny ,50
2,1,Classic,60
"""


def write_movielens(root: Path, ratings: str = RATINGS, movies: str = MOVIES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.csv").write_text(movies)
    (root / "ratings.csv").write_text(ratings)
    (root / "tags.csv").write_text(TAGS)
    return root


def test_movielens_items_text_and_tags(tmp_path: Path) -> None:
    data = load_movielens(write_movielens(tmp_path / "ml"), min_ratings=5)
    text = {i.id: i.text for i in data.items}
    # tags: lowercased, distinct, sorted; user 1's tag after their history end is left out
    assert text["movie:1"] == "Alpha (1990). Genres: Action, Comedy. Tags: classic, funny."
    assert text["movie:3"] == "Gamma (1992). Genres: Comedy, Drama."
    assert text["movie:6"] == "Zeta (1995). Genres: (no genres listed)."
    assert text["movie:7"] == "Eta, The (1996). Genres: Action, Comedy."
    assert len(data.items) == 10


def test_movielens_split_events_and_queries(tmp_path: Path) -> None:
    data = load_movielens(write_movielens(tmp_path / "ml"), min_ratings=5)
    assert data.counts["users"] == 2 and data.counts["users_with_queries"] == 1
    events = data.histories["user-1"]
    # >= 4 like, <= 2 dislike, 2.5-3.5 nothing; in time order (3 before 5 at ts 300)
    assert [(e.item_id, e.kind) for e in events] == [
        ("movie:1", "like"),
        ("movie:2", "dislike"),
        ("movie:5", "like"),
        ("movie:6", "dislike"),
        ("movie:8", "like"),
    ]
    assert events[0].timestamp == datetime.fromtimestamp(100, tz=timezone.utc)
    (query,) = data.queries
    # test part: movies 4 (Action|Drama) and 7 (Action|Comedy), both liked
    assert query.text == "Action movies" and query.user_id == "user-1"
    assert query.relevant == frozenset({"movie:4", "movie:7"})
    assert set(query.exclude) == {f"movie:{m}" for m in (1, 2, 3, 5, 6, 8, 9, 10)}
    assert query.now == datetime.fromtimestamp(800, tz=timezone.utc)


def test_movielens_ties_keep_file_order(tmp_path: Path) -> None:
    swapped = RATINGS.replace("1,10,2.5,800\n1,4,4.0,800\n", "1,4,4.0,800\n1,10,2.5,800\n")
    data = load_movielens(write_movielens(tmp_path / "ml", ratings=swapped), min_ratings=5)
    # now movie 4 is history and 10 is test: only movie 7 is liked in the test part
    assert data.queries == ()
    assert data.counts["users_with_queries"] == 0


def test_movielens_errors(tmp_path: Path) -> None:
    root = write_movielens(tmp_path / "unknown", ratings=RATINGS + "1,99,4.0,1000\n")
    with pytest.raises(DatasetError, match=r"movie '99' is not in movies\.csv"):
        load_movielens(root, min_ratings=5)
    root = write_movielens(tmp_path / "column", movies="movieId,name\n1,x\n")
    with pytest.raises(DatasetError, match="lacks the column"):
        load_movielens(root)
    root = write_movielens(tmp_path / "rating", ratings=RATINGS + "1,3,good,1000\n")
    with pytest.raises(DatasetError, match="'good' is not a number"):
        load_movielens(root, min_ratings=5)
    with pytest.raises(DatasetError, match=r"movies\.csv"):
        load_movielens(tmp_path / "nowhere")


def test_subset_keeps_needed_histories(tmp_path: Path) -> None:
    data = load_movielens(write_movielens(tmp_path / "ml"), min_ratings=5)
    assert data.subset(None) is data
    none = data.subset(0)
    assert none.queries == () and dict(none.histories) == {}
