"""Retrieval quality on ALFWorld tasks: embeddings, BM25 and their fusion, tuned on held-out tasks.

Run (about a minute on one core; the minilm model is downloaded on first use)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/eval_retrieval.py [--data-dir DIR] [--out FILE]

``--data-dir`` defaults to ``MEMP_BENCH_DATA``, else ``shared/data`` beside the repository.

What it does (see benchmarks/README.md, "eval_retrieval.py", for the reasoning):

1. Builds memory stores with the real ``memp`` CLI in a temporary directory
   (``memp init --embedder X``, ``memp ingest``, ``memp distill --policy trajectory``)
   from ``alfworld_train_replay.jsonl``: for each embedder (hash, minilm), once with every
   run (memp's default: failed runs are kept) and once with ``--only-success``.
2. Queries: tuning ("valid") = the distinct task texts of ``alfworld_valid_seen_replay.jsonl`` that
   are not memory task texts (the full 130 are reported as "valid_all"); test (never tuned on) = the
   distinct ALFWorld task texts of ``alfworld_agentinstruct_corpus.jsonl`` and
   ``alfworld_react_exemplars.jsonl`` that are not memory task texts.
3. Rankings come from memp's own :class:`memp_cli.retrieve.retriever.Retriever` (``key=query``): one
   ``scored`` call per query set gives memp's candidates (hnsw top list plus BM25 top list) with
   their cosine and BM25; the fused ranking for every weight w in 0, 0.05, ..., 1 is recomputed from
   those with memp's formula ``(1-w)·cos + w·BM25/max_score`` and tie-break (cosine, then memory
   id; checked equal to ``Retriever.scored`` at w = 0, 0.5, 0.9, 1). Two other fusions are prototyped on the same
   candidates: BM25 normalised by the query's self-score, and reciprocal-rank fusion.
4. Lexical variants: the store's own index (LexicalIndex defaults), memp 0.1.0's (words only, full
   idf), and bigrams with idf power 1 or 0, swapped into the same index. BM25 alone is also scored
   over full rankings by a small reference implementation (checked equal to LexicalIndex) for
   variants LexicalIndex does not build: bigrams that keep stopwords ("raw"), other k1 and b.
5. Metrics (means over queries): task-type P@1, P@3, MRR@10 of the first same-type memory,
   NDCG@10 with graded relevance (2 = same type and same target object, 1 = same type,
   0 = other; gain 2^rel - 1, ideal ranking over the whole store), top1_failed (how often the
   first memory handed out is a failed run) and top1_failed_tied (... while a successful memory
   had exactly the same score: a tie the ranking broke by cosine or memory id). The ``random`` key
   (mean over 10 seeds) is the floor.
6. Per embedder and fusion, the weight maximising valid NDCG@10 (ties: P@1, then the smaller
   weight); test figures at that weight, with paired bootstrap 95% intervals of the differences.

Prints tables and writes JSON to ``benchmarks/results/eval_retrieval.json``. Nothing is cached
outside the temporary directory (apart from memp's own model cache, ~/.cache/memp).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from _common import DATA as DEFAULT_DATA  # noqa: E402

from memp_cli import __version__ as memp_version  # noqa: E402
from memp_cli import index as index_mod  # noqa: E402
from memp_cli.config import RetrievalConfig  # noqa: E402
from memp_cli.eval import metrics  # noqa: E402
from memp_cli.eval import retrieval as ev  # noqa: E402
from memp_cli.eval.labels import TaskLabel, grade, norm_task, target_object, task_type_of  # noqa: E402
from memp_cli.index import lexical  # noqa: E402
from memp_cli.index.lexical import LexicalIndex, term_hashes  # noqa: E402
from memp_cli.model.memory import Memory  # noqa: E402
from memp_cli.retrieve.retriever import Retriever  # noqa: E402
from memp_cli.store import Store, store_embedder  # noqa: E402

MEMORIES_FILE = "alfworld_train_replay.jsonl"
TUNE_FILE = "alfworld_valid_seen_replay.jsonl"
TRAVELPLANNER_FILE = "travelplanner_train27q.jsonl"
TEST_FILES = ("alfworld_agentinstruct_corpus.jsonl", "alfworld_react_exemplars.jsonl")
WEIGHTS = tuple(round(i / 20, 2) for i in range(21))
FUSIONS = ("linear", "linear_self", "rrf")
RRF_K = 60
#: Lexical indexes swapped in for comparison (LexicalIndex.build options); "default" is the store's own.
LEXICAL_VARIANTS: dict[str, dict[str, Any]] = {
    "v1": {"bigrams": False, "idf_power": 1.0},  # memp 0.1.0: words only, textbook idf
    "bigrams_idf1": {"bigrams": True, "idf_power": 1.0},
    "bigrams_idf0": {"bigrams": True, "idf_power": 0.0},
}
# This study is of the task-text fusion (cosine and BM25 of the key text). memp's default ranking
# also matches each memory's procedure and pools families (benchmarks/eval_defaults.py measures
# that); both are off here.
TEXT_ONLY = {"procedure_weight": 0.0, "family_weight": 0.0}
K = 10
#: The former default ``[retrieval] lexical_weight`` (now 1.0), still shown for comparison.
FORMER_DEFAULT = 0.5
RANDOM_SEEDS = range(10)
BOOTSTRAP = 2000
METRICS = ("p1", "p3", "mrr", "ndcg10", "top1_failed", "top1_failed_tied")

_LEX_WORD = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------- data
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def memory_meta(m: Memory) -> dict[str, Any]:
    """What the metrics need of a memory: its task type (stored, else the rule), object, outcome,
    and the library's view of it (``info``, graded by :func:`memp_cli.eval.retrieval.label_grade`)."""
    return {
        "type": m.task_type or task_type_of(m.task),
        "object": target_object(m.task),
        "success": m.success,
        "info": ev.MemoryInfo.of(m, task_type_of),
    }


def distinct_tasks(records: list[dict[str, Any]], source: str) -> dict[str, dict[str, Any]]:
    """norm(task) -> query {text, type, label, object, source}; the first record of a text wins."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        key = norm_task(r["task"])
        if key in out:
            continue
        label = r.get("task_type")
        out[key] = {
            "text": r["task"].strip(),
            "label": label,
            "type": label or task_type_of(r["task"]),
            "object": target_object(r["task"]),
            "source": source,
        }
    return out


# ------------------------------------------------------------------ the stores
def memp(store: Path, *args: str) -> None:
    """Run the real CLI (``python -m memp_cli``) on ``store``."""
    cmd = [sys.executable, "-m", "memp_cli", "--store", str(store), "--quiet", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr}")


def build_store(root: Path, embedder: str, memories: Path, only_success: bool) -> Store:
    memp(root, "init", "--embedder", embedder)
    memp(root, "ingest", str(memories))
    memp(root, "distill", "--policy", "trajectory", *(["--only-success"] if only_success else []))
    return Store.open(root)


class CachedEmbedder:
    """Memoises query vectors: the same embedder, asked once per distinct text."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for t, v in zip(todo, self.inner.embed(todo), strict=True):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


# ------------------------------------------------------------------- metrics
def label_of(d: dict[str, Any]) -> TaskLabel:
    """The label of a query or memory record (``type`` and target ``object``)."""
    return TaskLabel(d["type"], d["object"])


def as_query(q: dict[str, Any]) -> ev.Query:
    """A query record as the library grades it: its type as the label, its target object."""
    return ev.Query(q["text"], q["type"], q["object"])


def query_metrics(
    q: dict[str, Any],
    ranked: list[str],
    scores: list[float],
    meta: dict[str, dict[str, Any]],
    ideal: dict[TaskLabel, float],
) -> dict[str, float]:
    """P@1, P@3, MRR, NDCG@10 and fail@1 (:func:`memp_cli.eval.retrieval.query_scores`, graded by
    :func:`memp_cli.eval.retrieval.label_grade`, as ``memp eval retrieval``), and tied."""
    top = ranked[:K]
    query = as_query(q)
    grades = {mid: ev.label_grade(query, meta[mid]["info"]) for mid in top}
    failed = {mid for mid in top if meta[mid]["success"] is False}
    p1, p3, mrr, ndcg, top1_failed = ev.query_scores(
        top, grades, ideal[label_of(q)], failed, k=K, precision_k=3
    )
    tied_success = bool(top1_failed) and any(
        meta[mid]["success"] is True and abs(sc - scores[0]) < 1e-9
        for mid, sc in zip(top[1:], scores[1:], strict=True)
    )
    return {
        "p1": p1,
        "p3": p3,
        "mrr": mrr,
        "ndcg10": ndcg,
        "top1_failed": top1_failed,
        "top1_failed_tied": float(tied_success),
    }


def ideal_dcgs(queries: list[dict[str, Any]], meta: dict[str, dict[str, Any]]) -> dict[TaskLabel, float]:
    """Ideal DCG@10 of each query label over the whole store (the NDCG denominators)."""
    out: dict[TaskLabel, float] = {}
    infos = [m["info"] for m in meta.values()]
    for q in queries:
        ql = label_of(q)
        if ql not in out:
            query = as_query(q)
            out[ql] = metrics.ideal_dcg((ev.label_grade(query, i) for i in infos), K)
    return out


def evaluate(
    retriever: Retriever,
    queries: list[dict[str, Any]],
    meta: dict[str, dict[str, Any]],
    ideal: dict[TaskLabel, float],
) -> np.ndarray:
    """Per-query metric rows (len(queries) x len(METRICS)).

    The ranking is ``Retriever.scored`` (what ``Retriever.search`` ranks by), cut to ``k`` and
    ``min_score`` here; ``search`` itself also loads each hit's TOML file, which would make the grid
    ten times slower. :func:`check_search` confirms both give the same ids.
    """
    ids = retriever.index.state.ids
    rows = []
    for q, scored in zip(queries, retriever.scored([q["text"] for q in queries]), strict=True):
        if retriever.key == "random":
            kept = scored[: retriever.k]
        else:
            kept = [r for r in scored if r[1] >= retriever.min_score][: retriever.k]
        m = query_metrics(q, [ids[r[0]] for r in kept], [r[1] for r in kept], meta, ideal)
        if retriever.key == "random":
            m["top1_failed_tied"] = float("nan")  # random picks: their order is not a ranking
        rows.append([m[name] for name in METRICS])
    return np.array(rows, dtype=np.float64)


def check_search(retriever: Retriever, queries: list[dict[str, Any]]) -> None:
    """``Retriever.search`` (the path ``memp query`` takes) returns the ids :func:`evaluate` scored."""
    texts = [q["text"] for q in queries]
    via_search = [[h.memory.id for h in hits] for hits in retriever.search(texts)]
    ids = retriever.index.state.ids
    via_scored = [
        [ids[pos] for pos, score, *_ in rows if score >= retriever.min_score][: retriever.k]
        for rows in retriever.scored(texts)
    ]
    if retriever.warnings or via_search != via_scored:
        raise SystemExit(f"Retriever.search and Retriever.scored disagree ({retriever.warnings})")


def summary(rows: np.ndarray) -> dict[str, float]:
    return {name: round(float(rows[:, i].mean()), 4) for i, name in enumerate(METRICS)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Mean difference a - b per metric with a 95% percentile interval over resampled queries."""
    names = ("p1", "p3", "mrr", "ndcg10")
    ivs = metrics.paired_bootstrap(a[:, : len(names)], b[:, : len(names)], resamples=BOOTSTRAP, seed=seed)
    return {
        name: {"diff": round(iv.mean, 4), "ci95": [round(iv.low, 4), round(iv.high, 4)]}
        for name, iv in zip(names, ivs, strict=True)
    }


# -------------------------------------------------------- fusion on memp's candidates
@dataclass
class Candidates:
    """One query's candidates as ``Retriever.scored`` returns them (hnsw top list + BM25 top list).

    ``pos`` is the state position, which is also the rank of the memory id (state ids are sorted),
    so ascending ``pos`` is memp's tie-break. ``lex`` is BM25 / max_score (memp's lexical part),
    ``raw`` the BM25 score itself, ``self_score`` the BM25 a memory whose text equals the query
    would get (see :func:`self_score`).
    """

    pos: np.ndarray
    cos: np.ndarray
    lex: np.ndarray
    raw: np.ndarray
    self_score: float


def self_score(lex: LexicalIndex, query: str) -> float:
    """BM25 of a document identical to ``query`` (its own terms, tf and length) in ``lex``'s statistics.

    Prototype only (uses the index's private term lookup): terms the store lacks add nothing, as in
    ``max_score``.
    """
    dl = len(term_hashes(query, bigrams=lex.bigrams))
    avgdl = lex.avgdl if lex.avgdl > 0 else 1.0
    norm = lex.k1 * (1.0 - lex.b + lex.b * dl / avgdl)
    return sum(
        qtf * lex._idf(tid) * qtf * (lex.k1 + 1.0) / (qtf + norm)
        for tid, qtf in lex._query_terms(query).items()
    )


def candidates(idx: index_mod.Index, embedder: Any, lex: LexicalIndex, texts: list[str]) -> list[Candidates]:
    """memp's own candidate lists for ``texts`` with ``lex`` as the lexical index.

    One ``Retriever.scored`` call at w=0.5 gives, per query, every candidate with its cosine and its
    normalised BM25; memp's candidate set does not depend on w (for w > 0), so the ranking at any w is
    recomputed from these with memp's formula and tie-break (:func:`fuse`). :func:`check_fuse`
    confirms this against ``Retriever.scored`` itself.
    """
    view = copy.copy(idx)
    view.lexical = lex
    r = Retriever(
        index=view, embedder=embedder, k=K, min_score=-1.0, key="query", lexical_weight=0.5, **TEXT_ONLY
    )
    out = []
    for q, rows in zip(texts, r.scored(texts), strict=True):
        bound = lex.max_score(q) or 1.0
        pos = np.array([row[0] for row in rows], dtype=np.int64)
        cos = np.array([row[2] for row in rows], dtype=np.float64)
        ls = np.array([row[3] for row in rows], dtype=np.float64)
        out.append(Candidates(pos, cos, ls, ls * bound, self_score(lex, q)))
    return out


def _ranks(score: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """1-based rank of each candidate by score descending, ties by memory id."""
    order = np.lexsort((pos, -score))
    r = np.empty(len(order), dtype=np.float64)
    r[order] = np.arange(1, len(order) + 1)
    return r


def fuse(c: Candidates, fusion: str, w: float) -> np.ndarray:
    """Fused score of each candidate.

    - ``linear`` (memp today): ``(1-w)·cos + w·BM25/max_score``;
    - ``linear_self``: ``(1-w)·cos + w·min(1, BM25/self_score)`` (a text equal to the query scores 1);
    - ``rrf``: reciprocal-rank fusion over the candidates, ``(1-w)/(60 + rank_cos) + w/(60 + rank_bm25)``.
    """
    if fusion == "linear":
        return (1 - w) * c.cos + w * c.lex
    if fusion == "linear_self":
        ls = np.minimum(1.0, c.raw / c.self_score) if c.self_score > 0 else np.zeros_like(c.raw)
        return (1 - w) * c.cos + w * ls
    if fusion == "rrf":
        return (1 - w) / (RRF_K + _ranks(c.cos, c.pos)) + w / (RRF_K + _ranks(c.lex, c.pos))
    raise ValueError(fusion)


def rank_metrics(
    queries: list[dict[str, Any]],
    ranked: list[tuple[list[str], list[float]]],
    meta: dict[str, dict[str, Any]],
    ideal: dict[TaskLabel, float],
) -> np.ndarray:
    """Per-query metric rows (len(queries) x len(METRICS)) of ``(ids, scores)`` rankings (best first)."""
    rows = []
    for q, (ids, scores) in zip(queries, ranked, strict=True):
        m = query_metrics(q, ids[:K], scores[:K], meta, ideal)
        rows.append([m[name] for name in METRICS])
    return np.array(rows, dtype=np.float64)


def fused_metrics(
    cands: list[Candidates],
    fusion: str,
    w: float,
    ids: list[str],
    queries: list[dict[str, Any]],
    meta: dict[str, dict[str, Any]],
    ideal: dict[TaskLabel, float],
    id_ties: bool = False,
) -> np.ndarray:
    """Metrics of the fused rankings; ties by cosine, then memory id (memp), or by id only if ``id_ties``
    (memp before it broke ties by cosine)."""
    ranked = []
    for c in cands:
        s = fuse(c, fusion, w)
        top = (np.lexsort((c.pos, -s)) if id_ties else np.lexsort((c.pos, -c.cos, -s)))[:K]
        ranked.append(([ids[p] for p in c.pos[top].tolist()], s[top].tolist()))
    return rank_metrics(queries, ranked, meta, ideal)


def check_fuse(
    idx: index_mod.Index, embedder: Any, cands: list[Candidates], texts: list[str], weights: Sequence[float]
) -> None:
    """:func:`fuse` (``linear``) ranks exactly as ``Retriever.scored`` does at each of ``weights``."""
    for w in weights:
        r = Retriever(
            index=idx, embedder=embedder, k=K, min_score=-1.0, key="query", lexical_weight=w, **TEXT_ONLY
        )
        for c, rows in zip(cands, r.scored(texts), strict=True):
            s = fuse(c, "linear", w)
            mine = c.pos[np.lexsort((c.pos, -c.cos, -s))[:K]].tolist()
            theirs = [row[0] for row in rows[:K]]
            if mine != theirs:
                raise SystemExit(f"fuse() and Retriever.scored disagree at w={w}: {mine} != {theirs}")


# ------------------------------------------------- BM25 variants outside LexicalIndex
def ref_terms(text: str, bigrams: str) -> list[str]:
    """Terms for the reference BM25: memp's words, plus bigrams ``"none"``, ``"stopword_free"``
    (memp's: consecutive words once stopwords are dropped) or ``"raw"`` (consecutive words of the
    original text, stopwords included: "put two", "a clean")."""
    out: list[str] = []
    grams: list[str] = []
    for line in text.lower().split("\n"):
        words = _LEX_WORD.findall(line)
        kept = [t for t in (lexical._normalize(w) for w in words) if t is not None]
        out += kept
        if bigrams == "stopword_free":
            grams += [f"{a} {b}" for a, b in itertools.pairwise(kept)]
        elif bigrams == "raw":
            seq = [lexical._normalize(w) or w for w in words]
            grams += [f"{a} {b}" for a, b in itertools.pairwise(seq)]
    return out + grams


def ref_bm25(
    docs: list[str], queries: list[str], *, bigrams: str, k1: float, b: float, idf_power: float
) -> np.ndarray:
    """Dense BM25 (queries x docs) with memp's conventions, for the variants LexicalIndex does not build."""
    vocab: dict[str, int] = {}
    doc_terms = [ref_terms(d, bigrams) for d in docs]
    for ts in doc_terms:
        for t in ts:
            vocab.setdefault(t, len(vocab))
    tf = np.zeros((len(docs), len(vocab)))
    for i, ts in enumerate(doc_terms):
        for t in ts:
            tf[i, vocab[t]] += 1
    n = len(docs)
    dl = tf.sum(axis=1)
    avgdl = dl.mean() if n and dl.mean() > 0 else 1.0
    df = (tf > 0).sum(axis=0)
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5)) ** idf_power
    denom = tf + k1 * (1 - b + b * dl[:, None] / avgdl)
    weight = tf * (k1 + 1) / np.where(denom > 0, denom, 1.0)
    qtf = np.zeros((len(queries), len(vocab)))
    for i, q in enumerate(queries):
        for t in ref_terms(q, bigrams):
            j = vocab.get(t)
            if j is not None:
                qtf[i, j] += 1
    return (qtf * idf) @ weight.T


def dense_metrics(
    scores: np.ndarray,
    ids: list[str],
    queries: list[dict[str, Any]],
    meta: dict[str, dict[str, Any]],
    ideal: dict[TaskLabel, float],
) -> np.ndarray:
    """Metrics of a full ranking by ``scores`` (queries x memories in state order), ties by id.

    Scores are rounded to float32 first, as LexicalIndex returns them, so that sums of the same
    terms in another order tie as they do in memp.
    """
    scores = scores.astype(np.float32)
    pos = np.arange(scores.shape[1])
    ranked = []
    for row in scores:
        top = np.lexsort((pos, -row))[:K]
        ranked.append(([ids[p] for p in top.tolist()], row[top].tolist()))
    return rank_metrics(queries, ranked, meta, ideal)


# ------------------------------------------------- a second domain: TravelPlanner
def travelplanner_check(data_dir: Path, embedders: list[str], weights: dict[str, float]) -> dict[str, Any]:
    """Leave-one-query-out retrieval on TravelPlanner's 27 free-form trip requests (never tuned on).

    Each distinct request is a query against the other 26 (as memory texts); relevant = same
    ``task_type`` (level and trip length, 2 of 26). The requests are paraphrases written by people,
    not templates: a check that the lexical defaults do not hurt there. BM25 is LexicalIndex over the
    26 texts; embeddings are plain cosine; fused = memp's linear formula at each embedder's
    ALFWorld-tuned weight and at 0.5.
    """
    path = data_dir / TRAVELPLANNER_FILE
    if not path.exists():
        return {"skipped": f"{path} not found"}
    from memp_cli.backends.embedders import get_embedder

    records = read_jsonl(path)
    texts = list(dict.fromkeys(r["task"] for r in records))
    types = {r["task"]: r["task_type"] for r in records}
    n = len(texts)
    vecs = {e: get_embedder(e).embed(texts) for e in embedders}

    def measure(score_of: Any) -> dict[str, float]:
        p1, ndcg = [], []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            sc = np.asarray(score_of(i, others), dtype=np.float32)
            order = np.lexsort((np.arange(len(others)), -sc))[:K]
            q = TaskLabel(types[texts[i]])
            grades = [grade(q, TaskLabel(types[texts[others[j]]])) for j in order]
            ideal = metrics.ideal_dcg((grade(q, TaskLabel(types[texts[j]])) for j in others), K)
            p1.append(metrics.precision_at_k(grades, 1))
            ndcg.append(metrics.ndcg(grades, ideal, K))
        return {"p1": round(float(np.mean(p1)), 4), "ndcg10": round(float(np.mean(ndcg)), 4)}

    def bm25(kw: dict[str, Any]) -> Any:
        def f(i: int, others: list[int]) -> np.ndarray:
            lex = LexicalIndex.build([(j, texts[j]) for j in others], **kw)
            return lex.score_labels(texts[i], np.array(others)) / (lex.max_score(texts[i]) or 1.0)

        return f

    out: dict[str, Any] = {"queries": n, "types": len(set(types.values()))}
    for e in embedders:
        out[f"{e} alone"] = measure(lambda i, o, e=e: vecs[e][o] @ vecs[e][i])
    for name, kw in {"default": {}, **LEXICAL_VARIANTS}.items():
        out[f"BM25 {name}"] = measure(bm25(kw))
    for e in embedders:
        for w in dict.fromkeys((weights[e], 0.5)):
            f = bm25({})
            out[f"{e} + BM25 default, w={w:.2f}"] = measure(
                lambda i, o, e=e, w=w, f=f: (1 - w) * (vecs[e][o] @ vecs[e][i]) + w * f(i, o)
            )
    return out


# ------------------------------------------------------------------------ main
def versions() -> dict[str, str]:
    out = {"memp": memp_version, "python": platform.python_version()}
    for pkg in ("numpy", "hnswlib", "tokenizers", "safetensors", "orjson"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def fmt_row(label: str, s: dict[str, float], width: int = 26) -> str:
    """One table row; the columns are METRICS in order."""
    return f"{label:<{width}}" + "".join(f"{s[m]:>8.3f}" for m in METRICS)


_NUMBER_LIST = re.compile(rb"\[\s*((?:-?[0-9.eE+-]+|null)(?:,\s*(?:-?[0-9.eE+-]+|null))*)\s*\]")


def dump_json(obj: Any) -> bytes:
    """Indented JSON with lists of numbers kept on one line."""
    raw = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
    return _NUMBER_LIST.sub(lambda m: b"[" + b", ".join(re.split(rb",\s*", m.group(1))) + b"]", raw) + b"\n"


def columnar(results: dict[str, Any]) -> dict[str, Any]:
    """``{w: {metric: x}}`` grids as ``{"weights": [...], metric: [...]}`` (a much smaller JSON)."""
    out: dict[str, Any] = {}
    for key, val in results.items():
        if key == "lexical":
            out[key] = {
                lex: {
                    fusion: {
                        "weights": [float(w) for w in grid],
                        **{m: [grid[w][m] for w in grid] for m in METRICS},
                    }
                    for fusion, grid in by_f.items()
                }
                for lex, by_f in val.items()
            }
        elif isinstance(val, dict):
            out[key] = columnar(val)
        else:
            out[key] = val
    return out


def best_weight(curve: dict[float, dict[str, float]]) -> float:
    """Max valid NDCG@10; ties: higher P@1, then the smaller weight."""
    return max(curve, key=lambda w: (curve[w]["ndcg10"], curve[w]["p1"], -w))


def load_queries(data_dir: Path) -> dict[str, Any]:
    """The query sets (valid, valid_all, test), with exclusion counts and the type-rule check."""
    mem_records = read_jsonl(data_dir / MEMORIES_FILE)
    mem_tasks = {norm_task(r["task"]) for r in mem_records}
    valid_all = distinct_tasks(read_jsonl(data_dir / TUNE_FILE), TUNE_FILE)
    rule_ok = sum(task_type_of(q["text"]) == q["label"] for q in valid_all.values())
    rule_check: dict[str, Any] = {"valid_seen": {"correct": rule_ok, "n": len(valid_all)}}
    for f in (MEMORIES_FILE, "alfworld_react_exemplars.jsonl"):
        d = distinct_tasks(read_jsonl(data_dir / f), f)
        rule_check[f.removesuffix(".jsonl")] = {
            "correct": sum(task_type_of(q["text"]) == q["label"] for q in d.values() if q["label"]),
            "n": sum(1 for q in d.values() if q["label"]),
        }
    no_object = [q["text"] for q in valid_all.values() if q["object"] is None]
    valid = {k: q for k, q in valid_all.items() if k not in mem_tasks}
    test: dict[str, dict[str, Any]] = {}
    exclusion: dict[str, Any] = {}
    for f in TEST_FILES:
        records = read_jsonl(data_dir / f)
        d = distinct_tasks(records, f)
        seen = [k for k in d if k in mem_tasks]
        dup = [k for k in d if k not in mem_tasks and k in test]
        exclusion[f] = {
            "records": len(records),
            "distinct_tasks": len(d),
            "excluded_in_memories": len(seen),
            "already_in_test_from_earlier_file": len(dup),
            "kept": len(d) - len(seen) - len(dup),
        }
        for k, q in d.items():
            if k not in mem_tasks and k not in test:
                test[k] = q
                no_object += [q["text"]] if q["object"] is None else []
    return {
        "sets": {
            "valid": list(valid.values()),
            "valid_all": list(valid_all.values()),
            "test": list(test.values()),
        },
        "rule_check": rule_check,
        "no_object": no_object,
        "exclusion": exclusion,
        "valid_excluded": len(valid_all) - len(valid),
        "test_in_valid": sum(1 for k in test if k in valid_all),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_retrieval.json")
    ap.add_argument("--embedders", default="hash,minilm", help="comma-separated (default hash,minilm)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]

    if not (args.data_dir / MEMORIES_FILE).exists():
        raise SystemExit(f"no {MEMORIES_FILE} in {args.data_dir}: pass --data-dir or set MEMP_BENCH_DATA")
    qd = load_queries(args.data_dir)
    sets: dict[str, list[dict[str, Any]]] = qd["sets"]
    if qd["no_object"]:
        print(
            f"warning: no target object in {len(qd['no_object'])} tasks, e.g. {qd['no_object'][:3]}",
            file=sys.stderr,
        )
    texts = {name: [q["text"] for q in qs] for name, qs in sets.items()}
    tuned_sets = ("valid", "test")  # every variant; valid_all only for memp's default

    # results[emb][store][set] = {"n_queries", "random", "lexical": {variant: {fusion: {w: summary}}}}
    results: dict[str, Any] = {}
    per_query: dict[tuple[str, ...], np.ndarray] = {}
    default_params: dict[str, Any] = {}
    ablation: dict[str, Any] = {}
    memories_path = args.data_dir / MEMORIES_FILE
    with tempfile.TemporaryDirectory(prefix="memp-eval-") as tmp:
        for emb_name in embedders:
            cached = None
            for variant, only_success in (("all", False), ("only_success", True)):
                t0 = time.perf_counter()
                store = build_store(
                    Path(tmp) / f"{emb_name}-{variant}", emb_name, memories_path, only_success
                )
                cached = cached if cached is not None else CachedEmbedder(store_embedder(store))
                idx = index_mod.load(store)
                assert idx is not None and index_mod.is_fresh(store, idx.state) and idx.lexical is not None
                ids = idx.state.ids
                meta = {}
                for m in store.iter_memories():
                    assert isinstance(m, Memory), m
                    meta[m.id] = memory_meta(m)
                lex_default = idx.lexical
                default_params = {
                    "bigrams": lex_default.bigrams,
                    "idf_power": lex_default.idf_power,
                    "k1": lex_default.k1,
                    "b": lex_default.b,
                }
                docs = list(zip(idx.state.labels, idx.file_table().texts, strict=True))
                lexicals = {"default": lex_default}
                if variant == "all":
                    lexicals.update(
                        {name: LexicalIndex.build(docs, **kw) for name, kw in LEXICAL_VARIANTS.items()}
                    )
                build_s = time.perf_counter() - t0
                store_res: dict[str, Any] = {"memories": len(meta), "build_seconds": round(build_s, 1)}
                check_search(
                    Retriever(
                        index=idx,
                        embedder=cached,
                        k=K,
                        min_score=-1.0,
                        key="query",
                        lexical_weight=0.5,
                        **TEXT_ONLY,
                    ),
                    sets["test"],
                )
                for set_name, qs in sets.items():
                    if variant == "only_success" and set_name == "valid_all":
                        continue
                    ideal = ideal_dcgs(qs, meta)
                    set_res: dict[str, Any] = {"n_queries": len(qs), "lexical": {}}
                    for lex_name, lex in lexicals.items():
                        if lex_name != "default" and set_name not in tuned_sets:
                            continue
                        cands = candidates(idx, cached, lex, texts[set_name])
                        if lex_name == "default" and set_name == "test" and variant == "all":
                            check_fuse(idx, cached, cands, texts[set_name], (0.0, 0.5, 0.9, 1.0))
                        fusions = FUSIONS if (lex_name == "default" and variant == "all") else ("linear",)
                        by_f: dict[str, Any] = {}
                        for fusion in fusions:
                            grid = {}
                            for w in WEIGHTS:
                                rows = fused_metrics(cands, fusion, w, ids, qs, meta, ideal)
                                per_query[(emb_name, variant, set_name, lex_name, fusion, f"{w:.2f}")] = rows
                                grid[f"{w:.2f}"] = summary(rows)
                            by_f[fusion] = grid
                        if lex_name == "default" and variant == "all" and set_name in tuned_sets:
                            # memp at w=1 with exact ties broken by memory id alone (memp before the cosine tie-break)
                            rows = fused_metrics(cands, "linear", 1.0, ids, qs, meta, ideal, id_ties=True)
                            per_query[(emb_name, variant, set_name, lex_name, "linear_id_ties", "1.00")] = (
                                rows
                            )
                            by_f["linear_id_ties"] = {"1.00": summary(rows)}
                        set_res["lexical"][lex_name] = by_f
                    rand = np.mean(
                        [
                            evaluate(
                                Retriever(
                                    index=idx, embedder=cached, k=K, min_score=-1.0, key="random", seed=s
                                ),
                                qs,
                                meta,
                                ideal,
                            )
                            for s in RANDOM_SEEDS
                        ],
                        axis=0,
                    )
                    set_res["random"] = summary(rand)
                    store_res[set_name] = set_res
                results.setdefault(emb_name, {})[variant] = store_res

                # BM25-only variants LexicalIndex does not build (raw bigrams, k1/b): same on every
                # embedder's store, so once, on the first one.
                if not ablation and variant == "all":
                    ablation = lexical_ablation(idx, texts, sets, ids, meta, lexicals)
                print(
                    f"[{emb_name}/{variant}] {len(meta)} memories, built in {build_s:.1f}s, "
                    f"evaluated by {time.perf_counter() - t_start:.0f}s",
                    file=sys.stderr,
                )

    # ---- choices (valid only) and the summary table
    def curve(
        emb: str, set_name: str, lex: str = "default", fusion: str = "linear", store: str = "all"
    ) -> Any:
        return results[emb][store][set_name]["lexical"][lex][fusion]

    def rows_of(
        emb: str, set_name: str, w: float, lex: str = "default", fusion: str = "linear"
    ) -> np.ndarray:
        return per_query[(emb, "all", set_name, lex, fusion, f"{w:.2f}")]

    chosen: dict[str, Any] = {}
    for emb in embedders:
        c: dict[str, Any] = {}
        for lex_name in ("default", *LEXICAL_VARIANTS):
            fusions = FUSIONS if lex_name == "default" else ("linear",)
            for fusion in fusions:
                v = {float(w): s for w, s in curve(emb, "valid", lex_name, fusion).items()}
                bw = best_weight(v)
                mixed = best_weight({w: r for w, r in v.items() if 0 < w < 1})
                c[f"{lex_name}/{fusion}"] = {
                    "best_valid_weight": bw,
                    "valid": v[bw],
                    "test": curve(emb, "test", lex_name, fusion)[f"{bw:.2f}"],
                    "best_valid_weight_strictly_between_0_and_1": mixed,
                }
        only = {float(w): s for w, s in curve(emb, "valid", store="only_success").items()}
        c["default/linear, only_success store"] = {"best_valid_weight": best_weight(only)}
        chosen[emb] = c
    w_of = {emb: chosen[emb]["default/linear"]["best_valid_weight"] for emb in embedders}
    current_default = round(RetrievalConfig().lexical_weight, 2)
    travel = travelplanner_check(args.data_dir, embedders, w_of)

    table: list[dict[str, Any]] = []

    def add(label: str, emb: str, w: float, lex: str = "default", fusion: str = "linear") -> None:
        table.append(
            {
                "row": label,
                "embedder": emb,
                "lexical": lex,
                "fusion": fusion,
                "w": w,
                **{s: curve(emb, s, lex, fusion)[f"{w:.2f}"] for s in ("valid", "test")},
            }
        )

    first = embedders[0]
    for emb in embedders:
        add(f"{emb} alone (w=0)", emb, 0.0)
    add("BM25 memp 0.1.0 (words, full idf; w=1)", first, 1.0, "v1")
    add(f"BM25 default (w=1; ties by {first} cosine)", first, 1.0)
    w_mix = {
        emb: {f: chosen[emb][f"default/{f}"]["best_valid_weight_strictly_between_0_and_1"] for f in FUSIONS}
        for emb in embedders
    }
    for emb in embedders:
        if w_of[emb] not in (0.0, 1.0):
            add(f"{emb} + BM25, valid-tuned w", emb, w_of[emb])
        if emb != first:
            add(f"BM25 default (w=1; ties by {emb} cosine)", emb, 1.0)
        add(f"BM25 default, ties by id only (w=1; {emb})", emb, 1.0, "default", "linear_id_ties")
        for fusion in FUSIONS:
            add(f"{emb} + BM25 {fusion}, best 0<w<1", emb, w_mix[emb][fusion], "default", fusion)
        if current_default not in (0.0, 1.0, w_of[emb], w_mix[emb]["linear"]):
            add(f"{emb} + BM25 at memp's current default", emb, current_default)
        if FORMER_DEFAULT not in (current_default, w_of[emb], w_mix[emb]["linear"]):
            add(f"{emb} + BM25 at the former default", emb, FORMER_DEFAULT)

    comparisons: dict[str, Any] = {
        "BM25 default minus BM25 memp 0.1.0": paired_bootstrap(
            rows_of(first, "test", 1.0), rows_of(first, "test", 1.0, "v1")
        ),
    }
    for emb in embedders:
        comparisons[f"BM25 default minus {emb} alone"] = paired_bootstrap(
            rows_of(emb, "test", 1.0), rows_of(emb, "test", 0.0)
        )
        for w in dict.fromkeys((w_of[emb], w_mix[emb]["linear"])):
            if w in (0.0, 1.0):
                continue
            fused = rows_of(emb, "test", w)
            comparisons[f"{emb} + BM25 (w={w:.2f}) minus {emb} alone"] = paired_bootstrap(
                fused, rows_of(emb, "test", 0.0)
            )
            comparisons[f"{emb} + BM25 (w={w:.2f}) minus BM25 alone"] = paired_bootstrap(
                fused, rows_of(emb, "test", 1.0)
            )
    types = np.array([q["type"] for q in sets["test"]])
    p1_by_type = {
        r["row"]: {
            t: round(
                float(
                    rows_of(r["embedder"], "test", r["w"], r["lexical"], r["fusion"])[types == t, 0].mean()
                ),
                3,
            )
            for t in sorted(set(types.tolist()))
        }
        for r in table
    }

    # ---- print
    head = f"{'':<44}" + "".join(f"{m:>8}" for m in ("P@1", "P@3", "MRR", "NDCG10", "fail@1", "tied"))
    print(f"\ndefault lexical index: {default_params}")
    print("\n== BM25 alone, variants (full ranking, memories: all runs)")
    print(f"{'':<44}{'valid P@1':>10}{'NDCG10':>8}{'test P@1':>10}{'NDCG10':>8}")
    for name, r in ablation["variants"].items():
        v, t = r["valid"], r["test"]
        print(f"{name:<44}{v['p1']:>10.3f}{v['ndcg10']:>8.3f}{t['p1']:>10.3f}{t['ndcg10']:>8.3f}")
    for set_name in tuned_sets:
        print(
            f"\n== {set_name} ({len(sets[set_name])} queries): memp's fused score (1-w)·cos + w·BM25/max, NDCG@10"
        )
        print(f"{'w':<28}" + "".join(f"{float(w):>6.2f}" for w in WEIGHTS[::2]))
        for emb in embedders:
            for lex_name in ("default", *LEXICAL_VARIANTS):
                cv = curve(emb, set_name, lex_name)
                print(
                    f"{emb + ' / ' + lex_name:<28}"
                    + "".join(f"{cv[f'{w:.2f}']['ndcg10']:>6.3f}" for w in WEIGHTS[::2])
                )
    for set_name in tuned_sets:
        print(
            f"\n== {set_name} ({len(sets[set_name])} queries), memories: all runs ({results[first]['all']['memories']})"
        )
        print(head)
        for r in table:
            suffix = "" if r["w"] in (0.0, 1.0) else f" {r['w']:.2f}"
            print(fmt_row(r["row"] + suffix, r[set_name], 44))
        print(fmt_row("random key", results[first]["all"][set_name]["random"], 44))
    print(f"\nvalid-tuned lexical_weight (max valid NDCG@10, memp's linear fusion, default BM25): {w_of}")
    print(f"memp's current default: {current_default}")
    for name, d in comparisons.items():
        print(
            f"test, {name}: "
            + "  ".join(
                f"{m} {d[m]['diff']:+.3f} [{d[m]['ci95'][0]:+.3f},{d[m]['ci95'][1]:+.3f}]"
                for m in ("p1", "ndcg10")
            )
        )
    print(f"\n== TravelPlanner, leave one request out ({travel.get('queries')} queries; not tuned on)")
    for name, r in travel.items():
        if isinstance(r, dict):
            print(f"{name:<44}{'P@1':>6} {r['p1']:.3f}{'NDCG10':>8} {r['ndcg10']:.3f}")
    print(
        "\ntype rule accuracy: "
        + ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in qd["rule_check"].items())
    )
    parts = ", ".join(
        f"{k}: {v['kept']} kept, {v['excluded_in_memories']} excluded" for k, v in qd["exclusion"].items()
    )
    print(f"test queries: {len(sets['test'])} new ({parts}); {qd['test_in_valid']} also in valid_seen")

    out = {
        "benchmark": "eval_retrieval",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": {
            "k": K,
            "min_score": -1.0,
            "key": "query",
            "weights": list(WEIGHTS),
            "fusions": {
                "linear": "memp's: (1-w)*cos + w*bm25/max_score",
                "linear_self": "(1-w)*cos + w*min(1, bm25/self_score)",
                "rrf": f"(1-w)/({RRF_K}+rank_cos) + w/({RRF_K}+rank_bm25) over memp's candidates",
            },
            "default_lexical": default_params,
            "lexical_variants": {
                "default": "the store's own index (LexicalIndex defaults)",
                **LEXICAL_VARIANTS,
            },
            "random_seeds": len(RANDOM_SEEDS),
            "bootstrap_resamples": BOOTSTRAP,
            "gain": "2^rel - 1, discount log2(rank + 1), ideal over the whole store",
            "mrr": "reciprocal rank of the first same-type memory within the top 10 (0 if none)",
            "choice": "max valid NDCG@10, ties: P@1, then the smaller weight",
        },
        "data": {"memories": MEMORIES_FILE, "tune": TUNE_FILE, "test": list(TEST_FILES)},
        "queries": {name: len(qs) for name, qs in sets.items()},
        "valid_seen_excluded_in_memories": qd["valid_excluded"],
        "test_exclusion": qd["exclusion"],
        "test_queries_also_in_valid_seen": qd["test_in_valid"],
        "type_rule_accuracy": qd["rule_check"],
        "tasks_without_object": qd["no_object"],
        "lexical_ablation": ablation,
        "travelplanner_check": travel,
        "table": table,
        "chosen": chosen,
        "valid_tuned_lexical_weight": w_of,
        "best_valid_weight_strictly_between_0_and_1": w_mix,
        "current_default_lexical_weight": current_default,
        "test_comparisons": comparisons,
        "test_p1_by_type": p1_by_type,
        "results": columnar(results),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(dump_json(out))
    print(f"\nwrote {args.out} in {out['seconds']}s", file=sys.stderr)
    return 0


def lexical_ablation(
    idx: index_mod.Index,
    texts: dict[str, list[str]],
    sets: dict[str, list[dict[str, Any]]],
    ids: list[str],
    meta: dict[str, dict[str, Any]],
    lexicals: dict[str, LexicalIndex],
) -> dict[str, Any]:
    """BM25 alone over full rankings: bigram kinds, idf powers, k1 and b (valid and test).

    The reference implementation (:func:`ref_bm25`) is first checked against LexicalIndex on every
    variant LexicalIndex builds.
    """
    docs = list(idx.file_table().texts)
    d = lexicals["default"]
    for name, lex in lexicals.items():
        for set_name in ("valid", "test"):
            ref = ref_bm25(
                docs,
                texts[set_name],
                bigrams="stopword_free" if lex.bigrams else "none",
                k1=lex.k1,
                b=lex.b,
                idf_power=lex.idf_power,
            )
            labels = np.asarray(idx.state.labels)
            for qi, q in enumerate(texts[set_name]):
                got = lex.score_labels(q, labels)
                if not np.allclose(got, ref[qi], rtol=1e-5, atol=1e-6):
                    raise SystemExit(f"reference BM25 and LexicalIndex ({name}) disagree on {q!r}")
    grid: list[tuple[str, dict[str, Any]]] = []
    for bigrams in ("none", "raw", "stopword_free"):
        for p in (1.0, 0.5, 0.0):
            grid.append(
                (
                    f"bigrams={bigrams} idf_power={p:g}",
                    {"bigrams": bigrams, "idf_power": p, "k1": d.k1, "b": d.b},
                )
            )
    base_bigrams = "stopword_free" if d.bigrams else "none"
    for p in (0.75, 0.25):
        grid.append(
            (
                f"bigrams={base_bigrams} idf_power={p:g}",
                {"bigrams": base_bigrams, "idf_power": p, "k1": d.k1, "b": d.b},
            )
        )
    for k1 in (0.5, 0.9, 1.2, 1.5, 2.0):
        for b in (0.0, 0.25, 0.5, 0.75, 1.0):
            if (k1, b) != (d.k1, d.b):
                grid.append(
                    (
                        f"default with k1={k1:g} b={b:g}",
                        {"bigrams": base_bigrams, "idf_power": d.idf_power, "k1": k1, "b": b},
                    )
                )
    variants: dict[str, Any] = {}
    for name, kw in grid:
        variants[name] = {
            s: summary(
                dense_metrics(ref_bm25(docs, texts[s], **kw), ids, sets[s], meta, ideal_dcgs(sets[s], meta))
            )
            for s in ("valid", "test")
        }
    return {"checked_against_LexicalIndex": sorted(lexicals), "variants": variants}


if __name__ == "__main__":
    raise SystemExit(main())
