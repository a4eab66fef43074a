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
matrix-vector product: no graph to load, recall 1.0). The weights were tuned on held-out
ALFWorld tasks and paraphrases (``benchmarks/eval_retrieval.py``).
The ``random`` key is the paper's baseline: k memories drawn at random.

The ``avefact`` key (the paper's AveFact) matches keywords instead of the whole
task. The query's keywords Q come from an extractor (the built-in
:func:`memp_cli.build.builtin.keywords.extract_keywords`, or an LLM with ``memp query --model``);
a memory's keywords M are its ``keywords`` field (filled at distill time, editable),
or the built-in extractor's keywords of its task when that field is empty. Every
keyword is embedded on its own and::

    score(m) = mean over q in Q of  max over k in M of  cos(q, k)

that is, each query keyword is matched to the memory keyword closest to it and the
matches are averaged. The paper says "the average similarity of the keywords"; we
take the best match per query keyword (rather than the mean over all q, k pairs)
because a memory's unrelated keywords should not drag its score down, and a query
keyword should count once however many keywords the memory has. Candidates: the
``N`` nearest keyword vectors of each q in the keyword graph, and the memories having
any of them; they are rescored exactly. No memory outside the candidates can score
above ``mean_q cos(q, its N-th neighbour)``, so while the k-th best candidate is below
that bound, ``N`` grows (up to every keyword). A memory without keywords is never an
avefact candidate.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memp_cli.backends.embedders import Embedder
from memp_cli.errors import InputError, MemoryFileError
from memp_cli.index import Index, KeywordIndex, unit_rows
from memp_cli.index.lexical import LexicalIndex
from memp_cli.model.memory import Memory

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.backends.llm import LLMSettings
    from memp_cli.config import RetrievalConfig
    from memp_cli.update.outcomes import Usage

KEYS = ("query", "avefact", "random")
# Keyword vocabularies up to this size are searched exactly (one matrix product);
# larger ones through the keyword hnsw graph.
KW_EXACT_LIMIT = 2048
# Nearest keywords per query keyword in the first candidate round (grows x4 while needed).
KW_FIRST_ROUND = 8
LLM_KEYWORD_WORKERS = 4
# Batches smaller than this search the mapped vectors exactly (one matrix product) when the
# index was loaded with them (index.load(exact=True)) and not with its graph; larger ones
# load the hnsw graph. At 100k memories the graph costs ~130 ms to load and ~0.2 ms per
# query; exact search ~10-20 ms per query read through the vectors.
EXACT_MAX_QUERIES = 32
# The family part of a score: the mean of the best FAMILY_POOL candidate scores of the memory's
# procedure family (a missing member counts 0, so one lone look-alike pools little).
FAMILY_POOL = 3

KeywordExtractor = Callable[[Sequence[str]], list[list[str]]]


def builtin_keywords(tasks: Sequence[str]) -> list[list[str]]:
    """Query keywords by the built-in extractor (no model)."""
    from memp_cli.build.builtin.keywords import extract_keywords

    return [extract_keywords(t) for t in tasks]


def llm_keywords(settings: LLMSettings, *, cache_dir: Path, prompts_dir: Path | None) -> KeywordExtractor:
    """Query keywords by an LLM (the ``keywords`` prompt), replies cached in ``cache_dir``.

    Raises :class:`memp_cli.errors.LLMError` when a call fails or the reply stays invalid.
    """

    def run(tasks: Sequence[str]) -> list[list[str]]:
        from concurrent.futures import ThreadPoolExecutor

        from memp_cli.backends import llm
        from memp_cli.build.prompting import keyword_messages, load_prompt
        from memp_cli.model.script import keywords_from_reply

        prompt = load_prompt("keywords", prompts_dir)
        cache = llm.ResponseCache(cache_dir)

        def one(task: str) -> list[str]:
            value, _ = llm.complete_json(
                keyword_messages(task, prompt), settings, validate=keywords_from_reply, cache=cache
            )
            return value

        distinct = list(dict.fromkeys(tasks))
        if len(distinct) <= 1:
            got = [one(t) for t in distinct]
        else:
            with ThreadPoolExecutor(min(LLM_KEYWORD_WORKERS, len(distinct))) as pool:
                got = list(pool.map(one, distinct))
        by_task = dict(zip(distinct, got, strict=True))
        return [by_task[t] for t in tasks]

    return run


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
class Retriever:
    index: Index
    embedder: Embedder
    k: int = 3
    min_score: float = 0.2
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
    # avefact: the keywords of each query of the last scored() call
    query_keywords: list[list[str]] = field(default_factory=list)
    # key query: per query of the last scored() call, per state position, the procedure and
    # family parts of the score (for --explain)
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
        self._kw_vecs: dict[str, np.ndarray] = {}

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    # --------------------------------------------------------------- scoring
    def _allowed(self) -> np.ndarray | None:
        """Boolean mask over state positions for --kind (None: all)."""
        import numpy as np

        if self.kind is None:
            return None
        return np.array([k == self.kind for k in self.index.state.kinds], dtype=bool)

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
        if exact:
            found = self._exact_candidates(qvecs, n_cand, allowed)
        else:
            found = self._hnsw_candidates(qvecs, n_cand, allowed)
        if found is None:
            return [[] for _ in queries]
        labels, sims = found
        out = []
        self.details = []
        for qi, q in enumerate(queries):
            cand: dict[int, float] = dict(zip(labels[qi].tolist(), sims[qi].tolist(), strict=True))
            key_lex = self._bm25(idx.lexical, q, self.lexical_weight, cand, allowed, n_cand)
            proc = self._bm25(idx.procedure, q, self.procedure_weight, cand, allowed, n_cand)
            missing = [lab for lab in {**key_lex, **proc} if lab not in cand]
            if missing:
                extra_cos = idx.vectors(missing) @ qvecs[qi]
                cand.update({lab: float(c) for lab, c in zip(missing, extra_cos.tolist(), strict=True)})
            for part, lex, weight in (
                (key_lex, idx.lexical, self.lexical_weight),
                (proc, idx.procedure, self.procedure_weight),
            ):
                if lex is not None and weight > 0:
                    self._complete(part, lex, q, cand)
            out.append(self._fuse(cand, key_lex, proc))
        return out

    def _bm25(
        self,
        lex: LexicalIndex | None,
        query: str,
        weight: float,
        cand: Mapping[int, float],
        allowed: np.ndarray | None,
        n_cand: int,
    ) -> dict[int, float]:
        """BM25 / its bound for ``query``: the best ``n_cand`` allowed labels (candidates too)."""
        if lex is None or weight <= 0:
            return {}
        top_l, top_s = lex.top(query, n_cand * (4 if allowed is not None else 1))
        bound = lex.max_score(query) or 1.0
        out: dict[int, float] = {}
        for lab, s in zip(top_l.tolist(), top_s.tolist(), strict=True):
            if allowed is not None and not allowed[self.index.position_of_label(lab)]:
                continue
            out[lab] = s / bound
        return out

    @staticmethod
    def _complete(part: dict[int, float], lex: LexicalIndex, query: str, cand: Mapping[int, float]) -> None:
        """Fill ``part`` (a _bm25 result) with the BM25 / bound of every other candidate."""
        import numpy as np

        rest = np.array([lab for lab in cand if lab not in part], dtype=np.int64)
        if len(rest):
            bound = lex.max_score(query) or 1.0
            extra = lex.score_labels(query, rest) / bound
            part.update({int(lab): float(s) for lab, s in zip(rest, extra, strict=True)})

    def _fuse(
        self, cand: Mapping[int, float], key_lex: Mapping[int, float], proc: Mapping[int, float]
    ) -> list[tuple[int, float, float, float]]:
        """The fused score of each candidate (see the module docstring), best first."""
        idx = self.index
        w, p, f = self.lexical_weight, self.procedure_weight, self.family_weight
        if idx.procedure is None:
            p = 0.0  # an index from before format 4 (a sync upgrades it)
        base: dict[int, float] = {}
        for lab, cos in cand.items():
            task = (1 - w) * cos + w * key_lex.get(lab, 0.0)
            base[lab] = (1 - p) * task + p * proc.get(lab, 0.0)
        score = base
        pooled: dict[int, float] = {}
        if f > 0:
            families = idx.state.families
            best: dict[str, list[float]] = {}
            fam_of: dict[int, str] = {}
            for lab, b in sorted(base.items(), key=lambda kv: -kv[1]):
                pos = idx.position_of_label(lab)
                fam = (families[pos] if pos < len(families) else "") or idx.state.ids[pos]
                fam_of[lab] = fam
                top = best.setdefault(fam, [])
                if len(top) < FAMILY_POOL:
                    top.append(b)
            pooled = {lab: sum(best[fam_of[lab]]) / FAMILY_POOL for lab in base}
            score = {lab: (1 - f) * b + f * pooled[lab] for lab, b in base.items()}
        rows = [
            (idx.position_of_label(lab), sc, cand[lab], key_lex.get(lab, 0.0)) for lab, sc in score.items()
        ]
        # Ties go to the closer embedding, then the smaller id.
        rows.sort(key=lambda r: (-r[1], -r[2], idx.state.ids[r[0]]))
        self.details.append(
            {
                idx.position_of_label(lab): {"procedure": proc.get(lab, 0.0), "family": pooled.get(lab, 0.0)}
                for lab in base
            }
        )
        return rows

    def _hnsw_candidates(
        self, qvecs: np.ndarray, n_cand: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, cosines), each (len(qvecs), <= n_cand): the graph's nearest allowed memories."""
        idx = self.index
        hnsw = idx.hnsw
        assert hnsw is not None
        filt = None
        if allowed is not None:
            labels_ok = set(idx.label_array()[allowed].tolist())
            if not labels_ok:
                return None
            n_cand = min(n_cand, len(labels_ok))

            def filt(label: int) -> bool:
                return label in labels_ok

        while True:
            try:
                labels, dists = hnsw.knn_query(qvecs, k=n_cand, filter=filt, num_threads=1)
                return labels, 1.0 - dists
            except RuntimeError:  # fewer reachable elements than asked (deletions, filter)
                if n_cand <= 1:
                    return None
                n_cand //= 2

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
        elif len(idx.state.labels) == mat.shape[0]:
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
        vecs = self.index.vectors([self.index.state.labels[p] for p in picked])
        sims = (vecs @ qvec).tolist() if len(picked) else []
        return [(p, float(s), float(s), 0.0) for p, s in zip(picked, sims, strict=True)]

    # --------------------------------------------------------------- avefact
    def _avefact(
        self, queries: Sequence[str], allowed: np.ndarray | None
    ) -> list[list[tuple[int, float, float, float]]]:
        import numpy as np

        self.query_keywords = [list(kws) for kws in self.keyword_extractor(list(queries))]
        kwi = self.index.keyword_index()
        kw_labels = kwi.live()
        if allowed is not None and len(kw_labels):
            ok_pos = np.flatnonzero(allowed)
            kw_labels = (
                np.unique(np.concatenate([kwi.row(p) for p in ok_pos.tolist()]))
                if len(ok_pos)
                else kw_labels[:0]
            )
        if not len(kw_labels):
            self._warn(
                "no memory has keywords, so --key avefact finds nothing: add `keywords` to the memory "
                "files (or re-distill), or use --key query"
            )
            return [[] for _ in queries]
        todo = [w for kws in self.query_keywords for w in kws if w not in self._kw_vecs]
        todo = list(dict.fromkeys(todo))
        if todo:
            self._kw_vecs.update(zip(todo, self.embedder.embed(todo), strict=True))
        out: list[list[tuple[int, float, float, float]]] = []
        for q, kws in zip(queries, self.query_keywords, strict=True):
            if not kws:
                self._warn(f"no keywords found in the query {q[:60]!r}: nothing to match with --key avefact")
                out.append([])
                continue
            qv = np.stack([self._kw_vecs[w] for w in kws]).astype(np.float32)
            out.append(self._avefact_one(kwi, qv, kw_labels, allowed))
        return out

    def _nearest(
        self, kwi: KeywordIndex, qv: np.ndarray, kw_labels: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosines), each (len(qv), n): the n nearest allowed keywords of each row."""
        import numpy as np

        if len(kw_labels) > KW_EXACT_LIMIT and n < len(kw_labels) and kwi.hnsw is not None:
            ok = None
            if len(kw_labels) < len(kwi.live()):
                allowed_set = set(kw_labels.tolist())

                def ok(label: int) -> bool:
                    return label in allowed_set

            try:
                labels, dists = kwi.hnsw.knn_query(qv, k=n, filter=ok, num_threads=1)
                return labels.astype(np.int64), 1.0 - dists
            except RuntimeError:  # fewer reachable than asked: search exactly
                pass
        mat, row = kwi.matrix()
        sims = qv @ mat[row[kw_labels]].T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :n]
        return kw_labels[top], np.take_along_axis(sims, top, axis=1)

    def _avefact_one(
        self, kwi: KeywordIndex, qv: np.ndarray, kw_labels: np.ndarray, allowed: np.ndarray | None
    ) -> list[tuple[int, float, float, float]]:
        import numpy as np

        n_kw = len(kw_labels)
        # a keyword is usually shared by many memories: start small, the bound below widens it
        n = min(n_kw, max(2 * self.k, KW_FIRST_ROUND))
        while True:
            labels, sims = self._nearest(kwi, qv, kw_labels, n)
            cand = kwi.memories_of(np.unique(labels))
            if allowed is not None:
                cand = cand[allowed[cand]]
            scores = self._avefact_scores(kwi, qv, cand)
            if n >= n_kw:
                break
            # a memory outside the candidates has no keyword among any q's n nearest
            bound = float(sims[:, -1].mean())
            kth = np.sort(scores)[::-1][self.k - 1] if len(scores) >= self.k else -np.inf
            if kth >= bound or bound < self.min_score:
                break
            n = min(n_kw, n * 4)
        # best first; ties by memory id (state positions are in id order); the first k are exact
        order = np.lexsort((cand, -scores))[: max(self.k * 10, 50)]
        top = zip(cand[order].tolist(), scores[order].tolist(), strict=True)
        return [(int(p), float(s), float(s), 0.0) for p, s in top]

    @staticmethod
    def _avefact_scores(kwi: KeywordIndex, qv: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Exact AveFact scores of the memories at ``positions`` (each has keywords)."""
        import numpy as np

        if not len(positions):
            return np.zeros(0, dtype=np.float64)
        begin = kwi.offsets[positions]
        lengths = kwi.offsets[positions + 1] - begin
        starts = np.cumsum(lengths) - lengths  # where each candidate's keywords start in `flat`
        flat = kwi.labels[np.repeat(begin - starts, lengths) + np.arange(int(lengths.sum()))]
        uniq, inv = np.unique(flat, return_inverse=True)
        sims = qv @ kwi.vectors(uniq).T  # (len(Q), distinct keywords)
        best = np.maximum.reduceat(sims[:, inv], starts, axis=1)  # (len(Q), candidates)
        return best.mean(axis=0).astype(np.float64)

    def _explain(self, qi: int, pos: int) -> list[tuple[str, str, float]]:
        """For an avefact hit: each query keyword, its best memory keyword, and their cosine."""
        import numpy as np

        kwi = self.index.keyword_index()
        labels = kwi.row(pos)
        kws = self.query_keywords[qi]
        qv = np.stack([self._kw_vecs[w] for w in kws]).astype(np.float32)
        sims = qv @ kwi.vectors(labels).T
        best = sims.argmax(axis=1)
        return [
            (q, kwi.words[int(labels[b])], float(sims[i, b]))
            for i, (q, b) in enumerate(zip(kws, best, strict=True))
        ]

    # --------------------------------------------------------------- results
    def _utility(self, mid: str) -> float:
        u = self.usage.get(mid) if self.usage is not None else None
        return u.success_rate() if u is not None else 0.5

    def search(self, queries: Sequence[str]) -> list[list[Hit]]:
        results = []
        w_u = self.utility_weight if self.usage is not None else 0.0
        for qi, rows in enumerate(self.scored(queries)):
            if w_u and self.key != "random":
                ids = self.index.state.ids
                rows = sorted(
                    ((p, s + w_u * (self._utility(ids[p]) - 0.5), c, lx) for p, s, c, lx in rows),
                    key=lambda r: (-r[1], -r[2], ids[r[0]]),
                )
            hits: list[Hit] = []
            for pos, score, cos, lex in rows:
                if len(hits) >= self.k:
                    break
                if self.key != "random" and score < self.min_score:
                    break
                mid = self.index.state.ids[pos]
                try:
                    mem = self.index.store.read_memory(mid)
                except MemoryFileError as e:
                    self.warnings.append(str(e))
                    continue
                hit = Hit(mem, score, cos, lex, rank=len(hits) + 1, utility=self._utility(mid))
                if self.key == "avefact":
                    hit.query_keywords = self.query_keywords[qi]
                    hit.matches = self._explain(qi, pos)
                if self.explain:
                    detail = self.details[qi].get(pos, {}) if qi < len(self.details) else {}
                    hit.explain = self._parts(queries[qi], hit, w_u, detail)
                hits.append(hit)
            results.append(hits)
        return results

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
