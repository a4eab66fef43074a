"""memp at scale (up to a million memories, hash embedder): what adding a batch costs, peak memory
of each command, query latency and recall, bytes on disk, beside exact numpy search and
`llm similar` in the same run.

Targets at 1M memories (2 cores, 24 GiB; the machine is shared, so compare figures of one run):
incremental distill+index of 10k new memories < 30 s; peak RSS < 2 GB for any command; fresh-process
`memp query` < 500 ms; in-process p50 < 2 ms at recall@10 >= 0.95; bytes per memory on disk.

::

    python benchmarks/bench_scale.py --n 200000            # the store is cached in MEMP_BENCH_DIR
    python benchmarks/bench_scale.py --n 1000000 --no-llm

How the store is built (say it in any figure you quote): the N trajectories are synthesised from the
real ALFWorld records (``_common.AlfworldSynth``) and stored with ``memp ingest`` (fresh processes,
50k per file); their memory files are written in bulk through the library with distill's own
builders (the store's ``[distill] policy``, builtin distiller: the bytes `memp distill` writes)
but without an index sync per batch; then ``memp index rebuild`` (fresh process, timed). Each
round then does what a user does: ``memp ingest`` of ``--batch`` new trajectories and
``memp distill`` (which plans over every stored trajectory, writes the new memories and syncs
the index), each a fresh process whose wall time and peak RSS (``os.wait4``) are recorded.
The memory files and trajectories are cached; each run indexes a fresh copy (hard links).
Writes ``benchmarks/results/bench_scale-<n>.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
import bench_query as Q
import orjson

CHUNK = 50_000
SEED_NEW = 1_000_003


# ------------------------------------------------------------------ processes
def measured(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` (a fresh process); its wall seconds and peak RSS (MB, from a small
    ``/usr/bin/time`` parent: a child this big process spawned itself would report at least this
    process's own peak, which Linux carries into a child's ``ru_maxrss`` at exec)."""
    import tempfile

    C.WORK.mkdir(parents=True, exist_ok=True)
    timer = ["/usr/bin/time", "-f", "%M"] if os.path.exists("/usr/bin/time") else []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([*timer, *argv], env=C.memp_env(), cwd=C.WORK, stdout=out, stderr=err)
        _pid, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read().decode(errors="replace")
    if code:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{stderr[-2000:]}")
    rss_kb = ru.ru_maxrss
    if timer:  # its last stderr line: the child's peak RSS in KB
        stderr, _, last = stderr.rstrip().rpartition("\n")
        rss_kb = int(last)
    return {
        "s": round(dt, 2),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "stderr": stderr[-400:].strip(),
        "stdout": stdout,
    }


def memp(store: Path, *args: str) -> dict[str, Any]:
    return measured([*C.memp_argv(), "-s", str(store), *args])


# -------------------------------------------------------------------- fixture
def _trajectories(synth: C.AlfworldSynth, tasks: list[str], first: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    return [synth.trajectory_for(t, rng, first + i) for i, t in enumerate(tasks)]


def _ingest(store: Path, trajs: list[Any], name: str) -> dict[str, Any]:
    jsonl = C.WORK / f"{name}.jsonl"
    with open(jsonl, "wb") as f:
        for t in trajs:
            f.write(orjson.dumps(t.to_dict()) + b"\n")
    try:
        return memp(store, "ingest", str(jsonl))
    finally:
        jsonl.unlink()


def _write_memories(store_dir: Path, trajs: list[Any]) -> None:
    """The memory files `memp distill` would write for ``trajs`` (same builders), in bulk."""
    from memp_cli.build import runner
    from memp_cli.build.policies import memory_id
    from memp_cli.build.writing import Writer
    from memp_cli.store import Store

    store = Store.open(store_dir)
    policy = store.config.distill.policy
    only_success = store.config.update.policy != "vanilla"  # as distill: see runner.distill
    jobs = [
        runner._Job(t, memory_id(policy, t.id), 1) for t in trajs if t.success is True or not only_success
    ]
    report = runner.DistillReport(
        policy=policy, model=runner.BUILTIN_MODEL, prompt_version=runner.BUILTIN_VERSION
    )
    writer = Writer(store, policy, runner.BUILTIN_MODEL, runner.BUILTIN_VERSION, report, None, len(jobs))
    runner._run_local(store, jobs, policy, runner.BUILTIN_MODEL, runner.BUILTIN_VERSION, writer)
    assert report.written == len(jobs), (report.written, len(jobs))


def base_store(n: int, distinct: int, policy: str, force: bool) -> tuple[Path, dict[str, Any]]:
    """Trajectories and memory files of ``n`` runs (cached; no index)."""
    path = C.WORK / f"scale-{n}-d{distinct}-{policy}"
    params = {"n": n, "distinct": distinct, "policy": policy, "v": 1}
    if not force and C.fixture_ok(path, params):
        return path, Q._load_build(path)
    smaller = None if force else _smaller_fixture(n, distinct, policy)
    info: dict[str, Any] = {"ingest": [], "write_memories_s": 0.0}
    first = 0
    if smaller is not None:
        # the first m runs of an n-run store are the m-run store's (store_tasks and the chunk
        # seeds depend only on the position): grow it in place instead of writing it again
        first, old = smaller
        C.reset_dir(path)
        old.rename(path)
        info = {**Q._load_build(path), "grown_from": first}
        (path / ".bench-params.json").unlink()
        print(f"  growing {old.name} ({first} runs) into {path.name}", file=sys.stderr)
    else:
        C.reset_dir(path)
        C.WORK.mkdir(parents=True, exist_ok=True)
        C.run([*C.memp_argv(), "init", "--embedder", "hash", str(path)])
        toml = path / "memp.toml"
        text = toml.read_text()
        toml.write_text(text.replace('policy = "proceduralization"', f'policy = "{policy}"', 1))
    tasks = C.store_tasks(n, distinct)
    synth = C.AlfworldSynth()
    for start in range(first, n, CHUNK):
        trajs = _trajectories(synth, tasks[start : start + CHUNK], start, start)
        r = _ingest(path, trajs, f"base-{start}")
        info["ingest"].append({k: r[k] for k in ("s", "peak_rss_mb")})
        t0 = time.perf_counter()
        _write_memories(path, trajs)
        info["write_memories_s"] += time.perf_counter() - t0
        print(f"  {path.name}: {start + len(trajs)}/{n} trajectories and memory files", file=sys.stderr)
    info["write_memories_s"] = round(info["write_memories_s"], 1)
    C.mark_fixture(path, params)
    (path / ".bench-build.json").write_bytes(orjson.dumps(info))
    return path, info


def _smaller_fixture(n: int, distinct: int, policy: str) -> tuple[int, Path] | None:
    """The largest cached store of fewer runs (a whole number of chunks) and the same texts and
    policy, if any: its runs are the first ones of an ``n``-run store."""
    best: tuple[int, Path] | None = None
    for p in C.WORK.glob(f"scale-*-d{distinct}-{policy}"):
        try:
            m = int(p.name.split("-")[1])
        except ValueError:
            continue
        params = {"n": m, "distinct": distinct, "policy": policy, "v": 1}
        if m < n and m % CHUNK == 0 and C.fixture_ok(p, params) and (best is None or m > best[0]):
            best = (m, p)
    return best


def working_copy(base: Path) -> Path:
    """A fresh store over the cached files: memory files and trajectory segments hard-linked (memp
    only ever replaces them by rename), everything else copied, no index."""
    dst = base.with_name(f"{base.name}-run-{C.REPO.name}")  # one per checkout: runs may overlap
    C.reset_dir(dst)
    dst.mkdir()
    for p in base.iterdir():
        if p.name in ("memories", "trajectories"):
            (dst / p.name).mkdir()
            for f in os.scandir(p):
                os.link(f.path, dst / p.name / f.name)
        elif p.name == "index":
            continue
        elif p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)
    return dst


# ---------------------------------------------------------------- measurements
def disk(path: Path, n: int) -> dict[str, Any]:
    """Bytes under ``path`` (apparent and allocated, st_blocks) and per memory."""
    size = blocks = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            blocks += st.st_blocks * 512
            files += 1
    return {
        "files": files,
        "bytes": size,
        "allocated_bytes": blocks,
        "bytes_per_memory": round(size / n, 1),
        "allocated_bytes_per_memory": round(blocks / n, 1),
    }


def inprocess(store: Path, queries: list[str], reps: int) -> dict[str, Any]:
    """Retriever p50/p95 through the graph; recall@10 of the graph's candidates against exact
    search over the same vectors; exact numpy search time (vectors loaded in RAM)."""
    import numpy as np

    from memp_cli import index as index_mod
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import Store, store_embedder

    st = Store.open(store)
    emb = store_embedder(st)
    t0 = time.perf_counter()
    idx = index_mod.load(st)
    assert idx is not None and idx.hnsw is not None
    load_s = time.perf_counter() - t0
    rc = st.config.retrieval
    r = Retriever.from_config(idx, emb, rc, exact=False)
    rx = Retriever.from_config(idx, emb, rc, exact=True)
    r.scored(queries[:3])
    qv = np.asarray(emb.embed(queries), dtype=np.float32)
    hits = 0
    for i in range(len(queries)):
        got = r._hnsw_candidates(qv[i : i + 1], 10, None)
        want = rx._exact_candidates(qv[i : i + 1], 10, None)
        assert got is not None and want is not None
        # a tie with the 10th exact cosine counts as a right answer
        cut = float(np.min(want[1][0])) - 1e-6
        cos = idx.vectors([int(x) for x in got[0][0]]) @ qv[i]
        hits += min(10, int(np.sum(cos >= cut)))
    total = []
    for _ in range(reps):
        for q in queries:
            t1 = time.perf_counter()
            r.scored([q])
            total.append(time.perf_counter() - t1)
    mat = np.array(idx.vector_matrix())  # in RAM: numpy's own best case
    live = idx.label_array()
    exact = []
    for i in range(len(queries)):
        t1 = time.perf_counter()
        sims = mat[live] @ qv[i] if len(live) != len(mat) else mat @ qv[i]
        np.argpartition(-sims, 9)[:10]
        exact.append(time.perf_counter() - t1)
    s = C.summary(total)
    return {
        "load_index_s": round(load_s, 2),
        "ef_search": st.config.index.ef_search,
        "scored_ms": s,
        "p50_ms": s["median"],
        "p95_ms": round(sorted(x * 1000 for x in total)[int(0.95 * (len(total) - 1))], 3),
        "recall_at_10": round(hits / (10 * len(queries)), 4),
        "exact_numpy_ms": C.summary(exact),
    }


def _distill(store: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``memp distill --json``: the measured run and distill's report (its last line)."""
    run = memp(store, "distill", "--json")
    return run, orjson.loads(run["stdout"].splitlines()[-1]) if run["stdout"].strip() else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="memories in the base store (default 200000)")
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct task texts")
    ap.add_argument("--batch", type=int, default=10_000, help="new trajectories per round")
    ap.add_argument(
        "--policy",
        default="proceduralization",
        help="[distill] policy of the store: proceduralization (the default; builtin distiller) or "
        "trajectory (no distiller: what the store and index cost alone)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="ingest+distill rounds")
    ap.add_argument("--reps", type=int, default=10, help="fresh-process query repetitions")
    ap.add_argument("--queries", type=int, default=200, help="in-process queries")
    ap.add_argument("--llm", default="/tmp/llmvenv/bin/llm", help="llm executable in its own venv")
    ap.add_argument("--no-llm", action="store_true", help="skip the `llm similar` comparison")
    ap.add_argument(
        "--llm-n",
        type=int,
        default=0,
        help="task texts in llm's collection (default: --n); its collection of the first N texts is cached",
    )
    ap.add_argument("--force", action="store_true", help="rebuild the cached trajectories and memory files")
    args = ap.parse_args()
    res: dict[str, Any] = {"n": args.n, "batch": args.batch, "distinct": args.distinct, "policy": args.policy}
    base, res["build"] = base_store(args.n, args.distinct, args.policy, args.force)
    store = working_copy(base)
    print(f"memp index rebuild over {args.n} memories ...", file=sys.stderr)
    r = memp(store, "index", "rebuild")
    res["rebuild"] = {k: r[k] for k in ("s", "peak_rss_mb")}
    # The fixture's memory files were written without distill, so the store has no trajectory
    # ledger yet (cache/, derived): the first distill would parse every stored run to make it.
    # A store that distill has grown has one; the rounds measure that steady state, and this
    # first distill (no new runs) is reported on its own.
    print("memp distill over the store as built (makes its trajectory ledger) ...", file=sys.stderr)
    warm, warm_rep = _distill(store)
    res["ledger_warmup"] = {
        "s": warm["s"],
        "peak_rss_mb": warm["peak_rss_mb"],
        "written": warm_rep.get("written"),
    }
    synth = C.AlfworldSynth()
    rounds = []
    # memories, not runs: the store keeps only successful runs ([update] policy adjustment)
    total = res["base_memories"] = sum(1 for _ in os.scandir(store / "memories"))
    for k in range(args.rounds):
        tasks = C.store_tasks(args.batch, args.batch, seed=SEED_NEW + k)
        trajs = _trajectories(synth, tasks, 10_000_000 + k * args.batch, SEED_NEW + k)
        ing = _ingest(store, trajs, f"round-{k}")
        dis, rep = _distill(store)
        total += rep.get("written", 0)
        row = {
            "stored_before": total - rep.get("written", 0),
            "ingest": {k2: ing[k2] for k2 in ("s", "peak_rss_mb")},
            "distill": {k2: dis[k2] for k2 in ("s", "peak_rss_mb")},
            "written": rep.get("written"),
            # distill's own report: planning and writing; the rest of the wall time is the
            # process start and the index sync
            "distill_build_s": rep.get("seconds"),
            "distill_s_per_10k_written": round(dis["s"] * 10_000 / max(1, rep.get("written", 0)), 2),
            "index_disk": disk(store / "index", total),
        }
        rounds.append(row)
        print(f"  round {k}: {row}", file=sys.stderr)
    res["rounds"] = rounds
    res["distill_s_per_10k_median"] = statistics.median(x["distill_s_per_10k_written"] for x in rounds)
    res["distill_s_per_10k_max"] = max(x["distill_s_per_10k_written"] for x in rounds)
    sync = memp(store, "index", "sync")
    res["sync_noop"] = {k: sync[k] for k in ("s", "peak_rss_mb")}
    queries = Q.real_queries()
    res["fresh_query"] = Q.fresh_query(store, queries, args.reps)
    one = memp(store, "query", queries[0], "--json")
    res["fresh_query"]["peak_rss_mb"] = one["peak_rss_mb"]
    stats = memp(store, "stats", "--json")
    res["stats_cmd"] = {k: stats[k] for k in ("s", "peak_rss_mb")}
    try:  # a finding exits non-zero: the run goes on, and says so
        doctor = memp(store, "doctor", "--json")
        res["doctor_cmd"] = {k: doctor[k] for k in ("s", "peak_rss_mb")}
    except RuntimeError as e:
        res["doctor_cmd"] = {"error": str(e)[-600:], "peak_rss_mb": 0}
    res["inprocess"] = inprocess(store, queries[: args.queries], 3)
    total = sum(1 for _ in os.scandir(store / "memories"))  # the base keeps only successful runs too
    res["disk"] = {
        "memories": total,
        "index": disk(store / "index", total),
        "memory_files": disk(store / "memories", total),
        "trajectories": disk(store / "trajectories", total),
    }
    if not args.no_llm and Path(args.llm).exists():
        res["llm_similar"] = Q.llm_compare(
            Path(args.llm), args.llm_n or args.n, args.distinct, 5, False, store=store
        )
    cmds = [
        res["rebuild"],
        res["ledger_warmup"],
        *(x["distill"] for x in rounds),
        *(x["ingest"] for x in rounds),
        res["sync_noop"],
    ]
    cmds += [{"peak_rss_mb": res["fresh_query"]["peak_rss_mb"]}, res["stats_cmd"], res["doctor_cmd"]]
    res["peak_rss_mb_max"] = max(c["peak_rss_mb"] for c in cmds)
    res["targets"] = {
        "incremental_10k_under_30s": res["distill_s_per_10k_max"] < 30,
        "peak_rss_under_2gb": res["peak_rss_mb_max"] < 2000,
        "fresh_query_under_500ms": res["fresh_query"]["wall_ms"]["median"] < 500,
        "p50_under_2ms": res["inprocess"]["p50_ms"] < 2,
        "recall_at_10_at_least_095": res["inprocess"]["recall_at_10"] >= 0.95,
    }
    print(
        orjson.dumps({k: res[k] for k in ("targets", "distill_s_per_10k_median", "peak_rss_mb_max")}).decode()
    )
    C.write_result(f"bench_scale-{args.n}-{args.policy}", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
