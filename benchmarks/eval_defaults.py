"""memp's default ranking against the baselines, on held-out canonical tasks and paraphrases.

    OPENBLAS_NUM_THREADS=1 python benchmarks/eval_defaults.py [--data-dir DIR]    # ~2 min

Stores are built by the real CLI in a temporary directory (`memp init`, `memp ingest`, `memp
distill`: the builtin distiller, proceduralization) from ``alfworld_train_replay.jsonl``; a second
store mixes in WebShop, TextWorldExpress and ScienceWorld runs (one store, four domains). Each
ranking is memp's own ``Retriever`` (``Retriever.from_config`` with overrides), top 10:

- ``default``: the store's ``[retrieval]`` settings, its floor, near-duplicates collapsed (what
  ``memp query`` returns; a task that gets nothing above the floor scores 0);
- ``bm25 alone``: BM25 over the key text only (lexical_weight 1, no procedure, no family, no floor);
- ``minilm alone`` / ``hash alone``: cosine only, in a store with that embedder (no floor);
- ``random``: ``--key random``, the mean of 10 seeds.

Query sets (a query whose text is already a memory's task is dropped: we measure new tasks):

- ``valid``: ``alfworld_valid_seen_replay.jsonl`` tasks (the weights were chosen on these);
- ``test``: ``alfworld_agentinstruct_corpus.jsonl`` + ``alfworld_react_exemplars.jsonl`` tasks
  (never tuned on);
- ``para-tune`` / ``para-holdout``: ``benchmarks/data/alfworld_paraphrases.jsonl``, natural
  phrasings written for this by memp's developers, split in two; only ``para-tune`` was looked at
  while choosing the weights.

Relevance: 2 = same task type and same target object, 1 = same type (``memp_cli.eval.labels``);
memories of other domains are 0. P@1 is "the top memory has the task's type". NDCG@10's ideal is
over the whole store. Output: a table on stdout, ``benchmarks/results/eval_defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import DATA as DEFAULT_DATA
from _common import REPO, machine, write_result

from memp_cli.eval import metrics
from memp_cli.eval.labels import TaskLabel, grade, norm_task, task_label
from memp_cli.eval.retrieval import BASELINES as SIGNALS

PARAPHRASES = REPO / "benchmarks" / "data" / "alfworld_paraphrases.jsonl"
OTHER_DOMAINS = ("webshop_react_fixed100_499.jsonl", "twx_train.jsonl", "scienceworld_train.jsonl")
BASELINES: dict[str, dict[str, Any]] = {
    "default": {"collapse": True},  # what memp query returns: its floor, near-duplicates collapsed
    # memp eval retrieval --baselines: one signal of the query key, no floor
    "bm25 alone": SIGNALS["bm25"],
    "cosine alone": SIGNALS["cosine"],
}
K = 10
SEEDS = 10


def build(root: Path, data: Path, files: list[str], embedder: str) -> Path:
    env = {**os.environ, "MEMP_STORE": str(root), "MEMP_QUIET": "1"}
    memp = [sys.executable, "-m", "memp_cli"]
    subprocess.run([*memp, "init", "--embedder", embedder], env=env, check=True)
    for f in files:
        subprocess.run([*memp, "ingest", str(data / f)], env=env, check=True)
    subprocess.run([*memp, "distill"], env=env, check=True)
    return root


def query_sets(data: Path, memory_tasks: set[str]) -> dict[str, list[tuple[str, TaskLabel]]]:
    def canonical(files: list[str]) -> list[tuple[str, TaskLabel]]:
        out, seen = [], set()
        for f in files:
            for line in (data / f).read_text().splitlines():
                r = json.loads(line)
                key = norm_task(r["task"])
                if key in seen or key in memory_tasks:
                    continue
                seen.add(key)
                out.append((r["task"], task_label(r["task"], r.get("task_type"))))
        return out

    para: dict[str, list[tuple[str, TaskLabel]]] = {"tune": [], "holdout": []}
    for line in PARAPHRASES.read_text().splitlines():
        r = json.loads(line)
        para[r["split"]].append((r["query"], TaskLabel(r["label"], r["object"])))
    return {
        "valid": canonical(["alfworld_valid_seen_replay.jsonl"]),
        "test": canonical(["alfworld_agentinstruct_corpus.jsonl", "alfworld_react_exemplars.jsonl"]),
        "para-tune": para["tune"],
        "para-holdout": para["holdout"],
    }


def evaluate(root: Path, rankers: dict[str, dict[str, Any]], random_baseline: bool) -> dict[str, Any]:
    from memp_cli.index import sync
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import Store, store_embedder

    st = Store.open(root)
    emb = store_embedder(st)
    idx, _ = sync(st, emb)
    memories = list(st.iter_memories())
    labels = {m.id: task_label(m.task, m.task_type or "other-domain") for m in memories}
    sets = query_sets(DATA, {norm_task(m.task) for m in memories})
    out: dict[str, Any] = {"memories": len(memories), "queries": {s: len(q) for s, q in sets.items()}}

    def scores(r: Retriever, qs: list[tuple[str, TaskLabel]]) -> np.ndarray:
        rows = []
        for (_, ql), hits in zip(qs, r.search([q for q, _ in qs]), strict=True):
            g = [grade(ql, labels[h.memory.id]) for h in hits]
            ideal = metrics.ideal_dcg([grade(ql, lab) for lab in labels.values()], K)
            rows.append([float(bool(g) and g[0] > 0), metrics.ndcg(g, ideal, K)])
        return np.array(rows)

    for name, over in rankers.items():
        r = Retriever.from_config(idx, emb, st.config.retrieval, k=K, **over)
        out[name] = {}
        for s, qs in sets.items():
            p1, nd = metrics.bootstrap_intervals(scores(r, qs))
            out[name][s] = {"p1": vars(p1), "ndcg10": vars(nd)}
    if random_baseline:
        out["floor"] = floor(idx, emb, st, sets)
        out["random"] = {}
        for s, qs in sets.items():
            runs = [
                scores(Retriever.from_config(idx, emb, st.config.retrieval, k=K, key="random", seed=seed), qs)
                for seed in range(SEEDS)
            ]
            mean = np.mean(runs, axis=0)
            out["random"][s] = {
                "p1": {"mean": float(mean[:, 0].mean())},
                "ndcg10": {"mean": float(mean[:, 1].mean())},
            }
    return out


def floor(idx: Any, emb: Any, st: Any, sets: dict[str, list[tuple[str, TaskLabel]]]) -> dict[str, Any]:
    """How the default floor ([retrieval] min_score) splits the best score of tasks of this
    domain (every query set) from tasks of other domains asked of the same store."""
    from memp_cli.retrieve.retriever import Retriever

    r = Retriever.from_config(idx, emb, st.config.retrieval, k=1, min_score=-1.0)

    def top1(tasks: list[str]) -> np.ndarray:
        return np.array([hits[0].score if hits else -1.0 for hits in r.search(tasks)])

    other: list[str] = []
    for f, n in (
        ("webshop_react_fixed100_499.jsonl", 150),
        ("scienceworld_train.jsonl", 31),
        ("travelplanner_train27q.jsonl", 81),
    ):
        tasks = [json.loads(line)["task"][:300] for line in (DATA / f).read_text().splitlines()]
        other.extend(list(dict.fromkeys(tasks))[:n])
    other += [
        "what is the capital of france",
        "write a haiku about autumn",
        "fix the failing test in parser.py",
    ]
    own = top1([q for qs in sets.values() for q, _ in qs])
    others = top1(other)
    thresholds = sorted({st.config.retrieval.min_score, 0.1, 0.15, 0.2, 0.25, 0.3})
    return {
        "min_score": st.config.retrieval.min_score,
        "own_tasks": len(own),
        "other_domain_tasks": len(others),
        "kept": {
            str(t): {"own": float((own >= t).mean()), "other_domain": float((others >= t).mean())}
            for t in thresholds
        },
    }


def main() -> None:
    global DATA
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    DATA = args.data_dir
    result: dict[str, Any] = {"benchmark": "eval_defaults", "machine": machine(), "stores": {}}
    with tempfile.TemporaryDirectory(prefix="memp-eval-") as tmp:
        t = Path(tmp)
        plans = {
            "alfworld (minilm)": (["alfworld_train_replay.jsonl"], "minilm", True),
            "alfworld (hash)": (["alfworld_train_replay.jsonl"], "hash", False),
            "four domains (minilm)": (["alfworld_train_replay.jsonl", *OTHER_DOMAINS], "minilm", False),
        }
        for i, (name, (files, embedder, rnd)) in enumerate(plans.items()):
            root = build(t / f"s{i}", DATA, files, embedder)
            rankers = BASELINES if embedder == "minilm" else {"cosine alone": BASELINES["cosine alone"]}
            result["stores"][name] = evaluate(root, rankers, rnd)
    path = write_result("eval_defaults", result)
    print("| store | ranker | valid P@1 | test P@1 | para-tune NDCG@10 | para-holdout NDCG@10 |")
    print("|---|---|---|---|---|---|")
    for store, res in result["stores"].items():
        for ranker, per in res.items():
            if ranker in ("memories", "queries", "floor"):
                continue
            label = (
                ranker.replace("cosine", store.split("(")[1].rstrip(")")) if "cosine" in ranker else ranker
            )
            cells = [
                per["valid"]["p1"],
                per["test"]["p1"],
                per["para-tune"]["ndcg10"],
                per["para-holdout"]["ndcg10"],
            ]
            txt = [
                f"{c['mean']:.3f}" + (f" [{c['low']:.2f}, {c['high']:.2f}]" if "low" in c else "")
                for c in cells
            ]
            print(f"| {store} | {label} | " + " | ".join(txt) + " |")
    fl = result["stores"]["alfworld (minilm)"]["floor"]
    print(
        f"\nfloor (min_score {fl['min_score']}): share of tasks whose best memory is kept, "
        f"{fl['own_tasks']} ALFWorld tasks vs {fl['other_domain_tasks']} tasks of other domains"
    )
    for t, kept in fl["kept"].items():
        print(f"  {t}: ALFWorld {kept['own']:.3f}, other domains {kept['other_domain']:.3f}")
    print(f"wrote {path}", file=sys.stderr)


DATA = DEFAULT_DATA

if __name__ == "__main__":
    main()
