"""Retrieval: the best memories for a task.

The ``query`` key embeds the task text and fuses cosine similarity (hnswlib)
with a lexical BM25 score over the memories' keys::

    score = (1 - w) * cosine + w * bm25 / bm25_max(query)

``w`` is ``[retrieval] lexical_weight``; ``bm25_max`` is the largest score a
document could reach for that query, so both parts lie in [0, 1] and
``--min-score`` means the same thing on every store. Candidates come from
both indexes (the union of their top lists) and are rescored exactly. The
cosine candidates come from the hnsw graph, or, for a one-shot query on an
index loaded with ``index.load(..., exact=True)``, from exact search over the
memory-mapped vectors (a matrix-vector product: no graph to load, recall 1.0).
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
from memp_cli.config import PruneConfig
from memp_cli.errors import InputError, MemoryFileError
from memp_cli.index import Index, KeywordIndex, unit_rows
from memp_cli.model.memory import Memory
from memp_cli.retrieve.collapse import Duplicate

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
class Retriever:
    index: Index
    embedder: Embedder
    k: int = 3
    min_score: float = 0.0
    key: str = "query"
    kind: str | None = None
    lexical_weight: float = 1.0
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
        import numpy as np

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
        w = self.lexical_weight
        lex = idx.lexical
        for qi, q in enumerate(queries):
            cand: dict[int, float] = dict(zip(labels[qi].tolist(), sims[qi].tolist(), strict=True))
            lex_scores: dict[int, float] = {}
            if lex is not None and w > 0:
                top_l, top_s = lex.top(q, n_cand * (4 if allowed is not None else 1))
                bound = lex.max_score(q) or 1.0
                for lab, s in zip(top_l.tolist(), top_s.tolist(), strict=True):
                    if allowed is not None and not allowed[idx.position_of_label(lab)]:
                        continue
                    lex_scores[lab] = s / bound
                missing = [lab for lab in lex_scores if lab not in cand]
                if missing:
                    extra_cos = idx.vectors(missing) @ qvecs[qi]
                    cand.update({lab: float(c) for lab, c in zip(missing, extra_cos.tolist(), strict=True)})
                rest = np.array([lab for lab in cand if lab not in lex_scores], dtype=np.int64)
                if len(rest):
                    extra = lex.score_labels(q, rest) / bound
                    lex_scores.update({int(lab): float(s) for lab, s in zip(rest, extra, strict=True)})
            rows = []
            for lab, cos in cand.items():
                ls = lex_scores.get(lab, 0.0)
                rows.append((idx.position_of_label(lab), (1 - w) * cos + w * ls, cos, ls))
            # Ties (common when the score is mostly lexical) go to the closer embedding.
            rows.sort(key=lambda r: (-r[1], -r[2], idx.state.ids[r[0]]))
            out.append(rows)
        return out

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
        if self.utility_weight and self.usage is None and self.usage_loader is not None:
            self.usage = self.usage_loader()
        w_u = self.utility_weight if self.usage is not None else 0.0
        for qi, rows in enumerate(self.scored(queries)):
            if w_u and self.key != "random":
                ids = self.index.state.ids
                rows = sorted(
                    ((p, s + w_u * (self._utility(ids[p]) - 0.5), c, lx) for p, s, c, lx in rows),
                    key=lambda r: (-r[1], -r[2], ids[r[0]]),
                )
            if self.collapse and self.key != "random":
                results.append(self._collapsed(qi, queries[qi], rows, w_u))
                continue
            hits: list[Hit] = []
            for pos, score, cos, lex in rows:
                if len(hits) >= self.k:
                    break
                if self.key != "random" and score < self.min_score:
                    break
                mem = self._read(pos)
                if mem is not None:
                    hits.append(self._hit(qi, queries[qi], pos, mem, (score, cos, lex), len(hits) + 1, w_u))
            results.append(hits)
        return results

    def _read(self, pos: int) -> Memory | None:
        """The memory at state position ``pos``; None (and a warning) when its file is broken."""
        try:
            return self.index.store.read_memory(self.index.state.ids[pos])
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
            hit.explain = self._parts(query, hit, w_u)
        return hit

    def _collapsed(
        self, qi: int, query: str, rows: list[tuple[int, float, float, float]], w_u: float
    ) -> list[Hit]:
        """The top k procedures among ``rows``: near-duplicates collapsed, successes first
        (:mod:`memp_cli.retrieve.collapse`)."""
        from memp_cli.retrieve.collapse import collapse

        above = [r for r in rows if r[1] >= self.min_score]
        state = self.index.state

        def rating(mid: str) -> float:
            if self.usage is None and self.usage_loader is not None:
                self.usage = self.usage_loader()
            return self._utility(mid)

        hits: list[Hit] = []
        for g in collapse(
            above,
            self.k,
            kinds=[state.kinds[r[0]] for r in above],
            vectors=self.index.vectors([state.labels[r[0]] for r in above]),
            threshold=self.collapse_similarity,
            read=self._read,
            rating=rating,
        ):
            rep = g.representative
            assert rep is not None and rep.memory is not None
            parts = (rep.score, rep.similarity, rep.lexical)
            hit = self._hit(qi, query, rep.position, rep.memory, parts, len(hits) + 1, w_u)
            hit.duplicates = g.duplicates
            if hit.explain is not None:
                hit.explain["collapse"] = {"similar": len(g.duplicates)}
                if g.duplicates:
                    hit.explain["collapse"]["chosen_because"] = g.chosen_because
            hits.append(hit)
        return hits

    def _parts(self, query: str, hit: Hit, w_u: float) -> dict[str, Any]:
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
