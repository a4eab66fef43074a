"""``memp eval replay``: the paper's update experiment on a recorded stream of runs.

The stream is fed in batches to a scratch store. Before a batch, every task in it queries the
store as it stands: a hit is a top-1 memory of the same task type (the record's
``task_type``, or its ``label``). The run is then taken to have used that memory, so its
outcome is counted on it, and the batch updates the store by the chosen policy:

- ``vanilla``: every run becomes a memory;
- ``validation``: only successful runs become memories;
- ``adjustment``: only successful runs become memories, and each failed run is reflected into
  the memory it used (the built-in reflector, or a model), the paper's best.

With ``prune`` the store's prune rules run after each batch. A held-out set of tasks (never
ingested) can be queried after each batch too, to see whether retrieval for new tasks holds.
One row per batch: runs seen, memories, duplicates (memories whose keys repeat another's),
hit rate, held-out hit rate, memories reflected and pruned, tokens and cost. The same queries
are also scored as rankings of the top 10 (:mod:`memp_cli.eval.retrieval`, label = the task
type, grade 2 when the memory's task also names the query's ALFWorld target object): P@1 (the
hit rate), MRR and NDCG@10, for the batch and for the held-out tasks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memp_cli.config import Config
from memp_cli.errors import InputError
from memp_cli.ingest import ReadResult
from memp_cli.model.trajectory import Trajectory

UPDATES = ("vanilla", "validation", "adjustment")
RANK_K = 10  # the rank cut of the per-batch MRR and NDCG


@dataclass
class ReplaySettings:
    batch_size: int = 20
    update: str = "adjustment"
    prune: bool = False
    embedder: str = "hash"
    dim: int = 256
    policy: str = "proceduralization"
    model: str = "builtin"
    api_base: str = ""  # for a local or proxied model server
    utility_weight: float = 0.0  # the outcome term in ranking ([retrieval] utility_weight)

    def check(self) -> None:
        if self.update not in UPDATES:
            raise InputError(
                f"unknown update policy {self.update!r}", hint=f"choose one of {', '.join(UPDATES)}"
            )
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class BatchRow:
    batch: int
    seen: int = 0  # runs fed so far
    memories: int = 0
    duplicates: int = 0
    queries: int = 0  # labelled tasks of this batch that queried a non-empty store
    hits: int = 0
    heldout_queries: int = 0
    heldout_hits: int = 0
    # means over the labelled queries of the batch (and of the held-out tasks): None when none
    p1: float | None = None
    mrr: float | None = None
    ndcg10: float | None = None
    heldout_p1: float | None = None
    heldout_mrr: float | None = None
    heldout_ndcg10: float | None = None
    reflected: int = 0
    pruned: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries else None

    @property
    def heldout_hit_rate(self) -> float | None:
        return self.heldout_hits / self.heldout_queries if self.heldout_queries else None

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["hit_rate"] = None if self.hit_rate is None else round(self.hit_rate, 4)
        d["heldout_hit_rate"] = None if self.heldout_hit_rate is None else round(self.heldout_hit_rate, 4)
        d["cost_usd"] = round(self.cost_usd, 6)
        for name in ("p1", "mrr", "ndcg10", "heldout_p1", "heldout_mrr", "heldout_ndcg10"):
            d[name] = None if d[name] is None else round(d[name], 4)
        return d

    def set_scores(self, scores: list[list[float]], *, heldout: bool = False) -> None:
        """Means of per-query [P@1, P@k, MRR, NDCG, fail@1] rows (see :func:`_ask`)."""
        if not scores:
            return
        n = len(scores)
        p1, mrr, ndcg = (sum(r[i] for r in scores) / n for i in (0, 2, 3))
        if heldout:
            self.heldout_p1, self.heldout_mrr, self.heldout_ndcg10 = p1, mrr, ndcg
        else:
            self.p1, self.mrr, self.ndcg10 = p1, mrr, ndcg


@dataclass
class ReplayResult:
    settings: ReplaySettings
    rows: list[BatchRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from memp_cli.redact import mask_url  # a password in the endpoint is not printed

        settings = {**vars(self.settings), "api_base": mask_url(self.settings.api_base)}
        return {"settings": settings, "rows": [r.to_dict() for r in self.rows]}


def label_of(t: Trajectory) -> str | None:
    label = t.task_type or t.extra.get("label")
    return str(label) if label else None


def duplicates(store: Any) -> int:
    """Memories whose key text repeats another memory's (after whitespace and case folding)."""
    from memp_cli.model.memory import Memory

    keys = [" ".join(m.key_text().lower().split()) for m in store.iter_memories() if isinstance(m, Memory)]
    return len(keys) - len(set(keys))


def _ask(
    store: Any, tasks: Sequence[Trajectory], utility_weight: float = 0.0
) -> tuple[list[tuple[str, str | None] | None], list[list[float]]]:
    """Query the store with each task: (memory id, its task type) of the best memory, or None;
    and, per labelled task (one that got nothing above the floor scores 0), its ranking scores
    (:func:`memp_cli.eval.retrieval.query_scores` over the top :data:`RANK_K`)."""
    from memp_cli.eval import retrieval as ev
    from memp_cli.eval.metrics import ideal_dcg
    from memp_cli.index import sync
    from memp_cli.model.memory import Memory
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import store_embedder

    if not tasks or not store.memory_ids():
        return [None for _ in tasks], []
    emb = store_embedder(store)
    idx, _ = sync(store, emb)
    rc = store.config.retrieval
    retriever = Retriever.from_config(idx, emb, rc, k=RANK_K, utility_weight=utility_weight)
    found = retriever.search([t.task for t in tasks])
    infos = [ev.MemoryInfo.of(m) for m in store.iter_memories() if isinstance(m, Memory)]
    scores = []
    for t, hits in zip(tasks, found, strict=True):
        label = label_of(t)
        if label is not None:
            q = ev.labelled(t.task, label)
            grades = {m.id: g for m in infos if (g := ev.label_grade(q, m)) > 0}
            failed = {h.memory.id for h in hits if h.memory.success is False}
            ranked = [h.memory.id for h in hits]
            scores.append(
                ev.query_scores(ranked, grades, ideal_dcg(grades.values(), RANK_K), failed, k=RANK_K)
            )
    top = [(h[0].memory.id, h[0].memory.task_type or None) if h else None for h in found]
    return top, scores


def replay(
    stream: Sequence[Trajectory],
    settings: ReplaySettings,
    *,
    heldout: Sequence[Trajectory] = (),
    workdir: Path | None = None,
    progress: Callable[[BatchRow], None] | None = None,
) -> ReplayResult:
    """Run the experiment in a scratch store (under ``workdir``, or a temporary folder)."""
    settings.check()
    with tempfile.TemporaryDirectory(prefix="memp-replay-", dir=workdir) as tmp:
        return _replay(stream, settings, heldout, Path(tmp) / "store", progress)


def _replay(
    stream: Sequence[Trajectory],
    settings: ReplaySettings,
    heldout: Sequence[Trajectory],
    root: Path,
    progress: Callable[[BatchRow], None] | None,
) -> ReplayResult:
    from memp_cli.build.runner import distill
    from memp_cli.store import Store
    from memp_cli.update.prune import prune_store
    from memp_cli.update.reflect import pending
    from memp_cli.update.reflect import reflect as run_reflect

    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = settings.embedder, settings.dim
    cfg.llm.model, cfg.llm.api_base = settings.model, settings.api_base
    store = Store.init(root, cfg)
    store.command = "eval replay"
    result = ReplayResult(settings)
    seen = 0
    for b, start in enumerate(range(0, len(stream), settings.batch_size), 1):
        batch = list(stream[start : start + settings.batch_size])
        row = BatchRow(b)
        asked = bool(store.memory_ids())  # an empty store is not asked
        found, scores = _ask(store, batch, settings.utility_weight)
        row.set_scores(scores)
        used: list[Trajectory] = []
        for t, top in zip(batch, found, strict=True):
            want = label_of(t)
            if asked and want is not None:  # nothing above the floor is a miss
                row.queries += 1
                row.hits += int(top is not None and top[1] == want)
            # the run is taken to have used the memory it was given
            used.append(replace(t, memories_used=[top[0]], id="") if top is not None else t)
        store.ingest(ReadResult(i, u) for i, u in enumerate(used, 1))
        seen += len(batch)
        rep = distill(
            store,
            settings.policy,
            model=settings.model,
            api_base=settings.api_base or None,  # the caller's (a flag), not only the store's
            only_success=settings.update != "vanilla",
        )
        row.tokens_in, row.tokens_out = rep.tokens_in, rep.tokens_out
        row.cost_usd = rep.cost_usd or 0.0
        if settings.update == "adjustment":
            todo = pending(store, unattributed=True)
            refl = run_reflect(store, todo, model=settings.model, api_base=settings.api_base or None)
            row.reflected = refl.written
            row.tokens_in += refl.tokens_in
            row.tokens_out += refl.tokens_out
            row.cost_usd += refl.cost_usd or 0.0
        if settings.prune:
            row.pruned = len(prune_store(store))
        if heldout:
            held_asked = bool(store.memory_ids())
            held_found, held_scores = _ask(store, heldout, settings.utility_weight)
            row.set_scores(held_scores, heldout=True)
            for t, top in zip(heldout, held_found, strict=True):
                want = label_of(t)
                if held_asked and want is not None:
                    row.heldout_queries += 1
                    row.heldout_hits += int(top is not None and top[1] == want)
        row.seen = seen
        row.memories = len(store.memory_ids())
        row.duplicates = duplicates(store)
        result.rows.append(row)
        if progress:
            progress(row)
    return result


def plot(results: Sequence[ReplayResult], path: Path) -> None:
    """Memories and hit rate per batch, one line per run (matplotlib, an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib", hint="pip install 'memp[plot]' (or pip install matplotlib)"
        ) from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colour = {"vanilla": "tab:blue", "validation": "tab:green", "adjustment": "tab:red"}
    for n, res in enumerate(results):
        s = res.settings
        name = s.update + (" + prune" if s.prune else "")
        # lines that coincide would hide each other: dashes for prune, a small offset per line
        style: dict[str, Any] = {
            "color": colour.get(s.update, "tab:gray"),
            "linestyle": "--" if s.prune else "-",
            "marker": "s" if s.prune else "o",
            "alpha": 0.85,
            "label": name,
        }
        xs = [r.seen for r in res.rows]
        ax1.plot(xs, [r.memories for r in res.rows], **style)
        rates = [(r.seen, r.heldout_hit_rate if r.heldout_queries else r.hit_rate) for r in res.rows]
        jitter = 0.006 * (n - (len(results) - 1) / 2)
        ax2.plot(
            [x for x, y in rates if y is not None], [y + jitter for _, y in rates if y is not None], **style
        )
    ax1.set(title="memories in the store", xlabel="runs seen", ylabel="memories")
    held = any(r.heldout_queries for res in results for r in res.rows)
    ax2.set(
        title="held-out top-1 task-type hit rate" if held else "top-1 task-type hit rate (next batch)",
        xlabel="runs seen",
        ylabel="hit rate",
        ylim=(0, 1.05),
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
