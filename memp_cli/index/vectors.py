"""The vector side of an index: the hnswlib graph (``hnsw-<gen>.bin``) and the unit-vector
matrix (``vectors-<gen>.npy``): loading, checking and saving them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from memp_cli.errors import StoreError
from memp_cli.index.state import REBUILD_HINT, State, hnsw_path, vectors_path
from memp_cli.store.fsutil import atomic_output

if TYPE_CHECKING:
    import hnswlib
    import numpy as np

    from memp_cli.store.protocol import MemoryStore


def import_hnswlib() -> Any:
    import hnswlib

    return hnswlib


def load_hnsw(store: MemoryStore, state: State) -> hnswlib.Index | None:
    if not state.ids:
        return None
    hnswlib = import_hnswlib()
    idx = hnswlib.Index(space="cosine", dim=state.dim)
    path = hnsw_path(store, state.generation)
    try:
        idx.load_index(str(path), max_elements=max(state.next_label, 1))
    except RuntimeError as e:
        raise StoreError(f"{path}: cannot load the vector index ({e})", hint=REBUILD_HINT) from None
    idx.set_ef(store.config.index.ef_search)
    return idx


def load_vectors(store: MemoryStore, state: State) -> np.ndarray:
    """``vectors-<gen>.npy`` memory-mapped (read-only), checked against the state."""
    import numpy as np

    path = vectors_path(store, state.generation)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing", hint=REBUILD_HINT) from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: damaged vectors file ({e})", hint=REBUILD_HINT) from None
    if arr.dtype != np.float32 or arr.shape != (state.next_label, state.dim):
        raise StoreError(
            f"{path}: the vectors file does not match the state (shape {arr.shape} {arr.dtype}, "
            f"expected ({state.next_label}, {state.dim}) float32)",
            hint=REBUILD_HINT,
        )
    return np.asarray(arr)  # a plain ndarray view of the mapping


def unit_rows(vecs: Any) -> np.ndarray:
    """``vecs`` as float32 rows of norm 1 (zero rows stay zero), as hnswlib's cosine space
    stores them (embedders return them so already, up to rounding)."""
    import numpy as np

    v = np.array(vecs, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def save_hnsw(store: MemoryStore, hnsw: hnswlib.Index, name: str) -> None:
    with atomic_output(store.index_dir / name) as tmp:
        hnsw.save_index(str(tmp))


def save_npy(path: Path, arr: np.ndarray) -> None:
    import numpy as np

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
