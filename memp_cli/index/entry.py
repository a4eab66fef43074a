"""What the index keeps of one memory (:class:`Entry`), and the memories a writer hands to the
next sync so it does not read and parse the files it has just written (:data:`Fresh`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

from memp_cli.index.keywords import memory_keywords
from memp_cli.model.memory import Memory

if TYPE_CHECKING:
    import numpy as np

# A memory file's (mtime_ns, size), as :func:`memp_cli.index.state.scan` gives it.
Stamp = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Entry:
    """The few texts a sync derives from a memory: a sync holds these, never the parsed memory
    (its steps and scripts), so a rebuild's memory is about the vectors and the graph."""

    key: str  # the text embedded (:meth:`Memory.key_text`)
    key_hash: str
    kind: str
    family: str
    lexical: str  # the BM25 text: the key text and the keywords
    procedure: str
    built: str  # policy, model and prompt version (:func:`built_key`)
    keywords: list[str]


# Memories a writer has just written, by id: each with its file's stamp right after the write.
# A sync uses one only while the file's stamp is still that one (a hand edit since is read).
Fresh = Mapping[str, tuple[Entry, Stamp]]


class Stamps:
    """Each position's file stamp, as two int64 arrays (mtimes, sizes): 16 bytes a memory, where
    a list of tuples held two ints and a tuple, and the state's columns without a conversion."""

    def __init__(self, mtimes: np.ndarray, sizes: np.ndarray) -> None:
        self.mtimes, self.sizes = mtimes, sizes

    @classmethod
    def of(cls, stamps: Iterable[Stamp], count: int) -> Stamps:
        import numpy as np

        flat = np.fromiter(chain.from_iterable(stamps), dtype=np.int64, count=2 * count)
        return cls(flat[0::2].copy(), flat[1::2].copy())

    def __len__(self) -> int:
        return len(self.mtimes)

    def __getitem__(self, p: int) -> Stamp:
        return int(self.mtimes[p]), int(self.sizes[p])

    def keep(self, positions: list[int]) -> Stamps:
        return Stamps(self.mtimes[positions], self.sizes[positions])


@dataclass(frozen=True, slots=True)
class Scan:
    """The memory files' stamps a writer took (under the writers' lock), handed to the next sync
    so it does not stat every file again: ``dir_mtime_ns`` is the memories folder's mtime the
    writer saw right after its own last write to it, with no other change to the folder since
    the scan (the writer checks the folder's mtime before each of its writes). The sync uses
    ``stamps`` only while the folder's mtime is still that one (no memory file added, removed
    or saved by rename since, by anyone else), and stats the memories handed as fresh again.

    What it relies on: a memory file edited *in place* (no rename) after the scan is not seen
    by that sync, as no folder mtime shows it; the stamp recorded for it is the older one, so
    the next full scan (every `memp index sync`, distill's planning, a query of a store under
    ``FULL_SCAN_LIMIT`` memories) sees the change and reads the file."""

    dir_mtime_ns: int
    stamps: Mapping[str, Stamp]


def built_key(mem: Memory) -> str:
    """What :attr:`FileTable.built` records of a memory: its policy, model and prompt version."""
    p = mem.provenance
    return f"{p.policy}\t{p.model}\t{p.prompt_version}"


def entry(mem: Memory) -> Entry:
    key = mem.key_text()
    return Entry(
        key=key,
        key_hash=mem.key_hash(),
        kind=mem.kind,
        family=mem.family(),
        lexical=key + ("\n" + " ".join(mem.keywords) if mem.keywords else ""),
        procedure=mem.procedure_text(),
        built=built_key(mem),
        keywords=memory_keywords(mem),
    )
