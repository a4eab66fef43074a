"""Retrieval: the best memories for a task.

The ``query`` key embeds the task text and fuses cosine similarity (hnswlib)
with a lexical BM25 score over the memories' keys::

    score = (1 - w) * cosine + w * bm25 / bm25_max(query)

``w`` is ``[retrieval] lexical_weight``; ``bm25_max`` is the largest score a
document could reach for that query, so both parts lie in [0, 1] and
``--min-score`` means the same thing on every store. Candidates come from
both indexes (the union of their top lists) and are rescored exactly.
The ``random`` key is the paper's baseline: k memories drawn at random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .embedders import Embedder
from .errors import InputError, MemoryFileError
from .index import Index
from .memory import Memory, load_memory_file

if TYPE_CHECKING:
    import numpy as np

KEYS = ("query", "random")


@dataclass
class Hit:
    memory: Memory
    score: float
    similarity: float
    lexical: float
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        m = self.memory
        return {
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


@dataclass
class Retriever:
    index: Index
    embedder: Embedder
    k: int = 3
    min_score: float = 0.0
    key: str = "query"
    kind: str | None = None
    lexical_weight: float = 0.5
    seed: int | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key not in KEYS:
            raise InputError(f"unknown key {self.key!r}", hint=f"choose one of {', '.join(KEYS)}")
        self._rng = random.Random(self.seed)

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
        qvecs = self.embedder.embed(list(queries))
        n_cand = min(n, max(self.k * 10, 50))
        assert idx.hnsw is not None
        filt = None
        if allowed is not None:
            labels_ok = {lab for lab, ok in zip(idx.state.labels, allowed.tolist(), strict=True) if ok}
            if not labels_ok:
                return [[] for _ in queries]
            n_cand = min(n_cand, len(labels_ok))

            def filt(label: int) -> bool:
                return label in labels_ok

        while True:
            try:
                labels, dists = idx.hnsw.knn_query(qvecs, k=n_cand, filter=filt, num_threads=1)
                break
            except RuntimeError:  # fewer reachable elements than asked (deletions, filter)
                if n_cand <= 1:
                    return [[] for _ in queries]
                n_cand //= 2
        out = []
        w = self.lexical_weight
        lex = idx.lexical
        for qi, q in enumerate(queries):
            cand: dict[int, float] = {
                int(lab): 1.0 - float(d) for lab, d in zip(labels[qi], dists[qi], strict=True)
            }
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
                    vecs = idx.vectors(missing)
                    sims = vecs @ qvecs[qi]
                    cand.update({lab: float(s) for lab, s in zip(missing, sims.tolist(), strict=True)})
                rest = np.array([lab for lab in cand if lab not in lex_scores], dtype=np.int64)
                if len(rest):
                    extra = lex.score_labels(q, rest) / bound
                    lex_scores.update({int(lab): float(s) for lab, s in zip(rest, extra, strict=True)})
            rows = []
            for lab, cos in cand.items():
                ls = lex_scores.get(lab, 0.0)
                rows.append((idx.position_of_label(lab), (1 - w) * cos + w * ls, cos, ls))
            rows.sort(key=lambda r: (-r[1], idx.state.ids[r[0]]))
            out.append(rows)
        return out

    def _random(self, query: str, allowed: np.ndarray | None) -> list[tuple[int, float, float, float]]:
        positions = list(range(len(self.index)))
        if allowed is not None:
            positions = [p for p in positions if allowed[p]]
        picked = self._rng.sample(positions, min(self.k, len(positions)))
        qvec = self.embedder.embed([query])[0]
        vecs = self.index.vectors([self.index.state.labels[p] for p in picked])
        sims = (vecs @ qvec).tolist() if len(picked) else []
        return [(p, float(s), float(s), 0.0) for p, s in zip(picked, sims, strict=True)]

    # --------------------------------------------------------------- results
    def search(self, queries: Sequence[str]) -> list[list[Hit]]:
        results = []
        for rows in self.scored(queries):
            hits: list[Hit] = []
            for pos, score, cos, lex in rows:
                if len(hits) >= self.k:
                    break
                if self.key != "random" and score < self.min_score:
                    break
                mid = self.index.state.ids[pos]
                try:
                    mem = load_memory_file(self.index.store.memories_dir / f"{mid}.toml")
                except MemoryFileError as e:
                    self.warnings.append(str(e))
                    continue
                hits.append(Hit(mem, score, cos, lex, rank=len(hits) + 1))
            results.append(hits)
        return results
