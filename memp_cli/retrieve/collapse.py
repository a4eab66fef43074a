"""What comes back is worth its prompt space: near-duplicates collapsed, failures not recipes.

A store of recorded runs holds the same procedure many times: an expert run and the perturbed
runs of the same game, the same task run on other days. Ranked by relevance alone they fill the
top k with one procedure (all with the same score), and the tie between a run that succeeded
and one that failed goes to whichever id sorts first. :func:`collapse` post-processes the ranked
candidates of one query (``Retriever.search`` with ``collapse=True``, what ``memp query`` does
unless ``--no-collapse``):

- **Same procedure**: two memories are near-duplicates when they are of the same kind and their
  key texts are the same (ignoring case, spacing and punctuation) or their key vectors are at
  least ``threshold`` alike (``[prune] duplicate_similarity``, 0.95: the notion ``memp prune``
  merges by, :func:`duplicate_groups`; 0 turns the vector test off), linked transitively.
- **One hit per procedure**: the top k groups (by their best-scoring member) are each shown by
  their best-rated member: a run that succeeded before one of unknown outcome before one that
  failed, then by outcomes (success rate with a uniform prior, from the ledger), then by score;
  the hits are ordered by the score of the run shown. The others ride along as the hit's
  duplicates (counted and named, never shown in full), and the top k is filled from further
  candidates, so k hits are k different procedures when the candidates above the score floor
  hold that many. Duplicates are counted among those candidates (the retriever's top list),
  not over the whole store.
- **Ties go to success**: candidates with equal scores are taken in the order succeeded,
  unknown, failed (then as ranked), so of two equally relevant procedures the one with a
  successful run opens first.

Only the candidates that can be shown or that join a shown group are read from disk; the vector
test over the candidate list is one small matrix product. What collapse needs of a memory (id,
kind, task, outcome, keys) is at the top of its file: :func:`read_head` parses only that part
when the file is unchanged since the index validated it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memp_cli.errors import MemoryFileError
from memp_cli.model.memory import KINDS, Memory, read_memory_bytes

if TYPE_CHECKING:
    import numpy as np

# Succeeded first, then unknown, then failed: a failed run never represents its procedure
# when a near-duplicate did better.
OUTCOME_RANK: dict[bool | None, int] = {True: 2, None: 1, False: 0}
# Scores this close are a tie (a fused score of equal key texts is computed identically).
TIE = 1e-9
_WORD = re.compile(r"[a-z0-9]+")
# A line that may open a table: the top-level keys of a memory file are all above the first.
_TABLE_LINE = re.compile(r"^[ \t]*\[", re.MULTILINE)


def read_head(path: Path, stamp: tuple[int, int]) -> Memory | None:
    """The memory at ``path`` with only what collapse reads of it (id, kind, task, success,
    keys; the rest left empty), parsed from the file's top-level keys (above its first table,
    ~1/8 of a full parse), when its (mtime_ns, size) is still ``stamp``: the index's record of
    the file it validated, so the full parse would succeed and agree. None: read it whole (the
    file changed, or its top does not parse on its own, e.g. a multi-line string or array
    holds a line that starts with "[")."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if (st.st_mtime_ns, st.st_size) != stamp:
            return None
        text = read_memory_bytes(path).decode("utf-8")
        cut = _TABLE_LINE.search(text)
        data = tomllib.loads(text[: cut.start()] if cut else text)
    except (OSError, ValueError, MemoryFileError):  # (UnicodeDecodeError, TOMLDecodeError)
        return None
    mid, kind, task = data.get("id"), data.get("kind"), data.get("task")
    success, keys = data.get("success"), data.get("keys", [])
    if not (
        mid == path.stem
        and kind in KINDS
        and isinstance(task, str)
        and task.strip()
        and (success is None or isinstance(success, bool))
        and isinstance(keys, list)
        and all(isinstance(k, str) for k in keys)
    ):
        return None
    return Memory(id=path.stem, kind=kind, task=task, keys=keys, success=success)


def normalized_key(memory: Memory) -> str:
    """The memory's key text as compared for "same procedure": lower case, words only."""
    return " ".join(_WORD.findall(memory.key_text().lower()))


def duplicate_groups(kinds: Sequence[str], vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups (positions into ``kinds`` / ``vectors``) of the same kind whose vectors are at
    least ``threshold`` alike, linked transitively (single linkage). ``vectors``: unit rows.
    Groups of one are left out. Shared by ``memp prune`` (merge) and :func:`collapse` (display).
    """
    import numpy as np

    parent = list(range(len(kinds)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_kind: dict[str, list[int]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(i)
    for rows in by_kind.values():
        if len(rows) < 2:
            continue
        sub = vectors[np.asarray(rows)]
        for start in range(0, len(rows), 1024):
            block = sub[start : start + 1024] @ sub.T
            for bi, j in zip(*np.nonzero(block >= threshold), strict=True):
                i = start + int(bi)
                if j > i:
                    a, b = find(rows[i]), find(rows[int(j)])
                    if a != b:
                        parent[b] = a
    groups: dict[int, list[int]] = {}
    for i in range(len(kinds)):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


@dataclass
class Candidate:
    """One ranked row of a query: (state position, score, cosine, lexical), its memory once read."""

    position: int
    score: float
    similarity: float
    lexical: float
    order: int = 0  # place in the ranking as scored
    memory: Memory | None = None


@dataclass
class Duplicate:
    """A near-duplicate collapsed into a hit: counted and named, not shown in full."""

    memory: Memory
    score: float
    link: str  # why it is the same procedure: "same key text" or "similarity 0.973"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.memory.id,
            "score": round(self.score, 6),
            "success": self.memory.success,
            "task": self.memory.task,
            "link": self.link,
        }


@dataclass
class Group:
    """One procedure among the candidates: its members best-ranked first, and who shows it."""

    members: list[Candidate]
    keys: set[str] = field(default_factory=set)
    representative: Candidate | None = None
    chosen_because: str = ""
    duplicates: list[Duplicate] = field(default_factory=list)  # the members but the representative

    @property
    def kind(self) -> str:
        first = self.members[0].memory
        return first.kind if first is not None else ""


def collapse(
    rows: Sequence[tuple[int, float, float, float]],
    k: int,
    *,
    kinds: Sequence[str],
    vectors: np.ndarray,
    threshold: float,
    read: Callable[[int], Memory | None],
    rating: Callable[[str], float],
) -> list[Group]:
    """At most ``k`` groups of near-duplicates among ``rows`` (best first, already above the
    score floor), each with its representative chosen. ``kinds`` and ``vectors`` (unit rows)
    are those of ``rows``, in order; ``read(position)`` loads a memory (None: unreadable, left
    out); ``rating(id)`` is a memory's rating from its outcomes (called only to break a tie
    between members with the same outcome)."""
    cands = [Candidate(p, s, c, lx, order=i) for i, (p, s, c, lx) in enumerate(rows)]
    comp = list(range(len(cands)))
    if threshold > 0 and len(cands) > 1:
        for linked in duplicate_groups(kinds, vectors, threshold):
            for i in linked:
                comp[i] = linked[0]

    def load(c: Candidate) -> bool:
        if c.memory is None:
            c.memory = read(c.position)
        return c.memory is not None

    groups: list[Group] = []
    group_of: dict[int, Group] = {}  # component -> its group
    i = 0
    while i < len(cands):
        j = i + 1
        while j < len(cands) and cands[i].score - cands[j].score <= TIE:
            j += 1
        block = cands[i:j]
        i = j
        if len(groups) < k:  # a tie that may open a group: successes first
            block = _successes_first(block, k - len(groups), load, lambda c: comp[c.order] in group_of)
        for c in block:
            g = group_of.get(comp[c.order])
            if g is None and len(groups) < k and c.memory is not None:
                key = normalized_key(c.memory)
                g = next((h for h in groups if h.kind == c.memory.kind and key in h.keys), None)
                if g is None:
                    g = Group([])
                    groups.append(g)
                g.keys.add(key)
                group_of[comp[c.order]] = g
            elif g is None:
                continue  # beyond the top k, and no duplicate of a shown procedure
            if load(c):
                g.members.append(c)
    for g in groups:
        g.members.sort(key=lambda c: c.order)
        _choose(g, rating)
        g.duplicates = _duplicates(g, vectors)
    # by the score of the run shown (stable: a tie keeps successes first)
    groups.sort(key=lambda g: -g.representative.score if g.representative is not None else 0.0)
    return groups


def _successes_first(
    block: list[Candidate], slots: int, load: Callable[[Candidate], bool], linked: Callable[[Candidate], bool]
) -> list[Candidate]:
    """A tie block with the rows that may open a group ordered succeeded, unknown, failed.

    Rows are read in ranked order only until ``slots`` procedures that succeeded are found:
    nothing after them can open a group before them. Rows ``linked`` to an open group keep their
    place (they join it); rows left unread follow, and open no group (as beyond the top k).
    """
    openers: list[Candidate] = []
    rest: list[Candidate] = []
    succeeded: set[tuple[str, str]] = set()
    for c in block:
        if linked(c) or len(succeeded) >= slots:
            rest.append(c)
        elif load(c):
            assert c.memory is not None
            openers.append(c)
            if c.memory.success is True:
                succeeded.add((c.memory.kind, normalized_key(c.memory)))
    openers.sort(key=lambda c: -OUTCOME_RANK[c.memory.success] if c.memory is not None else 0)
    return openers + rest


def _choose(g: Group, rating: Callable[[str], float]) -> None:
    """The member that shows the group: best outcome, then best rated, then best score."""

    def outcome(c: Candidate) -> int:
        return OUTCOME_RANK[c.memory.success] if c.memory is not None else -1

    best = max(outcome(c) for c in g.members)
    top = [c for c in g.members if outcome(c) == best]
    if len(top) == 1:
        g.representative = top[0]
        if len(g.members) > 1:
            g.chosen_because = {2: "it succeeded", 1: "its outcome is unknown, the others failed"}.get(
                best, "highest score"
            )
        return
    rated = {c.order: rating(c.memory.id) for c in top if c.memory is not None}
    g.representative = max(top, key=lambda c: (rated[c.order], c.score, -c.order))
    if len({round(r, 9) for r in rated.values()}) > 1:
        g.chosen_because = f"best rated by its outcomes (success rate {rated[g.representative.order]:.2f})"
    else:
        g.chosen_because = "highest score"


def _duplicates(g: Group, vectors: np.ndarray) -> list[Duplicate]:
    """The members of ``g`` other than its representative, with why each is a duplicate of it.
    ``vectors``: the unit rows of the ranked candidates (row = ``Candidate.order``)."""
    rep = g.representative
    assert rep is not None and rep.memory is not None
    rep_key = normalized_key(rep.memory)
    out = []
    for c in g.members:
        if c is rep or c.memory is None:
            continue
        if normalized_key(c.memory) == rep_key:
            link = "same key text"
        else:
            link = f"similarity {float(vectors[c.order] @ vectors[rep.order]):.3f}"
        out.append(Duplicate(c.memory, c.score, link))
    return out
