"""Ingest throughput: `memp ingest` on ~2 KB native JSONL trajectory lines.

Target: >= 20,000 trajectories/s. The input is ~50k lines made from the real records in
``shared/data`` (records of 1.5-2.6 KB, each copy made distinct by an episode marker in its
initial observation, so none is a duplicate). Times the CLI as a fresh process (a new hash store per
run), the library path (``Store.ingest(read_jsonl(...))``), a second ingest of the same file (all
duplicates), the pieces of the pipeline on their own, and a cProfile of the library path.

::

    python benchmarks/bench_ingest.py [--quick] [--lines N] [--reps N]

Writes ``benchmarks/results/bench_ingest.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_PER_S = 20_000


def make_input(n: int, seed: int = 0) -> Path:
    path = C.WORK / f"ingest-{n}-{seed}.jsonl"
    if path.exists():
        return path
    recs = []
    for f in sorted(C.DATA.glob("*.jsonl")):
        with open(f, "rb") as fh:
            recs.extend(orjson.loads(line) for line in fh if 1500 <= len(line) <= 2600)
    if not recs:
        raise SystemExit(f"no records of 1.5-2.6 KB under {C.DATA}")
    rng = random.Random(seed)
    C.WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for i in range(n):
            r = dict(rng.choice(recs))
            r["task_id"] = f"bench/{i}"
            r["initial_observation"] = (r.get("initial_observation") or "") + f" [episode {i}]"
            out.write(orjson.dumps(r) + b"\n")
    tmp.replace(path)
    return path


def new_store(name: str) -> Path:
    path = C.WORK / name
    C.reset_dir(path)
    C.run([*C.memp_argv(), "init", "--embedder", "hash", str(path)])
    return path


def rate(n: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "trajectories_per_s": round(n / seconds),
        "mb_per_s": round(nbytes / 1e6 / seconds, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k lines, 2 runs")
    ap.add_argument("--lines", type=int, help="input lines (default 50000; --quick 10000)")
    ap.add_argument("--reps", type=int, help="runs per measurement (default 3; --quick 2)")
    a = ap.parse_args()
    n = a.lines or (10_000 if a.quick else 50_000)
    reps = a.reps or (2 if a.quick else 3)
    src = make_input(n)
    nbytes = src.stat().st_size
    print(f"input: {n} lines, {C.mb(nbytes)} MB, {nbytes / n:.0f} B/line ({src})")
    res: dict[str, Any] = {
        "target_trajectories_per_s": TARGET_PER_S,
        "lines": n,
        "bytes": nbytes,
        "bytes_per_line": round(nbytes / n),
    }

    # 1. the CLI, fresh process, into a new store each time
    cli_runs = []
    for _ in range(reps):
        store = new_store("ingest-cli")
        t0 = time.perf_counter()
        cp = C.run([*C.memp_argv(), "-s", str(store), "ingest", str(src), "--json"])
        cli_runs.append(time.perf_counter() - t0)
        rep = orjson.loads(cp.stdout.splitlines()[-1])
        assert rep["added"] == n, rep
    best = sorted(cli_runs)[len(cli_runs) // 2]
    res["cli_fresh_process"] = {**rate(n, nbytes, best), "runs_s": [round(x, 3) for x in cli_runs]}
    # the same file again: every line a duplicate
    t0 = time.perf_counter()
    cp = C.run([*C.memp_argv(), "-s", str(store), "ingest", str(src), "--json"])
    dup_s = time.perf_counter() - t0
    assert orjson.loads(cp.stdout.splitlines()[-1])["duplicates"] == n
    res["cli_all_duplicates"] = rate(n, nbytes, dup_s)
    startup = C.summary(C.time_process([*C.memp_argv(), "--version"], 5))["median"] / 1000
    res["cli_startup_s"] = round(startup, 3)

    # 2. the library path, in-process
    from memp_cli.ingest import parse_record, read_jsonl
    from memp_cli.model.trajectory import Trajectory, trajectory_id
    from memp_cli.store import Store

    lib_runs = []
    for _ in range(reps):
        store_path = new_store("ingest-lib")
        st = Store.open(store_path)
        t0 = time.perf_counter()
        with open(src, "rb") as f:
            rep = st.ingest(read_jsonl(f, str(src)))
        lib_runs.append(time.perf_counter() - t0)
        assert rep.added == n
    med = sorted(lib_runs)[len(lib_runs) // 2]
    res["library"] = {**rate(n, nbytes, med), "runs_s": [round(x, 3) for x in lib_runs]}

    # 3. the pieces, streamed like the real pipeline (nothing accumulated, so no GC build-up):
    # each loop adds one stage to the previous one; a piece's cost is the difference.
    with open(src, "rb") as f:
        lines = f.readlines()
    t0 = time.perf_counter()
    for line in lines:
        orjson.loads(line)
    t_loads = time.perf_counter() - t0
    t0 = time.perf_counter()
    for line in lines:
        parse_record(orjson.loads(line))
    t_parse = time.perf_counter() - t0
    t_id = 0.0
    t0 = time.perf_counter()
    for line in lines:
        t = parse_record(orjson.loads(line))
        c = time.perf_counter()
        trajectory_id(t)
        t_id += time.perf_counter() - c
        orjson.dumps(t.to_dict())
    t_dump = time.perf_counter() - t0 - t_id
    t0 = time.perf_counter()
    with open(src, "rb") as f:
        for _line in f:
            pass
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = st.trajectory_ids()
    t_scan = time.perf_counter() - t0
    assert len(ids) == n
    seg = sorted((st.trajectories_dir).glob("*.jsonl"))[0]
    t0 = time.perf_counter()
    with open(seg, "rb") as f:
        for line in f:
            Trajectory.from_stored(orjson.loads(line))
    t_back = time.perf_counter() - t0
    pieces = {
        "read lines (file iteration)": t_read,
        "orjson.loads": t_loads,
        "parse_record, without trajectory_id": t_parse - t_loads - t_id,
        "trajectory_id (canonical JSON + sha256)": t_id,
        "to_dict + orjson.dumps (segment line)": t_dump - t_parse,
        "dedupe: scan stored ids (trajectory_ids)": t_scan,
        "(distill side) read the stored segment back": t_back,
    }
    res["pieces"] = {
        k: {"seconds": round(v, 3), "us_per_trajectory": round(v / n * 1e6, 2)} for k, v in pieces.items()
    }

    # 4. profile of the library path
    store_path = new_store("ingest-prof")
    st = Store.open(store_path)
    prof = cProfile.Profile()
    with open(src, "rb") as f:
        prof.enable()
        st.ingest(read_jsonl(f, str(src)))
        prof.disable()
    buf = io.StringIO()
    ps = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    ps.print_stats(12)
    top = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in sorted(ps.stats.items(), key=lambda kv: -kv[1][2])[
        :12
    ]:
        top.append(
            {
                "function": f"{Path(file).name}:{line}({fn})",
                "calls": nc,
                "tottime_s": round(tt, 3),
                "cumtime_s": round(ct, 3),
            }
        )
    res["profile_top_tottime"] = top
    res["profile_total_s"] = round(sum(v[2] for v in ps.stats.values()), 3)

    for name in ("ingest-cli", "ingest-lib", "ingest-prof"):
        C.reset_dir(C.WORK / name)

    c, lib = res["cli_fresh_process"], res["library"]
    print(
        f"memp ingest (fresh process, new store): {c['trajectories_per_s']:,} trajectories/s, {c['mb_per_s']} MB/s "
        f"({c['seconds']} s incl. ~{startup * 1000:.0f} ms start-up; runs {c['runs_s']})"
    )
    print(
        f"memp ingest, all duplicates:            {res['cli_all_duplicates']['trajectories_per_s']:,} trajectories/s"
    )
    print(
        f"library Store.ingest(read_jsonl(...)):  {lib['trajectories_per_s']:,} trajectories/s, {lib['mb_per_s']} MB/s"
    )
    ok = c["trajectories_per_s"] >= TARGET_PER_S
    res["meets_target"] = ok
    print(f"target >= {TARGET_PER_S:,}/s (CLI): {'MET' if ok else 'MISSED'}")
    print("pieces (us per trajectory):")
    for k, v in res["pieces"].items():
        print(f"  {v['us_per_trajectory']:8.2f}  {k}")
    print(
        f"cProfile of the library path (total {res['profile_total_s']} s under the profiler), top by own time:"
    )
    for r in top:
        print(
            f"  {r['tottime_s']:7.3f} s own, {r['cumtime_s']:7.3f} s cum, {r['calls']:>8} calls  {r['function']}"
        )
    C.write_result("bench_ingest_quick" if a.quick else "bench_ingest", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
