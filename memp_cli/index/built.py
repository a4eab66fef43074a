"""What the last index generation knows of each memory file, for distill's plan
(:mod:`memp_cli.build.runner`): its stat and what it was built with, as arrays over the state's
(sorted) ids, so a plan over a million memories compares them to the files' stats at array speed
instead of building a dict of a million entries."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import orjson

from memp_cli.errors import StoreError
from memp_cli.index.columns import ascending, id_bytes
from memp_cli.index.state import built_path, read_state

if TYPE_CHECKING:
    import numpy as np

    from memp_cli.store.protocol import MemoryStore

BuiltWith = tuple[str, str, str]  # policy, model, prompt version


@dataclass
class Built:
    """Per memory the index knows (``ids``: sorted id bytes): its file's (mtime_ns, size) when
    the index read it, and the code of what it was built with into ``names`` (an empty tuple:
    not known). Empty when the index cannot say (no index, another format, damaged)."""

    ids: np.ndarray
    mtimes: np.ndarray
    sizes: np.ndarray
    codes: np.ndarray
    names: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, mid: str) -> tuple[int, int, BuiltWith] | None:
        """The memory's (mtime_ns, size, built with); None when the index does not know it."""
        import numpy as np

        key = mid.encode()
        i = int(np.searchsorted(self.ids, key))
        if i >= len(self.ids) or self.ids[i] != key:
            return None
        name = self.names[int(self.codes[i])]
        if len(name) != 3:
            return None
        return int(self.mtimes[i]), int(self.sizes[i]), (name[0], name[1], name[2])

    def unchanged(
        self, stamps: Mapping[str, tuple[int, int]], stale: Callable[[BuiltWith], bool]
    ) -> list[str]:
        """The ids in ``stamps`` (each file's stat now) the index knows with that same stat and
        built with what ``stale`` does not call stale (asked once per distinct value)."""
        import numpy as np

        if not len(self.ids) or not stamps:
            return []
        keys = list(stamps)
        want = id_bytes(keys)
        now = np.fromiter(chain.from_iterable(stamps.values()), dtype=np.int64, count=2 * len(keys))
        # Searched in sorted order: a million searches in listing order miss the cache (3x slower).
        order = np.argsort(want)
        want = want[order]
        at = np.minimum(np.searchsorted(self.ids, want), len(self.ids) - 1)
        fine = np.array([len(n) == 3 and not stale((n[0], n[1], n[2])) for n in self.names] + [False])
        codes = self.codes[at]
        ok = (
            (self.ids[at] == want)
            & (self.mtimes[at] == now[0::2][order])
            & (self.sizes[at] == now[1::2][order])
            & fine[np.where((codes >= 0) & (codes < len(self.names)), codes, len(self.names))]
        )
        return list(map(keys.__getitem__, order[ok].tolist()))


def empty() -> Built:
    import numpy as np

    z = np.zeros(0, dtype=np.int64)
    return Built(np.zeros(0, dtype="S1"), z, z, z, [])


def built_stamps(store: MemoryStore) -> Built:
    """What the last index generation knows of each memory file, without reading the texts;
    empty when it cannot say. A caller trusts an entry only while the file's stat is the same."""
    import numpy as np

    try:
        state = read_state(store)
        if state is None or state.version < 5:
            return empty()
        ids = state.column_arrays()["ids"]
        if not ascending(ids):
            return empty()  # not as a sync writes them (sorted): trust none
        if state.version >= 7:
            from memp_cli.index.records import load_records

            rec = load_records(store, state)
            names = [tuple(x.split("\t")) for x in rec.built_names]
            cols: Iterable[np.ndarray] = (rec.column(c) for c in ("mtime", "size", "built"))
        else:
            d = orjson.loads(built_path(store, state.generation).read_bytes())
            if d["index_version"] != state.version or d["generation"] != state.generation:
                return empty()
            names = [tuple(x.split("\t")) if isinstance(x, str) else () for x in d["names"]]
            cols = (np.asarray(d[c], dtype=np.int64) for c in ("mtimes", "sizes", "codes"))
        mtimes, sizes, codes = (np.asarray(c, dtype=np.int64) for c in cols)
        if not len(ids) == len(mtimes) == len(sizes) == len(codes):
            return empty()
        return Built(ids, mtimes, sizes, codes, names)
    except (OSError, StoreError, orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return empty()
