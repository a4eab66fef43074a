"""The ``avefact`` key (the paper's AveFact) matches keywords instead of the whole
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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from memp_cli.backends.embedders import Embedder
from memp_cli.index import Index, KeywordIndex
from memp_cli.redact import redact

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.backends.llm import LLMSettings

# Keyword vocabularies up to this size are searched exactly (one matrix product);
# larger ones through the keyword hnsw graph.
KW_EXACT_LIMIT = 2048
# Nearest keywords per query keyword in the first candidate round (grows x4 while needed).
KW_FIRST_ROUND = 8
LLM_KEYWORD_WORKERS = 4

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


class AveFact:
    """The ``avefact`` key's scoring, mixed into :class:`memp_cli.retrieve.retriever.Retriever`
    (which holds the fields declared here)."""

    index: Index
    embedder: Embedder
    k: int
    min_score: float
    keyword_extractor: KeywordExtractor
    query_keywords: list[list[str]]
    warnings: list[str]
    _kw_vecs: dict[str, np.ndarray]

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

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
                self._warn(
                    f"no keywords found in the query {redact(q)[:60]!r}: nothing to match with --key avefact"
                )
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
