"""memp eval retrieval (and replay's ranking columns): metrics by hand on a tiny store, both
queries-file forms, trajectory ids, bad lines, a second embedder that leaves the store alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import FILES, memp, read_records

from memp_cli.eval import retrieval as ev
from memp_cli.eval.labels import mentions

# Four runs, one per line; the egg run failed. Under any sane ranking the query "heat some egg
# and put it in microwave." puts the egg memory first and the potato one second (the others share
# no content word with it).
RUNS = [
    ("t-egg", "heat some egg and put it in garbagecan.", "heat", False),
    ("t-potato", "heat some potato and put it in fridge.", "heat", True),
    ("t-mug", "put a clean mug in coffeemachine.", "clean", True),
    ("t-apple", "cool some apple and put it in countertop.", "cool", True),
]
QUERY = "heat some egg and put it in microwave."
# NDCG@3 of the ranking (grade 1, grade 2, 0): (1 + 3/log2 3) / (3 + 1/log2 3)
NDCG_12 = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture
def tiny(store: Path, tmp_path: Path) -> dict[str, str]:
    """The four runs ingested and distilled (failed runs too); task id -> memory id."""
    runs = [
        {
            "task_id": tid,
            "task": task,
            "task_type": ttype,
            "success": ok,
            "steps": [{"action": f"go to {tid}", "observation": "ok"}],
        }
        for tid, task, ttype, ok in RUNS
    ]
    memp("ingest", _write(tmp_path / "runs.jsonl", runs))
    memp("distill", "--policy", "trajectory", "--with-failures")
    by_task = {m["task"]: m["id"] for m in memp("list", "--json").jsonl()}
    return {tid: by_task[task] for tid, task, _, _ in RUNS}


def _eval(queries: Path, *args: Any, expect: int = 0) -> list[dict[str, Any]]:
    return memp("eval", "retrieval", "--queries", queries, "-k", "3", "--json", *args, expect=expect).jsonl()


def test_metrics_by_hand_for_both_query_forms(tiny: dict[str, str], tmp_path: Path) -> None:
    ranked = [r["id"] for r in memp("query", QUERY, "-k", "3", "--json").jsonl()]
    assert ranked[:2] == [tiny["t-egg"], tiny["t-potato"]]
    queries = _write(
        tmp_path / "q.jsonl",
        [
            # label form: heat memories are relevant, the one naming "potato" twice as much
            {"query": QUERY, "label": "heat", "object": "potato", "domain": "alfworld"},
            # explicit ids: a memory id (grade 2) and a task id standing for its memory (grade 1)
            {"query": QUERY + " now", "relevant": {tiny["t-potato"]: 2, "t-egg": 1}},
        ],
    )
    (row,) = _eval(queries, "--per-query")
    assert row["queries"] == 2 and row["embedder"] == "hash" and row["key"] == "query" and row["k"] == 3
    assert row["p1"] == 1.0
    assert row["pk"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["mrr"] == 1.0
    assert row["ndcg"] == pytest.approx(NDCG_12, abs=1e-4)
    assert row["fail1"] == 1.0  # the egg run failed
    assert row["p1_ci95"] == [1.0, 1.0]
    first = row["per_query"][0]
    assert first["line"] == 1 and first["domain"] == "alfworld" and first["relevant"] == 2
    assert row["per_query"][1]["line"] == 2 and row["per_query"][1]["ndcg"] == pytest.approx(
        NDCG_12, abs=1e-4
    )


def test_trajectory_ids_and_a_memorys_own_task(tiny: dict[str, str], tmp_path: Path) -> None:
    """A stored trajectory's id stands for the memories built from it; a query whose text is a
    memory's task is left out unless --include-seen."""
    mem = memp("show", tiny["t-potato"], "--json").jsonl()[0]
    traj = mem["provenance"]["trajectories"][0]
    queries = _write(
        tmp_path / "q.jsonl",
        [{"query": QUERY, "relevant": {traj: 1}}, {"task": RUNS[1][1], "task_type": "heat"}],
    )
    (row,) = _eval(queries)
    assert row["queries"] == 1 and row["left_out"]["seen"] == 1
    assert row["p1"] == 0.0 and row["mrr"] == 0.5  # the potato memory is second
    (row,) = _eval(queries, "--include-seen")
    assert row["queries"] == 2 and row["p1"] == 0.5


def test_a_trajectory_file_is_a_queries_file(built: Path) -> None:
    """task + task_type lines (the ingested file itself): every task is seen; repeats count once."""
    records = read_records(FILES["native"])
    rows = memp(
        "eval", "retrieval", "--queries", FILES["native"], "--include-seen", "--json", "--key", "query"
    ).jsonl()
    assert rows[0]["queries"] == len({r["task"].lower().rstrip(".") for r in records})
    assert rows[0]["left_out"]["seen"] == rows[0]["queries"]
    assert rows[0]["p1"] == 1.0  # its own memory (or a twin) comes first
    r = memp("eval", "retrieval", "--queries", FILES["native"], "--json", expect=3)
    assert "no query to evaluate" in r.stderr


def test_bad_lines_are_skipped_and_named(tiny: dict[str, str], tmp_path: Path) -> None:
    queries = _write(
        tmp_path / "q.jsonl",
        [
            {"query": QUERY, "label": "heat"},
            "{not json",
            "",
            {"query": "no label here"},
            {"query": QUERY + " again", "relevant": {"nope-1": 1}},
            {"query": QUERY + " twice", "relevant": {"nope-2": 1, tiny["t-egg"]: 1}},
        ],
    )
    r = memp("eval", "retrieval", "--queries", queries, "--json", expect=3)
    (row,) = r.jsonl()
    assert row["queries"] == 2 and row["left_out"] == {
        "seen": 0,
        "repeated": 0,
        "no_relevant": 1,
        "bad_lines": 2,
    }
    assert f"{queries}:2: not valid JSON" in r.stderr
    assert f'{queries}:4: no "label"' in r.stderr
    assert f"{queries}:5: no memory, trajectory or task has the id 'nope-1'" in r.stderr
    assert f"{queries}:6: no memory, trajectory or task has the id 'nope-2'" in r.stderr
    assert "2 bad lines skipped" in r.stderr


def fake_create(spec: Any) -> Any:
    """A second embedder for the tests: feature hashing under another name and dimension."""
    from memp_cli.backends.embedders.hashing import HashEmbedder

    e = HashEmbedder(64)
    e.name = "hash64"
    return e


def test_another_embedder_leaves_the_store_alone(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memp_cli.backends import embedders

    monkeypatch.setitem(embedders.REGISTRY, "hash64", "test_eval_retrieval:fake_create")
    memp("index", "sync")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in built.rglob("*") if p.is_file()}
    rows = memp(
        "eval",
        "retrieval",
        "--queries",
        FILES["native"].parent / "alfworld_valid_seen.jsonl",
        "--embedder",
        "hash64",
        "--embedder",
        "hash",
        "--key",
        "query",
        "--key",
        "random",
        "--lexical-weight",
        "0",
        "--lexical-weight",
        "1",
        "--seeds",
        "3",
        "--bootstrap",
        "200",
        "--json",
    ).jsonl()
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in built.rglob("*") if p.is_file()}
    assert after == before
    assert [(r["embedder"], r["key"], r["lexical_weight"]) for r in rows] == [
        ("hash64", "query", 0.0),
        ("hash64", "query", 1.0),
        ("hash64", "random", None),
        ("hash", "query", 0.0),
        ("hash", "query", 1.0),
        ("hash", "random", None),
    ]
    keys = {"p1", "pk", "mrr", "ndcg", "fail1"}
    for r in rows:
        assert keys | {f"{k}_ci95" for k in keys} <= r.keys()
        assert all(r[f"{k}_ci95"][0] <= r[k] <= r[f"{k}_ci95"][1] for k in keys)
    # embeddings differ (w=0); BM25 alone (w=1) ranks by the same texts, and random is the floor
    assert rows[1]["p1"] == rows[4]["p1"]
    assert rows[2]["p1"] < rows[4]["p1"] and rows[5]["p1"] < rows[4]["p1"]


def test_a_table_on_a_terminal(tiny: dict[str, str], tmp_path: Path) -> None:
    from memp_cli.cli.output import env

    queries = _write(tmp_path / "q.jsonl", [{"query": QUERY, "label": "heat", "object": "potato"}])
    with env.swap(stdout_isatty=True):
        r = memp("eval", "retrieval", "--queries", queries, "-k", "3", "--per-query")
    assert (
        "NDCG@3" in r.stdout
        and "1.00 [1.00,1.00]" in r.stdout
        and "query w=0.25" in r.stdout
        and "heat" in r.stdout
    )


def test_replay_scores_each_batch() -> None:
    rows = memp(
        "eval",
        "replay",
        FILES["native"],
        "-b",
        "20",
        "--heldout",
        FILES["native"].parent / "alfworld_valid_seen.jsonl",
        "--json",
    ).jsonl()
    assert rows[0]["p1"] is None and rows[0]["ndcg10"] is None  # the first batch meets an empty store
    last = rows[-1]
    assert last["p1"] == last["hit_rate"] and last["heldout_p1"] == last["heldout_hit_rate"]
    assert 0 < last["heldout_ndcg10"] <= 1 and last["heldout_mrr"] >= last["heldout_p1"]


def test_parsing_and_grading() -> None:
    q = ev.parse_query({"task": "put a clean mug in coffeemachine.", "task_type": "clean"})
    assert (q.label, q.object) == ("clean", "mug")  # ALFWorld type: the target object
    q = ev.parse_query({"query": "book a hotel", "label": "travel"})
    assert q.object is None
    q = ev.parse_query({"query": "put a mug", "label": "put", "object": None})
    assert q.object is None
    for bad in (
        {"query": "x"},
        {"query": "x", "label": "a", "relevant": {"m": 1}},
        {"query": "x", "relevant": {"m": 1.5}},
        [],
    ):
        with pytest.raises(ValueError):
            ev.parse_query(bad)
    assert (
        mentions("Put two Boxes in cart", "box")
        and mentions("a mug.", "mugs")
        and not mentions("mugger", "mug")
    )
    m = ev.MemoryInfo("m1", "put some mugs in cabinet.", "put")
    assert ev.label_grade(ev.Query("x", "put", "mug"), m) == 2
    assert ev.label_grade(ev.Query("x", "put", "cup"), m) == 1
    assert ev.label_grade(ev.Query("x", "heat", "mug"), m) == 0
    scores = ev.query_scores(["a", "b", "c"], {"b": 2, "z": 1}, 3 + 1 / math.log2(3), {"a"}, k=3)
    assert scores[:3] == [0.0, pytest.approx(1 / 3), 0.5]
    assert scores[3] == pytest.approx((3 / math.log2(3)) / (3 + 1 / math.log2(3)))
    assert scores[4] == 1.0


def test_baselines_rank_by_one_signal(built: Path) -> None:
    """--baselines adds, per embedder, BM25 alone, the cosine alone and random, beside the
    store's own ranking; BM25 alone does not depend on the embedder."""
    queries = FILES["native"].parent / "alfworld_valid_seen.jsonl"
    common = ("--queries", queries, "--bootstrap", "200", "--seeds", "2", "--json")
    rows = memp("eval", "retrieval", *common, "--baselines").jsonl()
    assert [(r["key"], r["baseline"]) for r in rows] == [
        ("query", None),
        ("query", "bm25"),
        ("query", "cosine"),
        ("random", None),
    ]
    by = {r["baseline"] or r["key"]: r for r in rows}
    assert by["random"]["p1"] < by["query"]["p1"]
    assert by["bm25"]["p1"] != by["cosine"]["p1"] or by["bm25"]["ndcg"] != by["cosine"]["ndcg"]
