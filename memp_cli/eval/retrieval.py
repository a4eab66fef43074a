"""``memp eval retrieval``: how well retrieval ranks the relevant memories of labelled queries.

The queries file is JSONL, one query per line (blank lines are skipped):

- ``{"query": "put a mug on the coffee maker", "label": "put", "object": "mug"}``: the relevant
  memories are those whose ``task_type`` equals ``label`` (grade 1), grade 2 when the memory's task
  text also has the ``object`` word (a token, case-insensitive, a plural ``s``/``es`` either way).
  Without an ``"object"`` key, a label that is an ALFWorld task type takes the target object of
  the query text (:func:`memp_cli.eval.labels.target_object`); ``"object": null`` turns that off.
- ``{"query": "...", "relevant": {"<memory id, trajectory id or task id>": 2, ...}}``: graded
  ids; a trajectory id (or a ``task_id`` of stored trajectories) stands for the memories built
  from it (their ``provenance.trajectories``). Ids that match nothing are warned about.

``task`` is a synonym of ``query`` and ``task_type`` of ``label``, so a trajectory file (task +
task_type) is a queries file. Other keys (``domain``, ``id``...) are carried into the per-query
output. A query whose text (lowercased, spaces folded, final period dropped) is a stored memory's
task is *seen*: counted, and left out unless asked (we measure new tasks). A query repeating an
earlier one (same text and relevance) is counted once. A query with no relevant memory in the
store is left out (every ranking scores 0 on it) and named in a warning.

Metrics per query (:mod:`memp_cli.eval.metrics`): P@1, P@k, MRR within k, NDCG@k (gain
``2^grade - 1``; the ideal over every memory of the store, so a relevant memory ranked below k
lowers it) and fail@1 (the top memory is a failed run); means with bootstrap intervals over
queries. Rankings are ``Retriever.search`` itself (what ``memp query`` returns), one batch per
configuration. An embedder other than the store's is evaluated on an index built in memory over
the same memories (:func:`open_for`): the store is not written.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from memp_cli.errors import InputError
from memp_cli.eval import metrics
from memp_cli.eval.labels import ALFWORLD_TYPES, mentions, norm_task, target_object
from memp_cli.redact import shown

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.backends.embedders import Embedder
    from memp_cli.index import Index
    from memp_cli.model.memory import Memory
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store.protocol import MemoryStore

#: Per-query metrics, in the order of :func:`query_scores`' result.
METRICS = ("p1", "pk", "mrr", "ndcg", "fail1")
QUERY_HINT = (
    'each line: {"query": TEXT, "label": TYPE[, "object": WORD]} or {"query": TEXT, "relevant": '
    '{ID: GRADE, ...}} ("task" and "task_type" work too)'
)


# ---------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    """One query: its text and what is relevant to it (a label, or graded ids)."""

    text: str
    label: str | None = None
    object: str | None = None
    relevant: Mapping[str, int] | None = None
    line: int = 0  # in the queries file (0: made in code)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def spec(self) -> tuple[Any, ...]:
        """What makes two queries the same query (text key and relevance)."""
        rel = tuple(sorted(self.relevant.items())) if self.relevant is not None else None
        return (norm_task(self.text), self.label, self.object, rel)


_KNOWN = {"query", "task", "label", "task_type", "object", "relevant"}


def parse_query(obj: Any, line: int = 0) -> Query:
    """A :class:`Query` from one decoded JSON line; ValueError (the reason) when it is not one."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    text = obj.get("query", obj.get("task"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError('no "query" (or "task") string')
    label = obj.get("label", obj.get("task_type"))
    relevant = obj.get("relevant")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError('"label" must be a non-empty string')
    if relevant is not None and label is not None:
        raise ValueError('give "relevant" or "label" (or "task_type"), not both')
    if relevant is None and label is None:
        raise ValueError('no "label" (or "task_type") and no "relevant" ids: nothing is relevant')
    grades: dict[str, int] | None = None
    if relevant is not None:
        if not isinstance(relevant, dict) or not relevant:
            raise ValueError('"relevant" must be a non-empty object of id: grade')
        grades = {}
        for rid, g in relevant.items():
            if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= 10:
                raise ValueError(f'"relevant" grade of {rid!r} must be a whole number 0..10, got {shown(g)}')
            grades[str(rid)] = g
    obj_word: str | None
    if "object" in obj:
        obj_word = obj["object"]
        if obj_word is not None and (not isinstance(obj_word, str) or not obj_word.strip()):
            raise ValueError('"object" must be a non-empty string or null')
    elif label is not None:
        obj_word = labelled(text, label).object
    else:
        obj_word = None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    return Query(text.strip(), label and label.strip(), obj_word, grades, line, extra)


def labelled(text: str, label: str, line: int = 0) -> Query:
    """A label query; its object is the ALFWorld target object of ``text`` when ``label`` is an
    ALFWorld task type (:func:`memp_cli.eval.labels.target_object`), else None."""
    return Query(text.strip(), label, target_object(text) if label in ALFWORLD_TYPES else None, line=line)


def read_queries(stream: IO[bytes], name: str) -> tuple[list[Query], list[InputError]]:
    """The queries of a JSONL stream, and one error (``name:line: why``) per bad line skipped."""
    out: list[Query] = []
    bad: list[InputError] = []
    for lineno, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            out.append(parse_query(orjson.loads(raw), lineno))
        except orjson.JSONDecodeError as e:
            bad.append(InputError(f"not valid JSON ({e})", path=name, line=lineno, hint=QUERY_HINT))
        except ValueError as e:
            bad.append(InputError(str(e), path=name, line=lineno, hint=QUERY_HINT))
    return out, bad


# --------------------------------------------------------------------------- relevance
@dataclass(frozen=True)
class MemoryInfo:
    """What relevance and fail@1 need of a memory."""

    id: str
    task: str
    type: str | None
    success: bool | None = None
    trajectories: tuple[str, ...] = ()

    @classmethod
    def of(cls, m: Memory, type_rule: Callable[[str], str] | None = None) -> MemoryInfo:
        """``type_rule``: the type of a memory stored without one (None: it has no type)."""
        mtype = m.task_type or (type_rule(m.task) if type_rule else None)
        return cls(m.id, m.task, mtype, m.success, tuple(m.provenance.trajectories))


def label_grade(query: Query, memory: MemoryInfo) -> int:
    """2 = the query's label and object, 1 = its label, 0 = another (or no) type."""
    if query.label is None or memory.type != query.label:
        return 0
    return 2 if query.object and mentions(memory.task, query.object) else 1


@dataclass
class Judged:
    """A query with the grade of every relevant memory and its ideal DCG@k over the store."""

    query: Query
    grades: dict[str, int]
    ideal: float
    seen: bool = False  # its text is a stored memory's task


@dataclass
class Prepared:
    """The queries to evaluate, and what was left out."""

    judged: list[Judged] = field(default_factory=list)
    seen: int = 0  # queries whose text is a memory's task (left out with exclude_seen)
    repeated: int = 0
    no_relevant: list[Query] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"seen": self.seen, "repeated": self.repeated, "no_relevant": len(self.no_relevant)}


def judge(
    queries: Sequence[Query],
    memories: Sequence[MemoryInfo],
    *,
    k: int,
    exclude_seen: bool = True,
    task_trajectories: Callable[[], Mapping[str, Sequence[str]]] | None = None,
    where: str = "queries",
) -> Prepared:
    """Grade every memory for every query. ``task_trajectories``: task id -> trajectory ids,
    called once, only when an explicit id is neither a memory's nor a trajectory's."""
    out = Prepared()
    by_traj: dict[str, list[str]] = {}
    for m in memories:
        for t in m.trajectories:
            by_traj.setdefault(t, []).append(m.id)
    mem_ids = {m.id for m in memories}
    mem_tasks = {norm_task(m.task) for m in memories}
    by_task: Mapping[str, Sequence[str]] | None = None
    done: set[tuple[Any, ...]] = set()
    for q in queries:
        if q.spec() in done:
            out.repeated += 1
            continue
        done.add(q.spec())
        seen = norm_task(q.text) in mem_tasks
        out.seen += seen
        if seen and exclude_seen:
            continue
        grades: dict[str, int] = {}
        if q.relevant is None:
            grades = {m.id: g for m in memories if (g := label_grade(q, m)) > 0}
        else:
            unknown = []
            for rid, g in q.relevant.items():
                ids = [rid] if rid in mem_ids else by_traj.get(rid)
                if ids is None:
                    if by_task is None:
                        by_task = task_trajectories() if task_trajectories else {}
                    ids = [m for t in by_task.get(rid, ()) for m in by_traj.get(t, ())] or None
                if ids is None:
                    unknown.append(rid)
                    continue
                for mid in ids:
                    grades[mid] = max(grades.get(mid, 0), g)
            grades = {mid: g for mid, g in grades.items() if g > 0}
            if unknown:
                out.warnings.append(
                    f"{where}:{q.line}: no memory, trajectory or task has the id "
                    + ", ".join(repr(u) for u in unknown[:5])
                    + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
                )
        if not grades:
            out.no_relevant.append(q)
            continue
        ideal = metrics.ideal_dcg(grades.values(), k)
        out.judged.append(Judged(q, grades, ideal, seen))
    if out.no_relevant:
        lines = ", ".join(str(q.line) for q in out.no_relevant[:10])
        more = f" and {len(out.no_relevant) - 10} more" if len(out.no_relevant) > 10 else ""
        out.warnings.append(
            f"{where}: {len(out.no_relevant)} quer{'y has' if len(out.no_relevant) == 1 else 'ies have'} "
            f"no relevant memory in the store, left out (line {lines}{more})"
        )
    return out


def query_scores(
    ranked: Sequence[str],
    grades: Mapping[str, int],
    ideal: float,
    failed: Container[str],
    *,
    k: int,
    precision_k: int | None = None,
) -> list[float]:
    """[P@1, P@precision_k (k if None), MRR within k, NDCG@k, fail@1] of one ranking (ids, best
    first); ``failed``: the ids of memories that are failed runs."""
    top = list(ranked[:k])
    s = metrics.score_ranking([grades.get(mid, 0) for mid in top], ideal, k=k, precision_k=precision_k or k)
    return [s.p1, s.pk, s.mrr, s.ndcg, float(bool(top) and top[0] in failed)]


# -------------------------------------------------------------------------- rankings
def ranked_ids(retriever: Retriever, texts: Sequence[str]) -> list[list[tuple[str, bool | None]]]:
    """(memory id, success) of each query's hits, best first: one ``search`` batch."""
    return [[(h.memory.id, h.memory.success) for h in hits] for hits in retriever.search(list(texts))]


def evaluate(
    make: Callable[[int | None], Retriever],
    judged: Sequence[Judged],
    *,
    k: int,
    seeds: Sequence[int | None] = (None,),
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Per-query rows (len(judged) x len(METRICS)) of the retriever ``make(seed)`` gives, the
    mean over ``seeds`` (several for the ``random`` key). ``warn``: the retriever's warnings."""
    import numpy as np

    texts = [j.query.text for j in judged]
    runs = []
    said: set[str] = set()
    for seed in seeds:
        rows = []
        retriever = make(seed)
        ranked = ranked_ids(retriever, texts)
        for w in retriever.warnings:
            if warn is not None and w not in said:
                said.add(w)
                warn(w)
        for j, hits in zip(judged, ranked, strict=True):
            failed = {mid for mid, ok in hits if ok is False}
            rows.append(query_scores([mid for mid, _ in hits], j.grades, j.ideal, failed, k=k))
        runs.append(rows)
    return np.asarray(runs, dtype=np.float64).reshape(len(seeds), len(judged), len(METRICS)).mean(axis=0)


# ----------------------------------------------------------------------------- indexes
@contextmanager
def open_for(
    store: MemoryStore,
    embedder: Embedder,
    *,
    keywords: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Index | None]:
    """The index to rank with ``embedder``: the store's own (brought up to date as ``memp query``
    does) when it is the store's embedder; else one built in memory over the same memory files,
    from an empty temporary index folder, so nothing of the store is written."""
    from memp_cli.errors import StoreError
    from memp_cli.index import build_in_memory, open_index, read_state

    try:
        state = read_state(store)
    except StoreError:  # damaged or another format: open_index says what it does about it
        state = None
    own = store.config.embedder.name if state is None else state.embedder
    if embedder.name == own:
        yield open_index(store, embedder, keywords=keywords, on_note=on_note).index
        return
    with tempfile.TemporaryDirectory(prefix="memp-eval-index-") as tmp:
        scratch = copy.copy(store)
        scratch.index_dir = Path(tmp)
        index, _ = build_in_memory(scratch, embedder)
        yield index if index.state.count else None


# ------------------------------------------------------------------------------- runs
# Baseline rankers (``memp eval retrieval --baselines``): Retriever overrides that keep one
# signal of the query key's score, and no floor.
BASELINES: dict[str, dict[str, float]] = {
    "bm25": {"lexical_weight": 1.0, "procedure_weight": 0.0, "family_weight": 0.0, "min_score": -1.0},
    "cosine": {"lexical_weight": 0.0, "procedure_weight": 0.0, "family_weight": 0.0, "min_score": -1.0},
}


@dataclass(frozen=True)
class Setting:
    """One configuration, one row: ``lexical_weight`` None is the store's; ``baseline`` a name
    of :data:`BASELINES` (the query key with one signal only) or None (the store's ranking)."""

    embedder: str
    key: str
    lexical_weight: float | None = None
    baseline: str | None = None


@dataclass
class Row:
    setting: Setting
    k: int
    scores: np.ndarray  # per query x METRICS
    intervals: list[metrics.Interval]
    judged: list[Judged]

    def to_dict(self, *, per_query: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "embedder": self.setting.embedder,
            "key": self.setting.key,
            "lexical_weight": self.setting.lexical_weight,
            "baseline": self.setting.baseline,
            "k": self.k,
            "queries": len(self.judged),
        }
        for name, iv in zip(METRICS, self.intervals, strict=True):
            d[name] = round(iv.mean, 4)
            d[f"{name}_ci95"] = [round(iv.low, 4), round(iv.high, 4)]
        if per_query:
            d["per_query"] = [
                {
                    "line": j.query.line,
                    "query": j.query.text,
                    "label": j.query.label,
                    "object": j.query.object,
                    **dict(j.query.extra),
                    "relevant": len(j.grades),
                    **{name: round(float(v), 4) for name, v in zip(METRICS, row, strict=True)},
                }
                for j, row in zip(self.judged, self.scores.tolist(), strict=True)
            ]
        return d


def run(
    store: MemoryStore,
    judged: Sequence[Judged],
    settings: Sequence[Setting],
    *,
    k: int = 10,
    seeds: int = 10,
    resamples: int = 2000,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Row]:
    """One :class:`Row` per setting (grouped by embedder: each index is opened once)."""
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import store_embedder
    from memp_cli.update.outcomes import Ledger

    usage = None
    by_embedder: dict[str, list[Setting]] = {}
    for s in settings:
        by_embedder.setdefault(s.embedder, []).append(s)
    for name, group in by_embedder.items():
        emb = store_embedder(store, name)
        with open_for(store, emb, keywords=any(s.key == "avefact" for s in group), on_note=on_note) as idx:
            if idx is None:
                return
            for s in group:

                def make(
                    seed: int | None, s: Setting = s, idx: Index = idx, emb: Embedder = emb
                ) -> Retriever:
                    nonlocal usage
                    over: dict[str, Any] = {"lexical_weight": s.lexical_weight}
                    if s.baseline is not None:
                        over.update(BASELINES[s.baseline], utility_weight=0.0)
                    r = Retriever.from_config(
                        idx,
                        emb,
                        store.config.retrieval,
                        k=k,
                        key=s.key,
                        seed=seed,
                        collapse=s.key != "random",  # what memp query returns
                        **over,
                    )
                    if r.utility_weight > 0:  # as memp query ranks: with the outcomes
                        usage = usage if usage is not None else Ledger.of(store).usage()
                        r.usage = usage
                    return r

                seed_list: list[int | None] = list(range(seeds)) if s.key == "random" else [None]
                rows = evaluate(make, judged, k=k, seeds=seed_list, warn=on_note)
                yield Row(s, k, rows, metrics.bootstrap_intervals(rows, resamples=resamples), list(judged))
