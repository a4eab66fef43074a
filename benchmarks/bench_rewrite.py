"""What keeping comments costs on the write path: rewriting memory files with tomlkit.

A machine rewrite of an existing memory file (``memp edit``, a re-distill) parses the old text
with tomlkit and updates only what changed, so the user's comments survive; a new file is
rendered with tomli_w as before. This times, for ``--n`` memory files built by the rule-based
distiller from the test data (procedure memories: script + steps, ~2-4 KB each):

- ``render``: ``Memory.to_toml()`` (tomli_w), what a new file costs;
- ``rewrite``: ``Memory.to_toml(previous=old_text)`` after a version bump, the old text
  carrying hand comments (tomlkit parse + merge + dump + the read-back check);
- ``rewrite_uncommented``: the same over files exactly as memp wrote them (detected with
  tomllib + tomli_w, no tomlkit: the common re-distill case);
- the same two through ``write_memory_file`` (temp file + rename, no fsync: the distill batch
  path), so the rendering cost is seen next to the file-system cost;
- tomlkit's import (paid once per process, only by a command that rewrites).

::

    python benchmarks/bench_rewrite.py [--n 1000] [--reps 3]

Writes ``benchmarks/results/bench_rewrite.json``.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, write_result

DATA = REPO / "tests" / "data"

FILES = ("distill_alfworld.jsonl", "distill_webshop.jsonl")
COMMENTS = [
    ("# memp memory.", "# reviewed by hand: keep the pitfalls\n# memp memory."),
    ("[stats]\n", "[stats]\n# counts are updated by memp query --record\n"),
]


def _memories(n: int, root: Path) -> list[Any]:
    """``n`` procedure memories: the distinct ones the builtin distiller makes, cycled with new ids."""
    from memp_cli.build.runner import distill
    from memp_cli.config import Config
    from memp_cli.ingest import read_jsonl
    from memp_cli.store import Store

    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = "hash", 256
    store = Store.init(root / "store", cfg)
    lines = b"".join((DATA / f).read_bytes() for f in FILES)
    store.ingest(read_jsonl(io.BytesIO(lines), "bench.jsonl"))
    distill(store, "proceduralization")
    base = [m for m in store.iter_memories() if not isinstance(m, Exception)]
    out = []
    for i in range(n):
        m = base[i % len(base)]
        copy = type(m)(**{**vars(m), "id": f"m{i:06d}"})
        out.append(copy)
    return out


def _hand_commented(text: str) -> str:
    for old, new in COMMENTS:
        text = text.replace(old, new, 1)
    return text


def _best(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="memory files")
    ap.add_argument("--reps", type=int, default=3, help="runs of each; the best is kept")
    args = ap.parse_args()
    n, reps = args.n, args.reps

    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; t = time.perf_counter(); import tomlkit; print(time.perf_counter() - t)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    import_ms = 1000 * float(cp.stdout)

    from memp_cli.model.memory import write_memory_file

    with tempfile.TemporaryDirectory(prefix="memp-bench-rewrite-") as tmp:
        root = Path(tmp)
        mems = _memories(n, root)
        machine_texts = [m.to_toml() for m in mems]
        old_texts = [_hand_commented(t) for t in machine_texts]
        for m in mems:
            m.version += 1
            m.provenance.updated = "2026-01-02T00:00:00Z"
        sizes = [len(t.encode()) for t in old_texts]

        render_s = _best(lambda: [m.to_toml() for m in mems], reps)
        rewrite_s = _best(lambda: [m.to_toml(previous=t) for m, t in zip(mems, old_texts, strict=True)], reps)
        plain_s = _best(
            lambda: [m.to_toml(previous=t) for m, t in zip(mems, machine_texts, strict=True)], reps
        )
        kept = sum(
            all(new in m.to_toml(previous=t) for _, new in COMMENTS)
            for m, t in zip(mems, old_texts, strict=True)
        )

        files = root / "memories"
        files.mkdir()
        paths = [files / f"{m.id}.toml" for m in mems]

        def write_new() -> float:
            for p in paths:
                p.unlink(missing_ok=True)
            t0 = time.perf_counter()
            for m, p in zip(mems, paths, strict=True):
                write_memory_file(p, m, durable=False)
            return time.perf_counter() - t0

        def write_over() -> float:
            for p, t in zip(paths, old_texts, strict=True):
                p.write_text(t, encoding="utf-8")
            t0 = time.perf_counter()
            for m, p in zip(mems, paths, strict=True):
                write_memory_file(p, m, durable=False)
            return time.perf_counter() - t0

        new_s = min(write_new() for _ in range(reps))
        over_s = min(write_over() for _ in range(reps))

    res = {
        "n": n,
        "mean_file_bytes": round(sum(sizes) / n),
        "tomlkit_import_ms": round(import_ms, 1),
        "render_tomli_w_s": round(render_s, 3),
        "rewrite_tomlkit_s": round(rewrite_s, 3),
        "rewrite_over_render": round(rewrite_s / render_s, 1),
        "rewrite_uncommented_s": round(plain_s, 3),
        "per_file_ms": {
            "render": round(1000 * render_s / n, 3),
            "rewrite": round(1000 * rewrite_s / n, 3),
            "rewrite_uncommented": round(1000 * plain_s / n, 3),
        },
        "write_new_files_s": round(new_s, 3),
        "write_over_commented_files_s": round(over_s, 3),
        "comments_kept": f"{kept}/{n}",
    }
    print(f"{n} memory files, {res['mean_file_bytes']} bytes on average")
    print(f"  tomlkit import (once per rewriting process): {import_ms:.0f} ms")
    print(f"  render with tomli_w:         {render_s:.3f} s ({res['per_file_ms']['render']} ms/file)")
    print(
        f"  rewrite with tomlkit:        {rewrite_s:.3f} s ({res['per_file_ms']['rewrite']} ms/file, "
        f"{res['rewrite_over_render']}x)"
    )
    print(
        f"  rewrite of files as memp wrote them (no comment: tomllib + tomli_w check, no tomlkit): "
        f"{plain_s:.3f} s ({res['per_file_ms']['rewrite_uncommented']} ms/file)"
    )
    print(f"  write_memory_file, new files:        {new_s:.3f} s")
    print(f"  write_memory_file, over old files:   {over_s:.3f} s (comments kept in {kept}/{n})")
    write_result("bench_rewrite", res)


if __name__ == "__main__":
    main()
