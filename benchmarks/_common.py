"""Shared helpers for the benchmark scripts: timing, result files, realistic fixtures.

Fixtures are synthesised from the real ALFWorld records in ``shared/data`` (or
``MEMP_BENCH_DATA``): task texts come from the real task templates with the real
object and receptacle vocabulary, steps from a real run of the same template with
the names swapped. Big fixtures (stores, embeddings, hnsw graphs) are cached in
``MEMP_BENCH_DIR`` (default ``memp-bench`` in the system's temporary directory) and reused when their parameters
match, so a second run of a script only measures.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"


def _default_data() -> Path:
    env = os.environ.get("MEMP_BENCH_DATA")
    if env:
        return Path(env)
    for cand in (REPO.parent / "shared" / "data", REPO / "shared" / "data"):
        if cand.is_dir():
            return cand
    return REPO.parent / "shared" / "data"


DATA = _default_data()
WORK = Path(os.environ.get("MEMP_BENCH_DIR") or Path(tempfile.gettempdir()) / "memp-bench")

ALFWORLD_FILES = (
    "alfworld_train_replay.jsonl",
    "alfworld_valid_seen_replay.jsonl",
    "alfworld_agentinstruct_corpus.jsonl",
    "alfworld_react_exemplars.jsonl",
)


# ----------------------------------------------------------------- processes
def memp_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MEMP_STORE", None)
    env.pop("MEMP_EMBEDDER", None)
    # Measure what users get: modules loaded from bytecode caches (this sandbox sets
    # PYTHONDONTWRITEBYTECODE=1, which would recompile memp_cli in every process).
    if not os.environ.get("MEMP_BENCH_NO_BYTECODE"):
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def memp_argv() -> list[str]:
    """``memp`` as a fresh process: this interpreter with ``-m memp_cli`` (the repo on PYTHONPATH)."""
    return [sys.executable, "-m", "memp_cli"]


def console_script() -> str | None:
    """The installed ``memp`` entry point beside this interpreter, if there is one."""
    p = Path(sys.executable).parent / "memp"
    return str(p) if p.exists() else None


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    if cwd is None:  # a neutral directory: `python -m memp_cli` would import ./memp_cli first
        WORK.mkdir(parents=True, exist_ok=True)
        cwd = WORK
    cp = subprocess.run(list(argv), input=stdin, capture_output=True, env=env or memp_env(), cwd=cwd)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stderr.decode()[-2000:]}")
    return cp


def time_process(
    argv: Sequence[str],
    n: int,
    *,
    env: dict[str, str] | None = None,
    warmup: int = 1,
    vary: Callable[[int], Sequence[str]] | None = None,
    cpu: list[float] | None = None,
) -> list[float]:
    """Wall seconds of ``n`` fresh processes (after ``warmup`` untimed ones).

    ``vary(i)`` may give the argv of run ``i`` (e.g. another query text each time). ``cpu``, if
    given, receives each run's user+system CPU seconds (steadier than wall time on a shared machine).
    """
    out = []
    for i in range(-warmup, n):
        args = vary(i % max(n, 1)) if vary else argv
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        run(args, env=env)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i >= 0:
            out.append(dt)
            if cpu is not None:
                cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return out


def time_interleaved(
    variants: dict[str, tuple[Sequence[str], dict[str, str] | None]], n: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Like :func:`time_process` for several commands, run round-robin so load drift hits all alike."""
    out: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(-warmup, n):
        for name, (argv, env) in variants.items():
            t0 = time.perf_counter()
            run(argv, env=env)
            dt = time.perf_counter() - t0
            if i >= 0:
                out[name].append(dt)
    return out


def summary(xs: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """median/p10/p90/p99/min/mean of ``xs`` times ``scale`` (seconds -> ms by default)."""
    s = sorted(x * scale for x in xs)

    def pct(p: float) -> float:
        if not s:
            return float("nan")
        k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
        return s[k]

    return {
        "n": len(s),
        "median": round(statistics.median(s), 3) if s else float("nan"),
        "p10": round(pct(10), 3),
        "p90": round(pct(90), 3),
        "p99": round(pct(99), 3),
        "min": round(s[0], 3) if s else float("nan"),
        "mean": round(statistics.fmean(s), 3) if s else float("nan"),
    }


def machine() -> dict[str, Any]:
    import numpy as np

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "PYTHONDONTWRITEBYTECODE (parent env; unset for timed memp runs unless MEMP_BENCH_NO_BYTECODE)": os.environ.get(
            "PYTHONDONTWRITEBYTECODE"
        ),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    try:
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = REPO / ".git" / head[5:]
            head = ref.read_text().strip() if ref.exists() else head
        info["commit"] = head
    except OSError:
        pass
    return info


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"machine": machine(), **data}
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path


def dir_size(path: Path) -> int:
    """Bytes under ``path``: memp's own measure (the one ``memp stats`` reports)."""
    from memp_cli.store.stats import disk_usage

    return disk_usage(path)


def mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 2)


def importtime(argv: Sequence[str], env: dict[str, str] | None = None, top: int = 12) -> dict[str, Any]:
    """Run ``argv`` (a python command) with ``-X importtime``; the costliest imports.

    Returns the total import time, the top modules by cumulative time among the
    top-level imports of the process, and the self time grouped by top-level package.
    """
    assert argv[0] == sys.executable
    cp = run([argv[0], "-X", "importtime", *argv[1:]], env=env)
    rows = []
    for line in cp.stderr.decode().splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:") :].split("|")
        self_us, cum_us, name = int(parts[0]), int(parts[1]), parts[2]
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((name.strip(), self_us, cum_us, depth))
    total = sum(r[2] for r in rows if r[3] == 0)
    top_level = sorted((r for r in rows if r[3] == 0), key=lambda r: -r[2])[:top]
    by_pkg: dict[str, int] = {}
    for name, self_us, _cum, _d in rows:
        pkg = name.split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0) + self_us
    biggest = sorted(rows, key=lambda r: -r[2])[: top * 3]
    return {
        "total_ms": round(total / 1000, 1),
        "top_level_ms": {n: round(c / 1000, 1) for n, _s, c, _d in top_level},
        "self_by_package_ms": {
            k: round(v / 1000, 1) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]
        },
        "largest_cumulative_ms": {n: round(c / 1000, 1) for n, _s, c, _d in biggest},
    }


# ------------------------------------------------------------- ALFWorld texts
_TAKE = re.compile(r"^take (\w+) \d+ from (\w+) \d+")
_GOTO = re.compile(r"^go to (\w+) \d+")


def load_records(files: Sequence[str] = ALFWORLD_FILES) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    for name in files:
        path = DATA / name
        if not path.exists():
            continue
        with open(path, "rb") as f:
            recs.extend(orjson.loads(line) for line in f if line.strip())
    if not recs:
        raise SystemExit(f"no ALFWorld records under {DATA} (set MEMP_BENCH_DATA to shared/data)")
    return recs


class AlfworldSynth:
    """Task texts and trajectories built from the real ALFWorld task templates.

    A template is a real task with its object replaced by ``{obj}`` and its target
    receptacle by ``{rec}`` (``look at X under the desklamp`` keeps only ``{obj}``);
    the vocabulary is every object taken and every receptacle visited in the real runs.
    """

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records = records if records is not None else load_records()
        objs: set[str] = set()
        recs: set[str] = set()
        for r in self.records:
            for s in r.get("steps", []):
                a = s.get("action", "")
                m = _TAKE.match(a)
                if m:
                    objs.add(m.group(1))
                m = _GOTO.match(a)
                if m:
                    recs.add(m.group(1))
        self.objects = sorted(objs)
        self.receptacles = sorted(recs)
        self.real_tasks = sorted({r["task"] for r in self.records})
        # template -> real records it came from, with the names they used
        self.templates: dict[str, list[tuple[dict[str, Any], str, str | None]]] = {}
        for r in self.records:
            parsed = self._templatize(r["task"])
            if parsed is not None:
                tpl, obj, rec = parsed
                self.templates.setdefault(tpl, []).append((r, obj, rec))
        self.template_list = sorted(self.templates)

    def _templatize(self, task: str) -> tuple[str, str, str | None] | None:
        words = re.findall(r"[a-z]+", task.lower())
        obj = next((w for w in words if w in self.objects and w != "desklamp"), None)
        if obj is None:
            return None
        rec = None
        for w in reversed(words):
            if w in self.receptacles and w != obj:
                rec = w
                break
        tpl = re.sub(rf"\b{obj}\b", "{obj}", task.lower(), count=1)
        if rec is not None and "desklamp" not in task:
            tpl = re.sub(rf"\b{rec}\b", "{rec}", tpl)
        else:
            rec = None
        return tpl, obj, rec

    def all_tasks(self, numbered: bool = False) -> list[str]:
        """Every (template, object, receptacle) task text, sorted; ``numbered`` adds ``rec N`` variants."""
        out = set()
        for tpl in self.template_list:
            for obj in self.objects:
                if "{rec}" not in tpl:
                    out.add(tpl.format(obj=obj))
                    continue
                for rec in self.receptacles:
                    out.add(tpl.format(obj=obj, rec=rec))
                    if numbered:
                        for num in (1, 2, 3):
                            out.add(tpl.format(obj=obj, rec=f"{rec} {num}"))
        return sorted(out)

    def distinct_tasks(self, n: int, seed: int = 0) -> list[str]:
        """``n`` distinct task texts (plain combinations first, numbered receptacles if more are needed)."""
        plain = self.all_tasks()
        rng = random.Random(seed)
        rng.shuffle(plain)
        if n <= len(plain):
            return plain[:n]
        extra = sorted(set(self.all_tasks(numbered=True)) - set(plain))
        rng.shuffle(extra)
        if n > len(plain) + len(extra):
            raise ValueError(f"only {len(plain) + len(extra)} distinct task texts")
        return plain + extra[: n - len(plain)]

    def trajectory_for(self, task: str, rng: random.Random, episode: int) -> Any:
        """A :class:`memp_cli.model.trajectory.Trajectory` for ``task``: the steps of a real run of the
        same template with the object/receptacle names swapped; ``episode`` makes it distinct."""
        from memp_cli.model.trajectory import Step, Trajectory

        parsed = self._templatize(re.sub(r" \d+\.$", ".", task))
        if parsed is None or parsed[0] not in self.templates:
            src, old_obj, old_rec = rng.choice(self.templates[rng.choice(self.template_list)])
            new_obj, new_rec = old_obj, old_rec
        else:
            tpl, new_obj, new_rec = parsed
            src, old_obj, old_rec = rng.choice(self.templates[tpl])

        def swap(text: str) -> str:
            text = re.sub(rf"\b{old_obj}\b", new_obj, text)
            if old_rec and new_rec:
                text = re.sub(rf"\b{old_rec}\b", new_rec, text)
            return text

        steps = [
            Step(swap(s.get("action", "")), swap(s.get("observation", "")), s.get("thought", ""))
            for s in src.get("steps", [])
        ]
        return Trajectory(
            task=task,
            steps=steps,
            success=src.get("success"),
            reward=src.get("reward"),
            task_id=f"bench/{episode}",
            task_type=src.get("task_type"),
            initial_observation=swap(src.get("initial_observation", "")) + f" [episode {episode}]",
            source="memp benchmark: synthesised from ALFWorld records",
        )


# ------------------------------------------------------------------ embedders
def minilm_ready(timeout: float = 0.0) -> bool:
    """True when ``get_embedder("minilm").embed(["x"])`` works (polls up to ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            from memp_cli.backends.embedders import get_embedder

            get_embedder("minilm").embed(["x"])
            return True
        except Exception as e:
            if time.monotonic() >= deadline:
                print(f"minilm embedder not usable: {type(e).__name__}: {e}", file=sys.stderr)
                return False
            time.sleep(15)


def embed_cached(texts: Sequence[str], name: str = "minilm", *, batch: int = 256, log: bool = True) -> Any:
    """Embeddings of ``texts`` with memp's embedder ``name``, cached on disk by content."""
    import numpy as np

    from memp_cli.backends.embedders import get_embedder

    key = hashlib.sha256(("\n".join(texts) + f"|{name}").encode()).hexdigest()[:16]
    path = WORK / f"emb-{name}-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    emb = get_embedder(name)
    out = np.zeros((len(texts), emb.dim), dtype=np.float32)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        out[i : i + batch] = emb.embed(list(texts[i : i + batch]))
        if log and (i // batch) % 10 == 0:
            done = min(i + batch, len(texts))
            rate = done / (time.perf_counter() - t0)
            print(f"  embedding with {name}: {done}/{len(texts)} ({rate:.0f} texts/s)", file=sys.stderr)
    dt = time.perf_counter() - t0
    if log:
        print(
            f"  embedded {len(texts)} texts with {name} in {dt:.1f} s ({len(texts) / dt:.0f} texts/s)",
            file=sys.stderr,
        )
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


class CachingEmbedder:
    """Wraps a memp embedder: each distinct text is embedded once (vectors unchanged)."""

    def __init__(self, inner: Any, precomputed: dict[str, Any] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.cache: dict[str, Any] = dict(precomputed or {})
        self.embedded = 0

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            vecs = self.inner.embed(missing)
            self.embedded += len(missing)
            self.cache.update(zip(missing, vecs, strict=True))
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)


# -------------------------------------------------------------------- stores
def store_tasks(n: int, distinct: int, seed: int = 0) -> list[str]:
    """Task texts of an ``n``-memory store: ``distinct`` texts, each used about ``n / distinct`` times."""
    synth = AlfworldSynth()
    pool = synth.distinct_tasks(distinct, seed=seed)
    rng = random.Random(seed + 1)
    return [pool[i] if i < len(pool) else rng.choice(pool) for i in range(n)]


def write_memories(
    store_dir: Path, tasks: Sequence[str], *, seed: int = 0, batch: int = 2000, log: bool = True
) -> float:
    """Write one trajectory memory per task into the store with memp's own code; seconds taken."""
    from memp_cli.build.policies import trajectory_memory
    from memp_cli.store import Store

    store = Store.open(store_dir)
    synth = AlfworldSynth()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    with store.lock:
        for start in range(0, len(tasks), batch):
            mems = [
                trajectory_memory(synth.trajectory_for(t, rng, start + j), store)
                for j, t in enumerate(tasks[start : start + batch])
            ]
            store.save_memories(mems, event="bench.write")
            if log and (start // batch) % 10 == 0:
                print(f"  wrote {start + len(mems)}/{len(tasks)} memory files", file=sys.stderr)
    return time.perf_counter() - t0


def fixture_ok(path: Path, params: dict[str, Any]) -> bool:
    marker = path / ".bench-params.json"
    try:
        return orjson.loads(marker.read_bytes()) == params
    except (OSError, orjson.JSONDecodeError):
        return False


def mark_fixture(path: Path, params: dict[str, Any]) -> None:
    (path / ".bench-params.json").write_bytes(orjson.dumps(params))


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
