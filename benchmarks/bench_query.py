"""`memp query` at scale: fresh-process latency, where it goes, ANN speed/recall, and `llm similar`.

Targets (2-core machine):

- ``memp query "..." --json`` as a fresh process on a 100k-memory store: < 300 ms with the
  ``hash`` embedder, < 800 ms with ``minilm``;
- in-process hnswlib query p50 < 1 ms at 100k memories with recall@10 >= 0.95 against exact
  search on real (minilm) embeddings; picks the ``[index] ef_search`` default;
- ``llm similar`` (simonw/llm) on the same texts, for comparison.

::

    python benchmarks/bench_query.py            # 100k stores (built once, cached in MEMP_BENCH_DIR)
    python benchmarks/bench_query.py --quick    # 10k, fewer repetitions
    python benchmarks/bench_query.py --only ann # one part: stores, fresh, ann, inproc, llm

Stores: memory files written with memp's own ``Memory``/``Store.save_memories`` from task texts
synthesised from the real ALFWorld templates (see ``_common.AlfworldSynth``), then
``memp index rebuild`` (hash store, fresh process, timed). The minilm store shares the memory files
(hard links) and is indexed in-process through ``index.sync`` with an embedder that embeds each
distinct task text once (the vectors are minilm's own; 100k single embeddings would take ~15 min).
Writes ``benchmarks/results/bench_query.json``.
"""

from __future__ import annotations

import os
import sys
import time


# The stage breakdown runs _Clock and stages_child as a fresh `python -c` process (see
# _stages_source): they must use nothing that memp itself does not import.
class _Clock:
    """Exclusive wall time per label for nested, wrapped calls."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.stack: list[list[Any]] = []

    def wrap(self, label: str, fn: Any) -> Any:
        clock = self

        def wrapper(*args: Any, **kw: Any) -> Any:
            frame = [label, time.perf_counter(), 0.0]
            clock.stack.append(frame)
            try:
                return fn(*args, **kw)
            finally:
                clock.stack.pop()
                dt = time.perf_counter() - frame[1]
                clock.t[label] = clock.t.get(label, 0.0) + dt - frame[2]
                if clock.stack:
                    clock.stack[-1][2] += dt

        return wrapper

    def add(self, label: str, dt: float) -> None:
        self.t[label] = self.t.get(label, 0.0) + dt


def stages_child(store_path: str, query: str) -> None:
    """Run in a fresh process: the real ``memp query`` with its steps wrapped in timers."""
    import orjson

    clock = _Clock()
    c0 = time.perf_counter()
    import memp_cli.cli as cli  # typer, click, store, commands: everything `memp` imports up front

    clock.add("import memp_cli.cli (typer, store, commands)", time.perf_counter() - c0)
    from memp_cli.backends.embedders import get_embedder as real_get_embedder
    from memp_cli.cli import output, query_cmd
    from memp_cli.index import access, reader, vectors
    from memp_cli.retrieve import retriever as retrieve

    W = clock.wrap
    query_cmd.open_store = W("Store.open (memp.toml)", query_cmd.open_store)
    access.read_state = W("read state.json", access.read_state)
    access.is_fresh = W("is_fresh check", access.is_fresh)
    vectors.load_hnsw = W("load hnsw graph (+ import hnswlib)", vectors.load_hnsw)
    vectors.load_vectors = W("map vectors file", vectors.load_vectors)
    reader.load_lexical = W("load lexical BM25 (+ import)", reader.load_lexical)
    retrieve.Retriever.scored = W("search (exact or knn + BM25 fusion)", retrieve.Retriever.scored)
    from memp_cli.store import Store

    Store.read_memory = W("read the k result files", Store.read_memory)
    output.emit_json_lines = W("JSON output", output.emit_json_lines)

    def get_embedder(*a: Any, **kw: Any) -> Any:
        emb = real_get_embedder(*a, **kw)
        if hasattr(emb, "_ensure_loaded"):
            emb._ensure_loaded = W("embedder model load", emb._ensure_loaded)
        emb.embed = W("embed query", emb.embed)
        return emb

    import memp_cli.backends.embedders as emb_mod

    emb_mod.get_embedder = W("embedder setup (+ import numpy, embedder module)", get_embedder)
    entered: list[float] = []
    orig_load_index = query_cmd.load_index

    def load_index(*a: Any, **kw: Any) -> Any:
        return orig_load_index(*a, **kw)

    query_cmd.load_index = W("load_index (rest)", load_index)
    orig_open = query_cmd.open_store

    def open_store(*a: Any, **kw: Any) -> Any:
        entered.append(time.perf_counter())
        return orig_open(*a, **kw)

    query_cmd.open_store = open_store
    sys.argv = ["memp", "-s", store_path, "query", query, "--json"]
    real_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    c1 = time.perf_counter()
    real_exit = os._exit

    def deferred_exit(code: int) -> None:  # memp's query ends with os._exit: report first
        raise SystemExit(code)

    os._exit = deferred_exit  # type: ignore[assignment]
    try:
        cli.main()
    except SystemExit as e:
        assert not e.code, e.code
    end = time.perf_counter()
    sys.stdout = real_stdout
    clock.add("typer: build the click command, parse args", entered[0] - c1)
    inside = sum(v for k, v in clock.t.items() if not k.startswith(("import memp_cli.cli", "typer:")))
    clock.add("query command, other", (end - entered[0]) - inside)
    sys.stdout.write(orjson.dumps({k: v * 1000 for k, v in clock.t.items()}).decode() + "\n")
    sys.stdout.flush()
    real_exit(0)  # as memp itself ends a query


import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_FRESH_MS = {"hash": 300.0, "minilm": 800.0}
TARGET_INPROC_P50_MS = 1.0
TARGET_RECALL = 0.95
EF_VALUES = (16, 32, 64, 96, 128, 200)


def real_queries() -> list[str]:
    """Real ALFWorld task texts (valid_seen first): the query workload."""
    seen: dict[str, None] = {}
    for name in ("alfworld_valid_seen_replay.jsonl", *C.ALFWORLD_FILES):
        for r in C.load_records((name,)):
            seen.setdefault(r["task"], None)
    return list(seen)


# ------------------------------------------------------------------ fixtures
def index_params(embedder: str) -> dict[str, Any]:
    """What the index files depend on: a change re-indexes a cached store (memory files are kept)."""
    from memp_cli import index as index_mod
    from memp_cli.config import IndexConfig
    from memp_cli.index import lexical

    cfg = IndexConfig()
    return {
        "embedder": embedder,
        "index": index_mod.INDEX_VERSION,
        "kw": getattr(index_mod, "KW_VERSION", 0),
        "lexical": lexical.FORMAT_VERSION,
        "M": cfg.M,
        "efc": cfg.ef_construction,
    }


def _index_ok(path: Path, embedder: str) -> bool:
    try:
        if orjson.loads((path / ".bench-index.json").read_bytes()) != index_params(embedder):
            return False
    except (OSError, orjson.JSONDecodeError):
        return False
    probe = C.run(
        [*C.memp_argv(), "-s", str(path), "query", "put a mug in the cabinet.", "--json"], check=False
    )
    return probe.returncode == 0 and bool(probe.stdout.strip())


def _load_build(path: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads((path / ".bench-build.json").read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return {}


def build_hash_store(n: int, distinct: int, force: bool) -> dict[str, Any]:
    path = C.WORK / f"store-hash-{n}-d{distinct}"
    params = {"n": n, "distinct": distinct, "kind": "hash", "v": 1}
    info: dict[str, Any] = {"path": str(path), "n": n, "distinct_texts": distinct, "cached": True}
    if force or not C.fixture_ok(path, params):
        C.reset_dir(path)
        C.WORK.mkdir(parents=True, exist_ok=True)
        C.run([*C.memp_argv(), "init", "--embedder", "hash", str(path)])
        print(f"building {path}: writing {n} memory files ...", file=sys.stderr)
        tasks = C.store_tasks(n, distinct)
        info["write_s"] = round(C.write_memories(path, tasks), 2)
        info["cached"] = False
        C.mark_fixture(path, params)
        (path / ".bench-build.json").write_bytes(orjson.dumps(info))
    if not info["cached"] or not _index_ok(path, "hash"):
        print(f"  {path}: memp index rebuild (fresh process) ...", file=sys.stderr)
        t0 = time.perf_counter()
        C.run([*C.memp_argv(), "-s", str(path), "index", "rebuild"])
        info = {**_load_build(path), **info, "rebuild_s": round(time.perf_counter() - t0, 2), "cached": False}
        (path / ".bench-build.json").write_bytes(orjson.dumps(info))
        (path / ".bench-index.json").write_bytes(orjson.dumps(index_params("hash")))
    return _store_sizes(path, n, {**_load_build(path), **info})


def _store_sizes(path: Path, n: int, info: dict[str, Any]) -> dict[str, Any]:
    idx = C.dir_size(path / "index")
    mem = C.dir_size(path / "memories")
    files = {p.name: p.stat().st_size for p in (path / "index").iterdir()}
    info.update(
        index_bytes=idx,
        index_mb=C.mb(idx),
        index_bytes_per_memory=round(idx / n, 1),
        hnsw_bytes=sum(v for k, v in files.items() if k.startswith(("hnsw-", "delta-"))),
        vectors_bytes=sum(v for k, v in files.items() if k.startswith("vectors-")),
        state_json_bytes=files.get("state.json", 0),
        files_json_bytes=sum(v for k, v in files.items() if k.startswith("files-")),
        lexical_bytes=sum(v for k, v in files.items() if k.startswith("lexical")),
        keyword_index_bytes=sum(v for k, v in files.items() if k.startswith("keywords")),
        memories_mb=C.mb(mem),
        memory_file_bytes_avg=round(mem / n, 1),
    )
    return info


def build_minilm_store(n: int, distinct: int, force: bool, hash_store: Path) -> dict[str, Any]:
    from memp_cli import index as index_mod
    from memp_cli.backends.embedders import get_embedder
    from memp_cli.store import Store

    path = C.WORK / f"store-minilm-{n}-d{distinct}"
    params = {"n": n, "distinct": distinct, "kind": "minilm", "v": 1}
    info: dict[str, Any] = {"path": str(path), "n": n, "distinct_texts": distinct, "cached": True}
    if force or not C.fixture_ok(path, params):
        C.reset_dir(path)
        C.run([*C.memp_argv(), "init", "--embedder", "minilm", str(path)])
        src = hash_store / "memories"
        for name in os.listdir(src):  # the same memory files, hard-linked
            os.link(src / name, path / "memories" / name)
        info["cached"] = False
        C.mark_fixture(path, params)
        (path / ".bench-build.json").write_bytes(orjson.dumps(info))
    if not info["cached"] or not _index_ok(path, "minilm"):
        pool = C.AlfworldSynth().distinct_tasks(distinct)
        vecs = C.embed_cached(pool)
        emb = C.CachingEmbedder(get_embedder("minilm"), dict(zip(pool, vecs, strict=True)))
        store = Store.open(path)
        print(
            f"  {path}: index.sync over {n} memories (minilm vectors of the task texts cached) ...",
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        idx, _rep = index_mod.sync(store, emb, rebuild=True)
        assert len(idx) == n, (len(idx), n)
        info = {
            **_load_build(path),
            **info,
            "rebuild_s": round(time.perf_counter() - t0, 2),
            "embedded": emb.embedded,
            "cached": False,
        }
        (path / ".bench-build.json").write_bytes(orjson.dumps(info))
        (path / ".bench-index.json").write_bytes(orjson.dumps(index_params("minilm")))
    return _store_sizes(path, n, {**_load_build(path), **info})


# ----------------------------------------------------- fresh-process timing
def fresh_query(store: Path, queries: list[str], reps: int) -> dict[str, Any]:
    """Wall and CPU time of fresh `memp query --json` processes, beside `import numpy`.

    memp_cli is byte-compiled first (``compileall``), as a pip-installed memp is: this sandbox
    sets PYTHONDONTWRITEBYTECODE=1, and a process that compiles memp_cli's modules from source
    pays ~130 ms a user never does. (MEMP_BENCH_NO_BYTECODE=1 measures that case instead.)"""
    argv = C.memp_argv()
    if not os.environ.get("MEMP_BENCH_NO_BYTECODE"):
        compile_package()

    def vary(i: int) -> list[str]:
        return [*argv, "-s", str(store), "query", queries[i % len(queries)], "--json"]

    cp = C.run(vary(0))
    lines = cp.stdout.decode().splitlines()
    assert lines and orjson.loads(lines[0])["id"], cp.stdout[:200]
    # Interleaved with `python -c "import numpy"` (the floor a numpy program pays), run for run:
    # the target is a ratio to it, steadier than a time on a shared machine.
    cpu: list[float] = []
    numpy_cpu: list[float] = []
    times: list[float] = []
    numpy_times: list[float] = []
    bare = [sys.executable, "-c", "import numpy"]
    for i in range(reps):
        times += C.time_process(vary(i), 1, cpu=cpu, warmup=0 if i else 1)
        numpy_times += C.time_process(bare, 1, cpu=numpy_cpu, warmup=0 if i else 1)
    ratio = statistics.median(times) / statistics.median(numpy_times)
    cpu_ratio = statistics.median(cpu) / statistics.median(numpy_cpu)
    return {
        "wall_ms": C.summary(times),
        "cpu_ms": C.summary(cpu),
        "import_numpy_wall_ms": C.summary(numpy_times),
        "import_numpy_cpu_ms": C.summary(numpy_cpu),
        "ratio_to_import_numpy": round(ratio, 2),
        "cpu_ratio_to_import_numpy": round(cpu_ratio, 2),
        "results_per_query": len(lines),
    }


def compile_package() -> None:
    """Write memp_cli's bytecode caches (``python -m compileall``), so timed runs load them."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(C.REPO / "memp_cli")], check=True, env=env)


def _stages_source() -> str:
    """The stage-timing child as a ``python -c`` program: only the timer code, nothing that memp
    does not import itself (a script file would also be recompiled on every run)."""
    import inspect

    return (
        "from __future__ import annotations\nimport os, sys, time\nfrom typing import Any\n\n"
        + inspect.getsource(_Clock)
        + "\n\n"
        + inspect.getsource(stages_child)
        + "\n\nstages_child(sys.argv[1], sys.argv[2])\n"
    )


def stage_breakdown(store: Path, queries: list[str], reps: int, wall_ms: float) -> dict[str, Any]:
    """Median per-stage times of the real command, run ``reps`` times with its steps wrapped in timers."""
    runs: list[dict[str, float]] = []
    walls: list[float] = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        cp = C.run([sys.executable, "-c", _stages_source(), str(store), queries[i % len(queries)]])
        if i:
            walls.append(time.perf_counter() - t0)
            runs.append(orjson.loads(cp.stdout.splitlines()[-1]))
    med = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    startup = statistics.median(C.time_process([sys.executable, "-c", "pass"], reps))
    med = {"interpreter start (python -c pass)": round(startup * 1000, 1), **med}
    inst_wall = statistics.median(walls) * 1000
    med["interpreter exit, runpy, rest"] = round(inst_wall - sum(med.values()), 1)
    it = C.importtime([*C.memp_argv(), "-s", str(store), "query", queries[0], "--json"])
    return {
        "stages_ms": med,
        "instrumented_wall_ms": round(inst_wall, 1),
        "plain_wall_ms": wall_ms,
        "importtime": it,
    }


_WHATIF_HNSW = """
import sys, time, numpy as np, hnswlib
t = time.perf_counter()
idx = hnswlib.Index(space="cosine", dim=int(sys.argv[2])); idx.load_index(sys.argv[1]); idx.set_ef(96)
q = np.ones(int(sys.argv[2]), dtype=np.float32); q /= np.linalg.norm(q)
idx.knn_query(q, k=50, num_threads=1)
print((time.perf_counter() - t) * 1000)
"""
_WHATIF_EXACT = """
import sys, time, numpy as np
t = time.perf_counter()
X = np.load(sys.argv[1], mmap_mode="r")
q = np.ones(X.shape[1], dtype=np.float32); q /= np.linalg.norm(q)
s = X @ q
top = np.argpartition(-s, 50)[:50]; top = top[np.argsort(-s[top])]
print((time.perf_counter() - t) * 1000)
"""


def whatif_exact(store: Path, reps: int) -> dict[str, Any]:
    """Fresh processes: load the hnsw graph + knn, against exact search over the store's mmap'd
    float32 vectors file (what a single-query `memp query` does since index format 2)."""
    from memp_cli import index as index_mod
    from memp_cli.store import Store

    st = Store.open(store)
    state = index_mod.read_state(st)
    assert state is not None
    graph = index_mod.state.hnsw_path(st, state.generation)
    vec = index_mod.state.vectors_path(st, state.generation)
    variants = {
        "python + numpy + hnswlib: load graph + knn(k=50)": (
            [sys.executable, "-c", _WHATIF_HNSW, str(graph), str(state.dim)],
            None,
        ),
        "python + numpy: mmap float32 .npy + exact top-50": (
            [sys.executable, "-c", _WHATIF_EXACT, str(vec)],
            None,
        ),
    }
    walls = C.time_interleaved(variants, reps)
    inner: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, (argv, _env) in variants.items():
            inner[k].append(float(C.run(argv).stdout.decode().split()[-1]) / 1000)
    return {
        "vectors_npy_bytes": vec.stat().st_size,
        "hnsw_bytes": graph.stat().st_size,
        "process_wall_ms": {k: C.summary(v) for k, v in walls.items()},
        "load_and_search_ms": {k: C.summary(v) for k, v in inner.items()},
    }


# ------------------------------------------------------------- ANN vs exact
def ann_queries(pool_texts: list[str], n_queries: int) -> tuple[list[str], list[str]]:
    """(texts, group): a third each of real ALFWorld tasks (in the store's distribution, often in the
    pool), held-out synthetic ALFWorld tasks (numbered receptacles, not in the pool) and real tasks of
    the other data sets (WebShop, ScienceWorld, TextWorldExpress, TravelPlanner: out of domain)."""
    rng = random.Random(7)
    in_pool = set(pool_texts)
    alf = real_queries()
    rng.shuffle(alf)
    held = [t for t in C.AlfworldSynth().all_tasks(numbered=True) if t not in in_pool]
    rng.shuffle(held)
    other: dict[str, None] = {}
    for f in sorted(C.DATA.glob("*.jsonl")):
        if f.name.startswith("alfworld"):
            continue
        for r in C.load_records((f.name,)):
            other.setdefault(r["task"][:300], None)
    oth = list(other)
    rng.shuffle(oth)
    per = n_queries // 3
    groups = {
        "alfworld_real": alf[:per],
        "alfworld_heldout": held[:per],
        "other_domains": oth[: n_queries - 2 * per],
    }
    texts = [t for g in groups.values() for t in g]
    labels = [name for name, g in groups.items() for _ in g]
    return texts, labels


def ann_sweep(n: int, distinct: int, noise: float | None, force: bool, n_queries: int) -> dict[str, Any]:
    import hnswlib
    import numpy as np

    from memp_cli.config import IndexConfig

    cfg = IndexConfig()
    pool_texts = C.AlfworldSynth().distinct_tasks(min(distinct, n))
    pool = C.embed_cached(pool_texts)
    qtexts, qgroup = ann_queries(pool_texts, n_queries)
    q = C.embed_cached(qtexts)
    # nearest-neighbour similarity inside the real pool
    sample = pool[:1000]
    sims = sample @ pool.T
    sims[np.arange(len(sample)), np.arange(len(sample))] = -1
    pool_nn = float(np.median(sims.max(axis=1)))
    dim = pool.shape[1]
    if noise is None:  # a copy is as far from its source as a typical text from its nearest neighbour
        noise = round(float(np.sqrt((1 / pool_nn**2 - 1) / dim)), 5)
    gen = np.random.default_rng(0)
    reps = -(-n // len(pool))
    base = np.concatenate([pool] * reps)[:n]
    data = base.copy()
    if n > len(pool):
        data[len(pool) :] += gen.normal(0, noise, size=data[len(pool) :].shape).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    cos_to_base = (
        float(np.mean(np.sum(data[len(pool) :] * base[len(pool) :], axis=1))) if n > len(pool) else 1.0
    )

    path = C.WORK / f"ann-{n}-{len(pool)}-{noise}-M{cfg.M}-efc{cfg.ef_construction}.bin"
    index = hnswlib.Index(space="cosine", dim=dim)
    build_s = None
    side = path.with_suffix(".json")
    if path.exists() and side.exists() and not force:
        index.load_index(str(path), max_elements=n)
        build_s = orjson.loads(side.read_bytes())["build_s"]
    else:
        print(
            f"building hnsw over {n} x {dim} (M={cfg.M}, ef_construction={cfg.ef_construction}) ...",
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        index.init_index(max_elements=n, M=cfg.M, ef_construction=cfg.ef_construction)
        index.add_items(data, np.arange(n), num_threads=2)
        build_s = time.perf_counter() - t0
        index.save_index(str(path))
        side.write_bytes(orjson.dumps({"build_s": build_s}))

    # exact: normalised dot product + argpartition, one query at a time
    k = 10
    exact = np.zeros((len(q), k), dtype=np.int64)
    ex_times = []
    for _pass in range(2):
        for i in range(len(q)):
            t0 = time.perf_counter()
            s = data @ q[i]
            top = np.argpartition(-s, k)[:k]
            top = top[np.argsort(-s[top])]
            if _pass:
                ex_times.append(time.perf_counter() - t0)
            exact[i] = top
    exact_sum = C.summary(ex_times)
    ex_sets = [set(r.tolist()) for r in exact]
    group_names = sorted(set(qgroup))

    rows = []
    for ef in EF_VALUES:
        index.set_ef(ef)
        for kk in (10, 50):
            times = []
            rec = np.zeros(len(q))
            for _pass in range(2):
                for i in range(len(q)):
                    t0 = time.perf_counter()
                    labels, _ = index.knn_query(q[i], k=kk, num_threads=1)
                    dt = time.perf_counter() - t0
                    if _pass:
                        times.append(dt)
                        rec[i] = len(ex_sets[i] & set(labels[0][:k].tolist())) / k
            s = C.summary(times)
            rows.append(
                {
                    "ef_search": ef,
                    "k": kk,
                    "p50_ms": round(s["median"], 4),
                    "p99_ms": round(s["p99"], 4),
                    "mean_ms": round(s["mean"], 4),
                    "recall_at_10": round(float(rec.mean()), 4),
                    "recall_at_10_by_group": {
                        g: round(float(rec[[x == g for x in qgroup]].mean()), 4) for g in group_names
                    },
                    "queries_below_0.8": int((rec < 0.8).sum()),
                    "speedup_vs_exact_p50": round(exact_sum["median"] / s["median"], 1),
                }
            )
    ok = [
        r
        for r in rows
        if r["k"] == 50 and r["recall_at_10"] >= TARGET_RECALL and r["p50_ms"] < TARGET_INPROC_P50_MS
    ]
    ok10 = [
        r
        for r in rows
        if r["k"] == 10 and r["recall_at_10"] >= TARGET_RECALL and r["p50_ms"] < TARGET_INPROC_P50_MS
    ]
    return {
        "n": n,
        "dim": dim,
        "distinct_embedded_texts": len(pool),
        "perturbation_sigma": noise,
        "perturbed_mean_cos_to_base": round(cos_to_base, 4),
        "pool_median_nn_cos": round(pool_nn, 4),
        "queries": len(q),
        "query_groups": {g: qgroup.count(g) for g in group_names},
        "hnsw": {
            "M": cfg.M,
            "ef_construction": cfg.ef_construction,
            "build_s": None if build_s is None else round(build_s, 1),
            "build_threads": 2,
            "file_bytes": path.stat().st_size,
        },
        "exact_numpy_ms": exact_sum,
        "sweep": rows,
        "smallest_ef_meeting_target_k10": ok10[0]["ef_search"] if ok10 else None,
        "smallest_ef_meeting_target_k50": ok[0]["ef_search"] if ok else None,
    }


def inprocess_retriever(store: Path, queries: list[str], reps: int) -> dict[str, Any]:
    """Full ``Retriever`` (embed + knn + BM25 fusion, no file reads) on a loaded store, per query;
    and the same with exact search over the mapped vectors file (what one-shot `memp query` does)."""
    from memp_cli import index as index_mod
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import Store, store_embedder

    st = Store.open(store)
    emb = store_embedder(st)
    idx = index_mod.load(st)
    assert idx is not None and idx.hnsw is not None
    rc = st.config.retrieval
    r = Retriever.from_config(idx, emb, rc, exact=False)
    rx = Retriever.from_config(idx, emb, rc, exact=True)
    qv = emb.embed(queries)
    r.scored(queries[:3])
    rx.scored(queries[:3])
    total, exact, knn, embed = [], [], [], []
    for _ in range(reps):
        for i, qt in enumerate(queries):
            t0 = time.perf_counter()
            r.scored([qt])
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rx.scored([qt])
            exact.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            emb.embed([qt])
            embed.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            idx.search(qv[i : i + 1], max(rc.k * 10, 50))  # base + delta, as the retriever
            knn.append(time.perf_counter() - t0)
    return {
        "ef_search": st.config.index.ef_search,
        "scored_total_ms": C.summary(total),
        "scored_exact_total_ms": C.summary(exact),
        "embed_ms": C.summary(embed),
        "knn_k50_ms": C.summary(knn),
        "fusion_and_rest_p50_ms": round(
            C.summary(total)["median"] - C.summary(embed)["median"] - C.summary(knn)["median"], 3
        ),
    }


# ------------------------------------------------------------------ llm similar
LLM_PLUGIN = '''
"""A tiny llm embedding plugin for memp's benchmark: memp's `hash` embedder, verbatim algorithm."""
import hashlib, itertools, math, re
import llm

_WORD = re.compile(r"[a-z0-9]+")


class MempHash(llm.EmbeddingModel):
    model_id = "memp-hash-256"
    batch_size = 256

    def __init__(self):
        self.dim = 256
        self._cache = {}

    def _bucket(self, tok):
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) & 1 else -1.0)

    def embed_batch(self, texts):
        for text in texts:
            words = _WORD.findall(text.lower())
            row = [0.0] * self.dim
            for tok in words + [a + "_" + b for a, b in itertools.pairwise(words)]:
                hit = self._cache.get(tok)
                if hit is None:
                    hit = self._cache[tok] = self._bucket(tok)
                row[hit[0]] += hit[1]
            norm = math.sqrt(sum(x * x for x in row))
            yield [x / norm for x in row] if norm else row


@llm.hookimpl
def register_embedding_models(register):
    register(MempHash())
'''

LLM_PYPROJECT = """
[project]
name = "llm-memp-hash"
version = "0.0.1"
dependencies = ["llm"]
[project.entry-points.llm]
memp_hash = "llm_memp_hash"
[tool.setuptools]
py-modules = ["llm_memp_hash"]
"""


def llm_compare(
    llm_bin: Path, n: int, distinct: int, reps: int, force: bool, store: Path | None = None
) -> dict[str, Any]:
    """``llm similar`` over the ``n`` task texts of ``C.store_tasks(n, distinct)`` beside ``memp
    query`` on ``store`` (default: the hash store of bench_query, the same texts)."""
    import subprocess

    venv_py = llm_bin.parent / "python"
    work = C.WORK / f"llm-{n}"
    info: dict[str, Any] = {"llm": str(llm_bin), "n": n}
    cp = subprocess.run([str(llm_bin), "--version"], capture_output=True)
    info["llm_version"] = cp.stdout.decode().strip()
    env = dict(os.environ, LLM_USER_PATH=str(work / "user"))
    env.pop("PYTHONPATH", None)
    models = subprocess.run([str(llm_bin), "embed-models"], capture_output=True, env=env).stdout.decode()
    if "memp-hash-256" not in models:
        plug = C.WORK / "llm-memp-hash"
        plug.mkdir(parents=True, exist_ok=True)
        (plug / "llm_memp_hash.py").write_text(LLM_PLUGIN)
        (plug / "pyproject.toml").write_text(LLM_PYPROJECT)
        cp = subprocess.run(
            [str(venv_py), "-m", "pip", "install", "-q", "--no-build-isolation", str(plug)],
            capture_output=True,
        )
        if cp.returncode:
            cp = subprocess.run([str(venv_py), "-m", "pip", "install", "-q", str(plug)], capture_output=True)
        if cp.returncode:
            return {**info, "error": "could not install the local plugin: " + cp.stderr.decode()[-500:]}
    # the same texts in both tools
    tasks = C.store_tasks(n, distinct)
    db = work / "embeddings.db"
    params = {"n": n, "distinct": distinct, "v": 1}
    work.mkdir(parents=True, exist_ok=True)
    if force or not C.fixture_ok(work, params) or not db.exists():
        if db.exists():
            db.unlink()
        items = work / "items.json"
        items.write_bytes(orjson.dumps([{"id": f"t{i}", "content": t} for i, t in enumerate(tasks)]))
        t0 = time.perf_counter()
        cp = subprocess.run(
            [
                str(llm_bin),
                "embed-multi",
                "tasks",
                str(items),
                "-m",
                "memp-hash-256",
                "-d",
                str(db),
                "--store",
            ],
            capture_output=True,
            env=env,
        )
        if cp.returncode:
            return {**info, "error": "llm embed-multi failed: " + cp.stderr.decode()[-800:]}
        info["embed_multi_s"] = round(time.perf_counter() - t0, 2)
        C.mark_fixture(work, params)
        (work / ".bench-build.json").write_bytes(orjson.dumps({"embed_multi_s": info["embed_multi_s"]}))
    else:
        info.update(_load_build(work))
    info["db_mb"] = C.mb(db.stat().st_size)
    if store is None:
        sinfo = build_hash_store(n, distinct, False)
        store = Path(sinfo["path"])
    else:
        sinfo = {"index_mb": C.mb(C.dir_size(store / "index"))}
    queries = real_queries()

    def llm_argv(i: int) -> list[str]:
        return [str(llm_bin), "similar", "tasks", "-c", queries[i % len(queries)], "-n", "3", "-d", str(db)]

    first = subprocess.run(llm_argv(0), capture_output=True, env=env)
    if first.returncode or not first.stdout.strip():
        return {**info, "error": "llm similar failed: " + first.stderr.decode()[-800:]}
    # the top hit agrees? (same vectors; memp fuses BM25, so compare with --lexical-weight 0)
    memp_top = orjson.loads(
        C.run(
            [
                *C.memp_argv(),
                "-s",
                str(store),
                "query",
                queries[0],
                "--json",
                "-k",
                "1",
                "--lexical-weight",
                "0",
            ]
        ).stdout.splitlines()[0]
    )
    llm_top = orjson.loads(first.stdout.splitlines()[0])
    # ties are ordered differently (memp: by id), so compare the best score, not the text
    info["top1_same_score"] = abs(memp_top["similarity"] - float(llm_top.get("score", 0))) < 1e-5
    info["top1_scores"] = {"memp_similarity": memp_top["similarity"], "llm_score": llm_top.get("score")}
    llm_t = C.time_process(llm_argv(0), reps, env=env, vary=llm_argv)
    memp_t = C.time_process(
        [],
        reps,
        vary=lambda i: [*C.memp_argv(), "-s", str(store), "query", queries[i % len(queries)], "--json"],
    )
    info["llm_similar_ms"] = C.summary(llm_t)
    info["memp_query_ms"] = C.summary(memp_t)
    info["memp_store_index_mb"] = sinfo["index_mb"]
    info["llm_over_memp"] = round(info["llm_similar_ms"]["median"] / info["memp_query_ms"]["median"], 2)
    return info


# ---------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k memories, fewer repetitions")
    ap.add_argument("--n", type=int, help="memories per store (default 100000; --quick 10000)")
    ap.add_argument("--distinct", type=int, default=20000, help="distinct task texts (embedded with minilm)")
    ap.add_argument("--reps", type=int, help="fresh-process repetitions (default 10; --quick 5)")
    ap.add_argument(
        "--noise",
        type=float,
        default=None,
        help="per-dimension sigma of the ANN copies' perturbation (default: the sigma that puts a "
        "copy as far from its source as the median nearest neighbour of the real texts)",
    )
    ap.add_argument("--queries", type=int, default=500, help="ANN sweep queries")
    ap.add_argument("--llm", default="/tmp/llmvenv/bin/llm", help="llm executable in its own venv")
    ap.add_argument("--llm-n", type=int, help="texts for the llm comparison (default 10000; --quick 2000)")
    ap.add_argument(
        "--only",
        action="append",
        choices=["stores", "fresh", "ann", "inproc", "llm"],
        help="run only these parts (repeatable)",
    )
    ap.add_argument("--no-minilm", action="store_true", help="skip everything that needs the minilm model")
    ap.add_argument("--rebuild", action="store_true", help="rebuild cached fixtures")
    a = ap.parse_args()
    n = a.n or (10_000 if a.quick else 100_000)
    reps = a.reps or (5 if a.quick else 10)
    distinct = min(a.distinct, n) if not a.quick else min(a.distinct, 5000)
    parts = set(a.only or ["stores", "fresh", "ann", "inproc", "llm"])
    load0 = list(os.getloadavg())
    use_minilm = not a.no_minilm and C.minilm_ready()
    queries = real_queries()
    res: dict[str, Any] = {
        "n": n,
        "reps": reps,
        "quick": a.quick,
        "minilm": use_minilm,
        "targets": {
            "fresh_ms": TARGET_FRESH_MS,
            "inproc_p50_ms": TARGET_INPROC_P50_MS,
            "recall_at_10": TARGET_RECALL,
        },
    }
    out_name = "bench_query" + ("_quick" if a.quick else "") + (f"_n{n}" if a.n else "")
    prev_path = C.RESULTS / f"{out_name}.json"
    if a.only and prev_path.exists():  # keep the other parts of an earlier run
        prev = orjson.loads(prev_path.read_bytes())
        prev.pop("machine", None)
        res = {**prev, **res}

    stores: dict[str, dict[str, Any]] = {}
    if parts & {"stores", "fresh", "inproc"}:
        print(f"== stores ({n} memories)")
        stores["hash"] = build_hash_store(n, distinct, a.rebuild)
        if use_minilm:
            stores["minilm"] = build_minilm_store(n, distinct, a.rebuild, Path(stores["hash"]["path"]))
        for name, s in stores.items():
            print(
                f"  {name:6s}: index {s['index_mb']} MB on disk = {s['index_bytes_per_memory']:.0f} B/memory "
                f"(hnsw {C.mb(s['hnsw_bytes'])} MB, vectors {C.mb(s.get('vectors_bytes', 0))} MB, "
                f"state.json {C.mb(s['state_json_bytes'])} MB, files.json {C.mb(s.get('files_json_bytes', 0))} MB, "
                f"lexical {C.mb(s['lexical_bytes'])} MB, keywords {C.mb(s['keyword_index_bytes'])} MB); memory files {s['memories_mb']} MB; "
                f"build: write {s.get('write_s', '-')} s, index {s.get('rebuild_s', '-')} s"
                + (" (cached)" if s.get("cached") else "")
            )
        res["stores"] = stores

    if "fresh" in parts:
        print(f"\n== fresh-process `memp query --json` ({reps} runs, median)")
        fresh: dict[str, Any] = {}
        for name, s in stores.items():
            f = fresh_query(Path(s["path"]), queries, reps)
            f["breakdown"] = stage_breakdown(
                Path(s["path"]), queries, max(3, reps // 2), f["wall_ms"]["median"]
            )
            f["target_ms"] = TARGET_FRESH_MS[name]
            f["meets_target"] = f["wall_ms"]["median"] < TARGET_FRESH_MS[name]
            f["whatif_exact_mmap"] = whatif_exact(Path(s["path"]), max(3, reps // 2))
            fresh[name] = f
            w = f["wall_ms"]
            print(
                f"  {name:6s}: median {w['median']:.0f} ms (p90 {w['p90']:.0f}, min {w['min']:.0f}; "
                f"CPU user+sys median {f['cpu_ms']['median']:.0f} ms); "
                f"target < {TARGET_FRESH_MS[name]:.0f} ms: {'MET' if f['meets_target'] else 'MISSED'}; "
                f"{f['ratio_to_import_numpy']:.2f}x `python -c 'import numpy'` "
                f"({f['import_numpy_wall_ms']['median']:.0f} ms; CPU {f['cpu_ratio_to_import_numpy']:.2f}x), "
                f"target <= 1.7x: {'MET' if f['ratio_to_import_numpy'] <= 1.7 else 'MISSED'}"
            )
            for stage, ms in f["breakdown"]["stages_ms"].items():
                print(f"      {ms:7.1f} ms  {stage}")
            print(
                f"      (sum = instrumented run's wall {f['breakdown']['instrumented_wall_ms']:.0f} ms; plain run {w['median']:.0f} ms)"
            )
            wi = f["whatif_exact_mmap"]["load_and_search_ms"]
            print(
                "      what-if, fresh process, load + search only: "
                + "; ".join(f"{k}: {v['median']:.0f} ms" for k, v in wi.items())
            )
            it = f["breakdown"]["importtime"]
            print(
                f"      -X importtime total {it['total_ms']} ms; top: "
                + ", ".join(f"{k} {v}" for k, v in list(it["largest_cumulative_ms"].items())[:8])
            )
        res["fresh"] = fresh

    if "ann" in parts and use_minilm:
        print(f"\n== hnswlib vs exact numpy on minilm vectors ({n})")
        ann = ann_sweep(n, distinct, a.noise, a.rebuild, a.queries)
        res["ann"] = ann
        print(
            f"  {ann['distinct_embedded_texts']} distinct texts embedded, copies perturbed with sigma {ann['perturbation_sigma']} "
            f"(mean cos to original {ann['perturbed_mean_cos_to_base']}; pool median NN cos {ann['pool_median_nn_cos']}); "
            f"{ann['queries']} queries"
        )
        ex = ann["exact_numpy_ms"]
        print(f"  exact numpy (dot + argpartition): p50 {ex['median']:.3f} ms, p99 {ex['p99']:.3f} ms")
        groups = list(ann["query_groups"])
        print(f"  query groups: {ann['query_groups']}")
        print(
            "  ef_search  k   p50 ms   p99 ms  recall@10  x faster than exact (p50)  recall by group: "
            + ", ".join(groups)
        )
        for r in ann["sweep"]:
            print(
                f"  {r['ef_search']:9d} {r['k']:3d} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['recall_at_10']:10.4f} "
                f"{r['speedup_vs_exact_p50']:8.1f}      "
                + "  ".join(f"{r['recall_at_10_by_group'][g]:.4f}" for g in groups)
            )
        print(
            f"  smallest ef meeting p50 < 1 ms and recall@10 >= 0.95: k=10: {ann['smallest_ef_meeting_target_k10']}, "
            f"k=50 (what memp asks for): {ann['smallest_ef_meeting_target_k50']}"
        )

    if "inproc" in parts:
        print("\n== in-process Retriever.scored (embed + knn + BM25 fusion), loaded store")
        inproc = {}
        for name, s in stores.items():
            ip = inprocess_retriever(Path(s["path"]), queries[:200], 1 if name == "minilm" else 2)
            inproc[name] = ip
            print(
                f"  {name:6s}: total p50 {ip['scored_total_ms']['median']:.2f} ms = embed {ip['embed_ms']['median']:.2f} "
                f"+ knn(k=50, ef={ip['ef_search']}) {ip['knn_k50_ms']['median']:.3f} + fusion/rest {ip['fusion_and_rest_p50_ms']:.2f}; "
                f"with exact search instead of knn: p50 {ip['scored_exact_total_ms']['median']:.2f} ms"
            )
        res["inproc"] = inproc

    if "llm" in parts:
        llm_bin = Path(a.llm)
        llm_n = a.llm_n or (2000 if a.quick else 10_000)
        print(f"\n== `llm similar` vs `memp query` ({llm_n} texts, hash-256 vectors in both)")
        if not llm_bin.exists():
            res["llm"] = {
                "error": f"{llm_bin} not found: python -m venv /tmp/llmvenv && /tmp/llmvenv/bin/pip install llm"
            }
            print("  skipped:", res["llm"]["error"])
        else:
            lc = llm_compare(llm_bin, llm_n, min(distinct, llm_n), reps, a.rebuild)
            res["llm"] = lc
            if "error" in lc:
                print("  failed:", lc["error"])
            else:
                print(
                    f"  {lc['llm_version']}; llm similar median {lc['llm_similar_ms']['median']:.0f} ms, "
                    f"memp query median {lc['memp_query_ms']['median']:.0f} ms: llm/memp = {lc['llm_over_memp']}x; "
                    f"same top-1 score: {lc['top1_same_score']}"
                )
    res["load_avg_at_start_and_end"] = [load0, list(os.getloadavg())]
    C.write_result(out_name, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
