"""The BM25 index on disk: its arrays (``<stem>.<name>.npy``, mapped on load) and the manifest
that names them (kept by the caller: the store keeps it in ``state.json``). See
:mod:`memp_cli.index.lexical` for the layout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memp_cli.index.classes import ARRAYS as CLASS_ARRAYS
from memp_cli.index.classes import Classes
from memp_cli.store.fsutil import atomic_output

if TYPE_CHECKING:
    from memp_cli.index.lexical import LexicalIndex

FORMAT = "memp-lexical"
FORMAT_VERSION = 2
#: How term hashes are computed (checked on load): see :func:`term_hashes`.
TERM_HASH = "blake2b63+splitmix64"
_ARRAYS: dict[str, np.dtype[Any]] = {
    "terms": np.dtype(np.uint64),
    "indptr": np.dtype(np.int64),
    "doc_idx": np.dtype(np.int32),
    "tf": np.dtype(np.float32),
    "doclen": np.dtype(np.float32),
    "labels": np.dtype(np.int64),
}
# Optional arrays (an index saved before them loads without): each document's signature, and
# the classes of identical documents when they pay (memp_cli.index.classes).
_DTYPES: dict[str, np.dtype[Any]] = {**_ARRAYS, "sig": np.dtype(np.uint64), **CLASS_ARRAYS}


def save(ix: LexicalIndex, directory: Path, stem: str) -> dict[str, Any]:
    """Write the arrays as ``<directory>/<stem>.<name>.npy`` (each atomically) and return the
    manifest :func:`load` needs. Writing the manifest is the caller's: after the arrays."""
    paths = array_paths(Path(directory), stem)
    arrays = {name: getattr(ix, f"_{name}") for name in _ARRAYS}
    arrays["sig"] = ix.signatures()
    if ix._classes is not None:
        arrays.update(ix._classes.arrays())
    for name, arr in arrays.items():
        with atomic_output(paths[name]) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr, dtype=_DTYPES[name]), allow_pickle=False)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "term_hash": TERM_HASH,
        "n_docs": len(ix),
        "n_terms": ix.vocab_size,
        "n_postings": int(ix._doc_idx.shape[0]),
        "avgdl": ix.avgdl,
        "k1": ix.k1,
        "b": ix.b,
        "idf_power": ix.idf_power,
        "bigrams": ix.bigrams,
        "sig": True,
        "classes": len(ix._classes) if ix._classes is not None else None,
    }


def load(directory: Path, stem: str, manifest: Any) -> LexicalIndex:
    """Load the index :func:`save` wrote under ``stem``, given the manifest it returned.

    Raises FileNotFoundError when an array is missing, ValueError when the manifest or
    an array is malformed or inconsistent, or of another format version (an older memp):
    both mean "rebuild it".
    """
    from memp_cli.index.lexical import LexicalIndex

    where = f"{Path(directory) / stem}.*.npy"
    m = manifest
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{where}: not a memp lexical index manifest")
    if m.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported lexical index version {m.get('version')!r}")
    if m.get("term_hash") != TERM_HASH:
        raise ValueError(f"{where}: unknown term hash {m.get('term_hash')!r}")
    try:
        n_docs = int(m["n_docs"])
        n_terms = int(m["n_terms"])
        avgdl = float(m["avgdl"])
        k1 = float(m["k1"])
        b = float(m["b"])
        idf_power = float(m["idf_power"])
        bigrams = m["bigrams"]
        n_classes = None if m.get("classes") is None else int(m["classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: missing or bad manifest field ({e})") from None
    if not isinstance(bigrams, bool):
        raise ValueError(f"{where}: bad bigrams field")
    arrays: dict[str, np.ndarray] = {}
    wanted = {*_ARRAYS, *(("sig",) if m.get("sig") is True else ())}
    wanted |= set(CLASS_ARRAYS) if n_classes is not None else set()
    for name, path in array_paths(Path(directory), stem).items():
        if name not in wanted:
            continue
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable array ({e})") from None
        dtype = _DTYPES[name]
        if arr.dtype != dtype or arr.ndim != 1:
            raise ValueError(f"{path}: expected 1-d {dtype}, got {arr.ndim}-d {arr.dtype}")
        arrays[name] = np.asarray(arr)  # plain ndarray view of the mapping: no memmap overhead
    indptr = arrays["indptr"]
    n_post = arrays["doc_idx"].shape[0]
    if (
        arrays["terms"].shape[0] != n_terms
        or indptr.shape[0] != n_terms + 1
        or int(indptr[0]) != 0
        or int(indptr[-1]) != n_post
        or arrays["tf"].shape[0] != n_post
        or arrays["doclen"].shape[0] != n_docs
        or arrays["labels"].shape[0] != n_docs
    ):
        raise ValueError(f"{where}: arrays do not match the manifest (sizes differ)")
    sig = arrays.pop("sig", None)
    classes = None
    if n_classes is not None:
        classes = Classes(**{name: arrays.pop(name) for name in CLASS_ARRAYS})
        if len(classes) != n_classes or not classes.check(n_docs, n_terms):
            raise ValueError(f"{where}: class arrays do not match the manifest (sizes differ)")
    if sig is not None and sig.shape[0] != n_docs:
        raise ValueError(f"{where}: arrays do not match the manifest (sizes differ)")
    ix = LexicalIndex(avgdl=avgdl, k1=k1, b=b, idf_power=idf_power, bigrams=bigrams, sig=sig, **arrays)
    ix._classes = classes
    return ix


def array_paths(directory: Path, stem: str) -> dict[str, Path]:
    """The array files an index saved under ``stem`` may have, by array name (the optional
    ones only when its manifest names them)."""
    return {name: directory / f"{stem}.{name}.npy" for name in _DTYPES}
