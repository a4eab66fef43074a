"""The three retrieval keys of ``memp query`` (query, avefact, random) on ALFWorld tasks.

Run (under a minute on one core; the minilm model is downloaded to ~/.cache/memp on first use)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/eval_keys.py [--data-dir DIR] [--out FILE]

``--data-dir`` defaults to ``MEMP_BENCH_DATA``, else ``shared/data`` beside the repository.

What it does (see benchmarks/README.md, "eval_keys.py"):

1. Builds one store per embedder (hash, minilm) with the real ``memp`` CLI from
   ``alfworld_train_replay.jsonl`` (273 runs, failed ones kept: memp's default),
   ``memp distill --policy trajectory``: memories with empty ``keywords``, so the index takes
   each memory's keywords from the built-in extractor (``extract_keywords(task)``).
2. Queries: the distinct ALFWorld task texts of ``alfworld_agentinstruct_corpus.jsonl`` and
   ``alfworld_react_exemplars.jsonl`` that are not memory task texts ("test"; the
   ``alfworld_valid_seen_replay.jsonl`` tasks that are not memory tasks are reported too, as
   "valid"). Query keywords: the built-in extractor (no LLM).
3. Keys, all through memp's own :class:`memp_cli.retrieve.retriever.Retriever` (``k=10``,
   ``min_score=-1``): ``query`` with ``lexical_weight`` 0 (embeddings only) and memp's default
   (fused with BM25), ``avefact``, and ``random`` (mean over 10 seeds).
4. Metrics, means over queries: task-type P@1, P@3, MRR@10, NDCG@10 (graded: 2 = same type and
   same target object, 1 = same type), fail@1 (the top memory is a failed run) and tie@1 (the
   first two scores are equal, so the order between them is the memory-id tie-break).
   Paired bootstrap 95% intervals for avefact minus each query variant.

The task-type rule, target-object rule and metrics are memp's (``memp_cli.eval``), the store
building and query sets ``benchmarks/eval_retrieval.py``'s (imported, not copied). Prints a table and writes
``benchmarks/results/eval_keys.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import eval_retrieval as er  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from memp_cli import index as index_mod  # noqa: E402
from memp_cli.build.builtin.keywords import extract_keywords  # noqa: E402
from memp_cli.config import RetrievalConfig  # noqa: E402
from memp_cli.eval.labels import norm_task  # noqa: E402
from memp_cli.model.memory import Memory  # noqa: E402
from memp_cli.retrieve.retriever import Retriever  # noqa: E402
from memp_cli.store import store_embedder  # noqa: E402

K = er.K
METRICS = ("p1", "p3", "mrr", "ndcg10", "top1_failed", "tie1")
SHOWN = ("P@1", "P@3", "MRR", "NDCG@10", "fail@1", "tie@1")


def evaluate(
    retriever: Retriever,
    queries: list[dict[str, Any]],
    meta: dict[str, dict[str, Any]],
    ideal: dict[er.TaskLabel, float],
) -> tuple[np.ndarray, float]:
    """Per-query metric rows (queries x METRICS) and the seconds ``scored`` took.

    The ranking is ``Retriever.scored`` cut to k (what ``search`` returns; :func:`er.check_search`
    confirms it once per key).
    """
    ids = retriever.index.state.ids
    t0 = time.perf_counter()
    scored = retriever.scored([q["text"] for q in queries])
    secs = time.perf_counter() - t0
    rows = []
    for q, ranked in zip(queries, scored, strict=True):
        kept = ranked[: retriever.k]
        m = er.query_metrics(q, [ids[r[0]] for r in kept], [r[1] for r in kept], meta, ideal)
        m["tie1"] = float(len(kept) > 1 and abs(kept[0][1] - kept[1][1]) < 1e-9)
        if retriever.key == "random":
            m["tie1"] = float("nan")
        rows.append([m[name] for name in METRICS])
    return np.array(rows, dtype=np.float64), secs


def summary(rows: np.ndarray) -> dict[str, float]:
    return {name: round(float(rows[:, i].mean()), 4) for i, name in enumerate(METRICS)}


def fmt_row(label: str, s: dict[str, float], ms: float | None = None) -> str:
    cells = "".join(f"{s[m]:>9.3f}" if s[m] == s[m] else f"{'-':>9}" for m in METRICS)
    return f"{label:<38}{cells}" + (f"{ms:>10.2f}" if ms is not None else f"{'-':>10}")


def load_queries(data_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    mem_tasks = {norm_task(r["task"]) for r in er.read_jsonl(data_dir / er.MEMORIES_FILE)}
    test: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    for f in er.TEST_FILES:
        d = er.distinct_tasks(er.read_jsonl(data_dir / f), f)
        kept = {k: q for k, q in d.items() if k not in mem_tasks and k not in test}
        info[f] = {"distinct_tasks": len(d), "kept": len(kept)}
        test.update(kept)
    valid_all = er.distinct_tasks(er.read_jsonl(data_dir / er.TUNE_FILE), er.TUNE_FILE)
    valid = [q for k, q in valid_all.items() if k not in mem_tasks]
    info[er.TUNE_FILE] = {"distinct_tasks": len(valid_all), "kept": len(valid)}
    return {"test": list(test.values()), "valid": valid}, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=er.DEFAULT_DATA, help=f"default {er.DEFAULT_DATA}")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "eval_keys.json")
    ap.add_argument("--embedders", default="hash,minilm", help="comma-separated (default hash,minilm)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    sets, query_info = load_queries(args.data_dir)
    w_default = RetrievalConfig().lexical_weight
    variants: list[tuple[str, dict[str, Any]]] = [
        ("query w=0 (embeddings only)", {"key": "query", "lexical_weight": 0.0}),
        (f"query w={w_default:g} (default, fused)", {"key": "query", "lexical_weight": w_default}),
        ("avefact", {"key": "avefact"}),
        ("random", {"key": "random"}),
    ]
    results: dict[str, Any] = {}
    per_query: dict[tuple[str, str, str], np.ndarray] = {}
    store_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="memp-eval-keys-") as tmp:
        for emb_name in embedders:
            t0 = time.perf_counter()
            store = er.build_store(Path(tmp) / emb_name, emb_name, args.data_dir / er.MEMORIES_FILE, False)
            cached = er.CachedEmbedder(store_embedder(store))
            idx = index_mod.load(store, keywords=True)
            assert idx is not None and idx.has_keywords and index_mod.is_fresh(store, idx.state)
            meta: dict[str, dict[str, Any]] = {}
            with_keywords = builtin_keywords = 0
            for m in store.iter_memories():
                assert isinstance(m, Memory), m
                with_keywords += bool(m.keywords)
                builtin_keywords += index_mod.memory_keywords(m) == extract_keywords(m.task)
                meta[m.id] = er.memory_meta(m)
            kwi = idx.keyword_index()
            store_info[emb_name] = {
                "memories": len(meta),
                "memories_with_keywords_in_file": with_keywords,
                "memories_whose_keywords_are_extract_keywords_of_task": builtin_keywords,
                "distinct_keywords": len(kwi.live()),
                "mean_keywords_per_memory": round(float(np.diff(kwi.offsets).mean()), 2),
                "build_seconds": round(time.perf_counter() - t0, 1),
            }
            for _label, kw in variants:
                if kw["key"] != "random":
                    er.check_search(
                        Retriever(index=idx, embedder=cached, k=K, min_score=-1.0, **kw), sets["test"]
                    )
            for set_name, qs in sets.items():
                ideal = er.ideal_dcgs(qs, meta)
                out: dict[str, Any] = {"n_queries": len(qs)}
                for label, kw in variants:
                    if kw["key"] == "random":
                        runs = [
                            evaluate(
                                Retriever(index=idx, embedder=cached, k=K, min_score=-1.0, seed=s, **kw),
                                qs,
                                meta,
                                ideal,
                            )
                            for s in er.RANDOM_SEEDS
                        ]
                        rows = np.mean([r for r, _ in runs], axis=0)
                        secs = float(np.mean([s for _, s in runs]))
                    else:
                        # warm the query-vector cache first: time the ranking, not the embedder
                        r = Retriever(index=idx, embedder=cached, k=K, min_score=-1.0, **kw)
                        evaluate(r, qs, meta, ideal)
                        rows, secs = evaluate(r, qs, meta, ideal)
                    per_query[(emb_name, set_name, label)] = rows
                    out[label] = {**summary(rows), "ms_per_query": round(1000 * secs / len(qs), 3)}
                if set_name == "test":
                    types = np.array([q["type"] for q in qs])
                    out["p1_by_type"] = {
                        label: {
                            t: round(float(per_query[(emb_name, set_name, label)][types == t, 0].mean()), 3)
                            for t in sorted(set(types.tolist()))
                        }
                        for label, _ in variants
                    }
                    out["avefact_minus"] = {
                        label: er.paired_bootstrap(
                            per_query[(emb_name, set_name, "avefact")], per_query[(emb_name, set_name, label)]
                        )
                        for label, kw in variants
                        if kw["key"] == "query"
                    }
                results.setdefault(emb_name, {})[set_name] = out
            print(
                f"[{emb_name}] {len(meta)} memories, evaluated by {time.perf_counter() - t_start:.0f}s",
                file=sys.stderr,
            )

    head = f"{'':<38}" + "".join(f"{m:>9}" for m in SHOWN) + f"{'ms/query':>10}"
    for set_name, qs in sets.items():
        print(
            f"\n== {set_name}: {len(qs)} new ALFWorld tasks, {store_info[embedders[0]]['memories']} memories"
        )
        print(head)
        for emb_name in embedders:
            for label, _ in variants:
                s = results[emb_name][set_name][label]
                print(fmt_row(f"{emb_name:<6} {label}", s, s["ms_per_query"]))
    for emb_name in embedders:
        print(f"\n-- test, {emb_name}: avefact minus query (95% bootstrap interval)")
        for label, d in results[emb_name]["test"]["avefact_minus"].items():
            print(
                f"  vs {label:<30}"
                + "  ".join(
                    f"{m} {d[m]['diff']:+.3f} [{d[m]['ci95'][0]:+.3f},{d[m]['ci95'][1]:+.3f}]"
                    for m in ("p1", "ndcg10")
                )
            )
        print(f"  P@1 by type: {results[emb_name]['test']['p1_by_type']}")
    examples = [q["text"] for q in sets["test"][:3]]
    print("\nquery keywords, e.g.: " + "; ".join(f"{t!r} -> {extract_keywords(t)}" for t in examples))
    print(f"stores: {store_info}")

    out_json = {
        "benchmark": "eval_keys",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": er.versions(),
        "settings": {
            "k": K,
            "min_score": -1.0,
            "variants": {label: kw for label, kw in variants},
            "query_keywords": "builtin extract_keywords (no LLM)",
            "memory_keywords": "the memory's keywords, else extract_keywords(task) at index time",
            "random_seeds": len(er.RANDOM_SEEDS),
            "bootstrap_resamples": er.BOOTSTRAP,
            "gain": "2^rel - 1, discount log2(rank + 1), ideal over the whole store",
        },
        "data": {"memories": er.MEMORIES_FILE, "test": list(er.TEST_FILES), "valid": er.TUNE_FILE},
        "queries": query_info,
        "stores": store_info,
        "results": results,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(out_json, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {args.out} in {out_json['seconds']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
