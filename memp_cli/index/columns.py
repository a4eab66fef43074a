"""The binary per-memory columns of a format 7 index state, ``columns-<gen>.<name>.npy``:
what a one-shot query maps instead of parsing them out of ``state.json``
(:class:`memp_cli.index.state.State` keeps them mapped until a caller wants a list)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["COLUMNS", "STAMPS", "Columns", "ascending", "column_file_name", "id_bytes"]


#: The per-memory columns of a :class:`State`; in format 7 each is ``columns-<gen>.<name>.npy``.
COLUMNS = ("ids", "labels", "kinds", "families")
#: And beside them (format 7) each memory file's stat when the sync read it (the file table's),
#: so a query can tell a file is unchanged since it was validated (:meth:`State.stamp_at`).
STAMPS = ("mtimes", "sizes")


def column_file_name(generation: int, name: str) -> str:
    return f"columns-{generation}.{name}.npy"


def id_bytes(ids: list[str]) -> np.ndarray:
    """Memory ids as a bytes array (the ids column's form)."""
    import numpy as np

    try:  # ids are ASCII (memory.ID_RE): numpy encodes them at C speed
        return np.array(ids, dtype=np.bytes_)
    except UnicodeEncodeError:
        return np.array([i.encode() for i in ids], dtype=np.bytes_)


def ascending(ids: np.ndarray) -> bool:
    """Whether an ids column is in the order a sync writes it (sorted, no id twice): what an
    array search over it needs."""
    import numpy as np

    return len(ids) < 2 or bool(np.all(ids[:-1] < ids[1:]))


@dataclass
class Columns:
    """The mapped column files of a format 7 state: id bytes, labels, and kind and family codes
    into their names tables (which are in state.json)."""

    ids: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    families: np.ndarray
    mtimes: np.ndarray
    sizes: np.ndarray
    kind_names: list[str]
    family_names: list[str]

    @classmethod
    def load(
        cls, index_dir: Path, generation: int, count: Any, kind_names: Any, family_names: Any
    ) -> Columns:
        """Map the files; ValueError unless each is a ``count``-long array of its type whose
        codes are in range (FileNotFoundError when one is missing)."""
        import numpy as np

        if not isinstance(count, int) or count < 0:
            raise ValueError("bad count")
        for names in (kind_names, family_names):
            if not isinstance(names, list):
                raise ValueError("bad names table")
            try:
                "".join(names)  # a TypeError unless every name is a string (at C speed: 18k at 882k)
            except TypeError:
                raise ValueError("bad names table") from None
        arrays = {}
        for name in COLUMNS + STAMPS:
            path = index_dir / column_file_name(generation, name)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            want = "S" if name == "ids" else "i"
            if arr.shape != (count,) or arr.dtype.kind != want:
                raise ValueError(f"{path.name}: {arr.dtype}{arr.shape} for {count} memories")
            arrays[name] = arr
        for name, names in (("kinds", kind_names), ("families", family_names)):
            codes = arrays[name]
            if count and (int(codes.min()) < 0 or int(codes.max()) >= len(names)):
                raise ValueError(f"{name} codes out of range")
        return cls(**arrays, kind_names=kind_names, family_names=family_names)

    @functools.cached_property
    def no_family(self) -> int:
        """The family code of memories in none (the empty name); -1 when no memory is."""
        try:
            return self.family_names.index("")  # a scan of ~18k names at 1M: once, not per query
        except ValueError:
            return -1

    def as_list(self, name: str) -> list[Any]:
        arr = getattr(self, name)
        if name == "ids":
            return [b.decode() for b in arr.tolist()]
        if name == "labels":
            return list(arr.tolist())
        names = self.kind_names if name == "kinds" else self.family_names
        return list(map(names.__getitem__, arr.tolist()))
