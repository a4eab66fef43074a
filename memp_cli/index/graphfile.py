"""A few vectors of an hnswlib graph file, read without loading the graph (:func:`read_items`).

`memp doctor` compares a sample of the graph's vectors with the vectors file. Loading the base
graph for that took most of its peak memory at a million memories (about 1.2 GB: every vector
and link list). hnswlib (0.8, pinned) saves a header, then each element's level-0 data: its
link list (whose third byte holds the deleted mark), its vector and its label. Here that data is
read a chunk at a time, and only the asked labels' vectors are kept."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
# offsetData (size_t each), maxlevel (int), enterpoint (uint), maxM, maxM0, M (size_t), mult
# (double), ef_construction (size_t); then the level-0 data of every element.
HEADER = struct.Struct("<6QiI3QdQ")
_DELETED = 0x01  # hnswlib's DELETE_MARK, in the byte after a link list's count
CHUNK = 16 << 20  # bytes of level-0 data read at a time


class Layout:
    """Where a graph file's elements are (from its header); None from :meth:`read` when the
    header is not one this module knows how to read (the caller then loads the graph)."""

    def __init__(self, count: int, per: int, level0: int, label_at: int, data_at: int) -> None:
        self.count, self.per, self.level0, self.label_at, self.data_at = count, per, level0, label_at, data_at

    @classmethod
    def read(cls, path: Path, dim: int) -> Layout | None:
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER.size)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return None
        if len(head) != HEADER.size:
            return None
        level0, _, count, per, label_at, data_at, *_ = HEADER.unpack(head)
        sound = (
            level0 + 4 <= data_at
            and data_at + 4 * dim <= label_at
            and label_at + 8 <= per
            and size >= HEADER.size + count * per
        )
        return cls(count, per, level0, label_at, data_at) if sound else None


def read_items(path: Path, dim: int, labels: list[int], layout: Layout) -> dict[int, np.ndarray]:
    """The stored vectors of ``labels`` that the graph holds and has not marked deleted (as
    ``hnswlib.Index.get_items`` gives them), by label."""
    import numpy as np

    want = np.asarray(sorted(set(labels)), dtype=np.uint64)
    out: dict[int, np.ndarray] = {}
    per = layout.per
    step = max(1, CHUNK // per)
    with open(path, "rb") as f:
        for start in range(0, layout.count, step):
            n = min(step, layout.count - start)
            f.seek(HEADER.size + start * per)
            block = np.frombuffer(f.read(n * per), dtype=np.uint8)
            if len(block) != n * per:
                break  # shorter than the header said: the rest is not there
            rows = block.reshape(n, per)
            found = rows[:, layout.label_at : layout.label_at + 8].copy().view(np.uint64).ravel()
            hit = np.flatnonzero(np.isin(found, want))
            for i in hit.tolist():
                if rows[i, layout.level0 + 2] & _DELETED:
                    continue
                vec = rows[i, layout.data_at : layout.data_at + 4 * dim].copy().view(np.float32)
                out[int(found[i])] = vec
    return out
