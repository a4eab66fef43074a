"""Retrieval: the best memories for a task.

The ``query`` key scores a memory for a task from three parts, each in [0, 1]::

    task   = (1 - w) * cosine + w * bm25(task text, key text) / bound
    base   = (1 - p) * task + p * bm25(task text, procedure) / bound
    score  = (1 - f) * base + f * (sum of the best 3 bases of its family) / 3

``w``, ``p``, ``f`` are ``[retrieval] lexical_weight``, ``procedure_weight`` and
``family_weight``. The *procedure* (:meth:`Memory.procedure_text`) is the script's title with its
``{variables}`` dropped: matching it weighs what is done ("put a hot ... in") over what it is done
to, which is what a procedural memory is for (without it "put a mug in sidetable" matched "put a
hot mug in sidetable" first). The *family* (:meth:`Memory.family`: the task type, else the
procedure) pools the evidence of memories that are the same procedure, so one look-alike of another
kind or domain loses to a procedure several memories agree on. ``bound`` is the largest BM25 a
document could reach for that query, so every part means the same on every store and
``min_score`` is a floor: below it a memory is not a match. Candidates are the union of the
cosine top list and both BM25 top lists, rescored exactly; the family part pools over them. The
cosine candidates come from the hnsw graph, or, for a one-shot query on an index loaded with
``index.load(..., exact=True)``, from exact search over the memory-mapped vectors (a
matrix-vector product: no graph to load, recall 1.0). On a large index the graph search runs on
the retriever's own thread while the BM25 top lists are made (:data:`OVERLAP_MIN`). The weights
were tuned on held-out ALFWorld tasks and paraphrases (``benchmarks/eval_retrieval.py``).
The ``random`` key is the paper's baseline: k memories drawn at random.

The ``avefact`` key (the paper's AveFact) matches keywords instead: see
:mod:`memp_cli.retrieve.avefact`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memp_cli.backends.embedders import Embedder
from memp_cli.config import PruneConfig
from memp_cli.errors import InputError, MemoryFileError
from memp_cli.index import Index, unit_rows
from memp_cli.model.memory import Memory
from memp_cli.retrieve.avefact import AveFact, KeywordExtractor, builtin_keywords
from memp_cli.retrieve.collapse import Duplicate

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from memp_cli.config import RetrievalConfig
    from memp_cli.index.lexseg import Lexical
    from memp_cli.update.outcomes import Usage

KEYS = ("query", "avefact", "random")
# Batches smaller than this search the mapped vectors exactly (one matrix product) when the
# index was loaded with them (index.load(exact=True)) and not with its graph; larger ones
# load the hnsw graph. At 100k memories the graph costs ~130 ms to load and ~0.2 ms per
# query; exact search ~10-20 ms per query read through the vectors.
EXACT_MAX_QUERIES = 32
# From this many memories, a query's graph search runs on a thread of its own beside the BM25
# top lists (each ~0.5-1 ms at a million memories; hnswlib releases the GIL while it searches).
OVERLAP_MIN = 50_000
# The family part of a score: the mean of the best FAMILY_POOL candidate scores of the memory's
# procedure family (a missing member counts 0, so one lone look-alike pools little).
FAMILY_POOL = 3


@dataclass
class Hit:
    memory: Memory
    score: float
    similarity: float
    lexical: float
    rank: int = 0
    # avefact only: the query's keywords, and per query keyword (keyword, best memory
    # keyword, cosine)
    query_keywords: list[str] | None = None
    matches: list[tuple[str, str, float]] | None = None
    # the outcome term: the memory's success rate with a uniform prior (0.5 when unused)
    utility: float = 0.5
    explain: dict[str, Any] | None = None  # --explain: every part of the score
    # near-duplicates collapsed into this hit (Retriever.collapse), best-ranked first
    duplicates: list[Duplicate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        m = self.memory
        d = {
            "id": m.id,
            "rank": self.rank,
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 6),
            "lexical": round(self.lexical, 6),
            "kind": m.kind,
            "task": m.task,
            "task_type": m.task_type or None,
            "success": m.success,
            "keys": m.keys,
            "keywords": m.keywords,
            "script": m.script or None,
            "steps": m.steps,
            "stats": vars(m.stats),
            "provenance": vars(m.provenance),
            "version": m.version,
            "duplicates": [d.to_dict() for d in self.duplicates],
        }
        if self.explain is not None:
            d["explain"] = self.explain
        if self.query_keywords is not None:
            d["query_keywords"] = self.query_keywords
            d["matched_keywords"] = [
                {"query": q, "keyword": k, "similarity": round(sim, 6)} for q, k, sim in self.matches or []
            ]
        return d


@dataclass
class Retriever(AveFact):
    index: Index
    embedder: Embedder
    k: int = 3
    min_score: float = 0.15
    key: str = "query"
    kind: str | None = None
    lexical_weight: float = 0.25
    procedure_weight: float = 0.5
    family_weight: float = 0.5
    seed: int | None = None
    keyword_extractor: KeywordExtractor = builtin_keywords
    # Cosine candidates by exact search over the vectors file (True), through the hnsw graph
    # (False), or (None) exactly when the index has its vectors mapped and not its graph
    # loaded and the batch is under EXACT_MAX_QUERIES.
    exact: bool | None = None
    warnings: list[str] = field(default_factory=list)
    # Outcomes (memp_cli.update.outcomes.Usage per memory id): the score gains
    # utility_weight * (success rate with a uniform prior - 0.5), so an unused memory is
    # neither punished nor favoured, and one that keeps failing ranks below an equally
    # similar one that keeps succeeding.
    usage: Mapping[str, Usage] | None = None
    utility_weight: float = 0.0
    explain: bool = False
    # Near-duplicates collapse into one hit, shown by its best-rated member, and equal scores go
    # to runs that succeeded (memp_cli.retrieve.collapse); off: the ranking exactly as scored.
    collapse: bool = False
    collapse_similarity: float = PruneConfig().duplicate_similarity
    # Where the outcomes come from when ``usage`` is not given and collapse needs to rate two
    # runs with the same outcome (read once, on first need).
    usage_loader: Callable[[], Mapping[str, Usage]] | None = None
    # avefact: the keywords of each query of the last scored() call
    query_keywords: list[list[str]] = field(default_factory=list)
    # per query of the last search() that found nothing above min_score: the best score left
    # out (None: it found something, or there was nothing to score)
    best_below: list[float | None] = field(default_factory=list)
    # key query with explain: per query of the last scored() call, per state position, the
    # procedure and family parts of the score (what --explain shows)
    details: list[dict[int, dict[str, float]]] = field(default_factory=list)

    @classmethod
    def from_config(
        cls, index: Index, embedder: Embedder, rc: RetrievalConfig, **overrides: Any
    ) -> Retriever:
        """A retriever with the store's ``[retrieval]`` settings; ``overrides`` (not None) win.

        Every caller that ranks "as memp query would" goes through here, so a new ranking
        setting reaches query, reflect, eval and the benchmarks at once.
        """
        settings: dict[str, Any] = {
            "k": rc.k,
            "min_score": rc.min_score,
            "key": rc.key,
            "lexical_weight": rc.lexical_weight,
            "procedure_weight": rc.procedure_weight,
            "family_weight": rc.family_weight,
            "utility_weight": rc.utility_weight,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(index=index, embedder=embedder, **settings)

    def __post_init__(self) -> None:
        if self.key not in KEYS:
            raise InputError(f"unknown key {self.key!r}", hint=f"choose one of {', '.join(KEYS)}")
        self._rng = random.Random(self.seed)
        self._pool: ThreadPoolExecutor | None = None
        self._kw_vecs: dict[str, np.ndarray] = {}

    # --------------------------------------------------------------- scoring
    def _allowed(self) -> np.ndarray | None:
        """Boolean mask over state positions for --kind (None: all)."""

        if self.kind is None:
            return None
        return self.index.state.kind_mask(self.kind)

    def scored(self, queries: Sequence[str]) -> list[list[tuple[int, float, float, float]]]:
        """Per query: (state position, score, cosine, lexical) best first, before min-score/k."""
        idx = self.index
        n = len(idx)
        if n == 0 or not queries:
            return [[] for _ in queries]
        allowed = self._allowed()
        if self.key == "random":
            return [self._random(q, allowed) for q in queries]
        if self.key == "avefact":
            return self._avefact(queries, allowed)
        qvecs = unit_rows(self.embedder.embed(list(queries)))
        n_cand = min(n, max(self.k * 10, 50))
        exact = self.exact
        if exact is None:
            exact = idx.vectors_mapped and not idx.hnsw_loaded and len(queries) < EXACT_MAX_QUERIES
        pending = None
        if not exact and n >= OVERLAP_MIN:  # the graph search releases the GIL: BM25 meanwhile
            pending = self._worker().submit(self._hnsw_candidates, qvecs, n_cand, allowed)
        sides = ((idx.lexical, self.lexical_weight), (idx.procedure, self.procedure_weight))
        # Both BM25 sides first (their top lists join the candidates), then every candidate's
        # cosine and both BM25 scores, as arrays over the candidates.
        all_tops = [
            [
                self._bm25(lex, q, allowed, n_cand) if lex is not None and weight > 0 else None
                for lex, weight in sides
            ]
            for q in queries
        ]
        if pending is not None:
            found = pending.result()
        elif exact:
            found = self._exact_candidates(qvecs, n_cand, allowed)
        else:
            found = self._hnsw_candidates(qvecs, n_cand, allowed)
        if found is None:
            return [[] for _ in queries]
        labels, sims = found
        out = []
        self.details = []
        for qi, (q, tops) in enumerate(zip(queries, all_tops, strict=True)):
            labs, cos = self._candidates(labels[qi], sims[qi], tops, qvecs[qi])
            key_lex, proc = (
                self._lexical(top, lex, q, labs) if top is not None and lex is not None else None
                for top, (lex, _) in zip(tops, sides, strict=True)
            )
            out.append(self._fuse(labs, cos, key_lex, proc))
        return out

    def _worker(self) -> ThreadPoolExecutor:
        """This retriever's thread for graph searches (started on first use; it ends when the
        retriever is collected)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memp-graph")
        return self._pool

    def _bm25(
        self, lex: Lexical, query: str, allowed: np.ndarray | None, n_cand: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The best ``n_cand`` allowed labels of ``query``, their BM25 / bound (float64), and the
        bound (the largest BM25 a document could reach for it)."""
        top_l, top_s = lex.top(query, n_cand * (4 if allowed is not None else 1))
        bound = lex.max_score(query) or 1.0
        if allowed is not None:
            ok = allowed[self.index.positions(top_l)]
            top_l, top_s = top_l[ok], top_s[ok]
        return top_l, top_s.astype("float64") / bound, bound

    def _candidates(
        self,
        labels: np.ndarray,
        sims: np.ndarray,
        tops: list[tuple[np.ndarray, np.ndarray, float] | None],
        qvec: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosines as float64) of the cosine candidates and the BM25 top lists' others."""
        import numpy as np

        labs = np.asarray(labels, dtype=np.int64)
        cos = np.asarray(sims).astype(np.float64)
        seen = set(labs.tolist())
        # A set, as before: a BLAS product's last bits depend on the rows' order and count,
        # and identical memories tie on them, so the same rows in the same order keep the ranking.
        more = list({lab for top in tops if top is not None for lab in top[0].tolist() if lab not in seen})
        if more:
            extra_cos = self.index.vectors(more) @ qvec
            labs = np.concatenate([labs, np.array(more, dtype=np.int64)])
            cos = np.concatenate([cos, extra_cos.astype(np.float64)])
        return labs, cos

    @staticmethod
    def _lexical(
        top: tuple[np.ndarray, np.ndarray, float], lex: Lexical, query: str, labs: np.ndarray
    ) -> np.ndarray:
        """BM25 / bound of each of ``labs``: from the :meth:`_bm25` top list, else looked up
        (float32, as the lexical index gives it)."""
        import numpy as np

        top_l, top_v, bound = top
        out = np.empty(len(labs), dtype=np.float64)
        hit = np.zeros(len(labs), dtype=bool)
        if len(top_l):
            order = np.argsort(top_l)
            at = np.minimum(np.searchsorted(top_l[order], labs), len(top_l) - 1)
            hit = top_l[order][at] == labs
            out[hit] = top_v[order[at[hit]]]
        if not hit.all():
            out[~hit] = lex.score_labels(query, labs[~hit]) / bound
        return out

    def _fuse(
        self, labs: np.ndarray, cos: np.ndarray, key_lex: np.ndarray | None, proc: np.ndarray | None
    ) -> list[tuple[int, float, float, float]]:
        """The fused score of each candidate (see the module docstring), best first."""
        import numpy as np

        idx = self.index
        w, p, f = self.lexical_weight, self.procedure_weight, self.family_weight
        if idx.procedure is None:
            p = 0.0  # an index from before format 4 (a sync upgrades it)
        m = len(labs)
        zeros = np.zeros(m, dtype=np.float64)
        key_lex = zeros if key_lex is None else key_lex
        proc = zeros if proc is None else proc
        pos = self.index.positions(labs)
        task = (1 - w) * cos + w * key_lex
        base = (1 - p) * task + p * proc
        score, pooled = base, zeros
        state = idx.state
        if f > 0 and m:
            # Families numbered 0..: a memory in none is a family of its own.
            fam = state.family_codes(pos)
            alone = fam < 0
            fam[alone] = fam.max(initial=-1) + 1 + np.arange(int(alone.sum()))
            codes, fam = np.unique(fam, return_inverse=True)
            fam = fam.ravel()
            # Per family, its best FAMILY_POOL bases (0 for a missing member), added best first.
            by = np.lexsort((-base, fam))
            fam_by = fam[by]
            new = np.ones(m, dtype=bool)
            np.not_equal(fam_by[1:], fam_by[:-1], out=new[1:])
            first = np.flatnonzero(new)
            rank = np.arange(m) - np.repeat(first, np.diff(first, append=m))
            best = np.zeros((len(codes), FAMILY_POOL), dtype=np.float64)
            sel = rank < FAMILY_POOL
            best[fam_by[sel], rank[sel]] = base[by][sel]
            total = best[:, 0]
            for j in range(1, FAMILY_POOL):
                total = total + best[:, j]
            pooled = total[fam] / FAMILY_POOL
            score = (1 - f) * base + f * pooled
        # Ties go to the closer embedding, then the smaller id.
        order = np.lexsort((state.id_array(pos), -cos, -score))
        rows = list(
            zip(
                pos[order].tolist(),
                score[order].tolist(),
                cos[order].tolist(),
                key_lex[order].tolist(),
                strict=True,
            )
        )
        if self.explain:
            self.details.append(
                {
                    i: {"procedure": pr, "family": po}
                    for i, pr, po in zip(pos.tolist(), proc.tolist(), pooled.tolist(), strict=True)
                }
            )
        return rows

    def _hnsw_candidates(
        self, qvecs: np.ndarray, n_cand: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, cosines), each (len(qvecs), <= n_cand): the graph's nearest allowed memories."""
        idx = self.index
        labels_ok = None
        if allowed is not None:
            labels_ok = set(idx.label_array()[allowed].tolist())
            if not labels_ok:
                return None
            n_cand = min(n_cand, len(labels_ok))
        found = idx.search(qvecs, n_cand, labels_ok)  # the base and the delta graph as one
        return None if found is None else (found[0], 1.0 - found[1])

    def _exact_candidates(
        self, qvecs: np.ndarray, n_cand: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, cosines), each (len(qvecs), <= n_cand): the exact nearest allowed memories,
        by a product with the vectors file (row = label; only labels in the state count)."""
        import numpy as np

        idx = self.index
        mat = idx.vector_matrix()
        if allowed is not None:
            live: np.ndarray | None = idx.label_array()[allowed]
        elif idx.state.count == mat.shape[0]:
            live = None  # every row is a memory (as after a rebuild): no gather needed
        else:
            live = idx.label_array()
        if live is not None and not len(live):
            return None
        sims = mat @ qvecs.T  # (rows, queries)
        if live is not None:
            sims = sims[live]
        n_rows = sims.shape[0]
        n_cand = min(n_cand, n_rows)
        out_l = np.empty((len(qvecs), n_cand), dtype=np.int64)
        out_s = np.empty((len(qvecs), n_cand), dtype=np.float32)
        for qi in range(len(qvecs)):
            col = sims[:, qi]
            top = np.argpartition(-col, n_cand - 1)[:n_cand] if n_cand < n_rows else np.arange(n_rows)
            out_l[qi] = top if live is None else live[top]
            out_s[qi] = col[top]
        return out_l, out_s

    def _random(self, query: str, allowed: np.ndarray | None) -> list[tuple[int, float, float, float]]:
        positions = list(range(len(self.index)))
        if allowed is not None:
            positions = [p for p in positions if allowed[p]]
        picked = self._rng.sample(positions, min(self.k, len(positions)))
        qvec = self.embedder.embed([query])[0]
        vecs = self.index.vectors(self.index.label_array()[picked].tolist())
        sims = (vecs @ qvec).tolist() if len(picked) else []
        return [(p, float(s), float(s), 0.0) for p, s in zip(picked, sims, strict=True)]

    # --------------------------------------------------------------- results
    def _utility(self, mid: str) -> float:
        u = self.usage.get(mid) if self.usage is not None else None
        return u.success_rate() if u is not None else 0.5

    def search(self, queries: Sequence[str]) -> list[list[Hit]]:
        """The top k hits of each query above ``min_score``. :attr:`best_below` tells, per query
        that got none, the best score the floor left out (None: nothing to leave out)."""
        results = []
        self.best_below = []
        if self.utility_weight and self.usage is None and self.usage_loader is not None:
            self.usage = self.usage_loader()
        w_u = self.utility_weight if self.usage is not None else 0.0
        for qi, rows in enumerate(self.scored(queries)):
            if w_u and self.key != "random":
                id_at = self.index.state.id_at
                rows = sorted(
                    ((p, s + w_u * (self._utility(id_at(p)) - 0.5), c, lx) for p, s, c, lx in rows),
                    key=lambda r: (-r[1], -r[2], id_at(r[0])),
                )
            if self.collapse and self.key != "random":
                hits = self._collapsed(qi, queries[qi], rows, w_u)
            else:
                hits = []
                for pos, score, cos, lex in rows:
                    if len(hits) >= self.k:
                        break
                    if self.key != "random" and score < self.min_score:
                        break
                    mem = self._read(pos)
                    if mem is not None:
                        hits.append(
                            self._hit(qi, queries[qi], pos, mem, (score, cos, lex), len(hits) + 1, w_u)
                        )
            results.append(hits)
            self.best_below.append(rows[0][1] if rows and not hits and self.key != "random" else None)
        return results

    def _read(self, pos: int) -> Memory | None:
        """The memory at state position ``pos``; None (and a warning) when its file is broken."""
        try:
            return self.index.store.read_memory(self.index.state.id_at(pos))
        except MemoryFileError as e:
            self.warnings.append(str(e))
            return None

    def _hit(
        self,
        qi: int,
        query: str,
        pos: int,
        mem: Memory,
        parts: tuple[float, float, float],
        rank: int,
        w_u: float,
    ) -> Hit:
        score, cos, lex = parts
        hit = Hit(mem, score, cos, lex, rank=rank, utility=self._utility(mem.id))
        if self.key == "avefact":
            hit.query_keywords = self.query_keywords[qi]
            hit.matches = self._explain(qi, pos)
        if self.explain:
            detail = self.details[qi].get(pos, {}) if qi < len(self.details) else {}
            hit.explain = self._parts(query, hit, w_u, detail)
        return hit

    def _collapsed(
        self, qi: int, query: str, rows: list[tuple[int, float, float, float]], w_u: float
    ) -> list[Hit]:
        """The top k procedures among ``rows``: near-duplicates collapsed, successes first
        (:mod:`memp_cli.retrieve.collapse`)."""
        from memp_cli.retrieve.collapse import collapse, read_head

        above = [r for r in rows if r[1] >= self.min_score]
        state = self.index.state
        heads: set[int] = set()  # positions read by read_head only

        def rating(mid: str) -> float:
            if self.usage is None and self.usage_loader is not None:
                self.usage = self.usage_loader()
            return self._utility(mid)

        def read(pos: int) -> Memory | None:
            stamp = state.stamp_at(pos)
            if stamp is not None:
                head = read_head(self.index.store.memory_path(state.id_at(pos)), stamp)
                if head is not None:
                    heads.add(pos)
                    return head
            return self._read(pos)

        hits: list[Hit] = []
        for g in collapse(
            above,
            self.k,
            kinds=[state.kind_at(r[0]) for r in above],
            vectors=self.index.vectors(self.index.label_array()[[r[0] for r in above]].tolist()),
            threshold=self.collapse_similarity,
            read=read,
            rating=rating,
        ):
            rep = g.representative
            assert rep is not None and rep.memory is not None
            # What is shown is read whole: the hit, and the failed runs a prompt warns with.
            if rep.position in heads:
                rep.memory = self._read(rep.position)
                if rep.memory is None:  # changed since its head was read: gone or broken
                    continue
            position = {c.memory.id: c.position for c in g.members if c.memory is not None}
            for d in g.duplicates:
                if d.memory.success is False and position[d.memory.id] in heads:
                    d.memory = self._read(position[d.memory.id]) or d.memory
            parts = (rep.score, rep.similarity, rep.lexical)
            hit = self._hit(qi, query, rep.position, rep.memory, parts, len(hits) + 1, w_u)
            hit.duplicates = g.duplicates
            if hit.explain is not None:
                hit.explain["collapse"] = {"similar": len(g.duplicates)}
                if g.duplicates:
                    hit.explain["collapse"]["chosen_because"] = g.chosen_because
            hits.append(hit)
        return hits

    def _parts(self, query: str, hit: Hit, w_u: float, detail: Mapping[str, float]) -> dict[str, Any]:
        """Every part of a hit's score, for ``memp query --explain``."""
        from memp_cli.index.lexical import terms

        u = self.usage.get(hit.memory.id) if self.usage is not None else None
        parts: dict[str, Any] = {"key": self.key, "score": round(hit.score, 6)}
        if self.key == "query":
            w = self.lexical_weight
            shared = sorted(set(terms(query)) & set(terms(hit.memory.key_text())))
            parts.update(
                lexical=round(hit.lexical, 6),
                lexical_weight=w,
                cosine=round(hit.similarity, 6),
                cosine_weight=round(1 - w, 6),
                matched_terms=shared,
                procedure=round(detail.get("procedure", 0.0), 6),
                procedure_text=hit.memory.procedure_text(),
                procedure_weight=self.procedure_weight,
                family=hit.memory.family(),
                family_score=round(detail.get("family", 0.0), 6),
                family_weight=self.family_weight,
            )
        elif self.key == "avefact":
            parts["average_keyword_cosine"] = round(hit.similarity, 6)
        parts.update(
            utility=round(hit.utility, 6),
            utility_weight=w_u,
            uses=u.uses if u else 0,
            successes=u.successes if u else 0,
            failures=u.failures if u else 0,
        )
        return parts
