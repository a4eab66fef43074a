"""``memp eval agent`` on unseen TextWorldExpress games, with and without a store built from
the bundled TWX training runs: the paper's headline measure (success, steps) for memp's builtin agent.

Run (about a minute on one core; needs ``pip install 'memp[agent]'`` and Java 17; the minilm
model is downloaded to ~/.cache/memp on first use)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/eval_agent.py [--games 25] [--seed 1] [--max-steps 50]

What it does, all through the real CLI in a temporary directory:

1. ``memp init`` (default embedder, minilm), ``memp ingest examples/twx/train.jsonl`` (242 runs
   of 8 games, train fold), ``memp distill`` (builtin distiller, proceduralization; the 39
   failed runs are not built, as the default update policy says).
2. ``memp eval agent -m none -m STORE --games N --seed S --max-steps M --json --episodes FILE``:
   N unseen games per game type (TWX test-fold seeds, drawn with S), each played once without
   memory and once with the store's top memory, by the builtin agent with the same seed.

Writes ``benchmarks/results/eval_agent.json``: the command lines, library versions, date, the
rows (success rate, mean steps and mean score per game type and overall, per memory setting)
and the seeds of the games played. The heuristics of the builtin agent were written while
looking at games drawn with ``--seed 0``; the reported run uses another seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "twx" / "train.jsonl"
OUT = REPO / "benchmarks" / "results" / "eval_agent.json"


def memp(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMP_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "memp_cli", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"memp {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", type=int, default=25, help="unseen games per game type")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="memp-eval-agent-") as tmp:
        box = Path(tmp)
        build = ["init", "ingest " + str(TRAIN.relative_to(REPO)), "distill"]
        memp("init", cwd=box)
        memp("ingest", str(TRAIN), cwd=box)
        memp("distill", cwd=box)
        run = [
            "eval", "agent", "-m", "none", "-m", ".memp", "--games", str(a.games), "--seed", str(a.seed),
            "--max-steps", str(a.max_steps), "--json", "--episodes", "episodes.jsonl",
        ]  # fmt: skip
        t0 = time.perf_counter()
        rows = [json.loads(line) for line in memp(*run, cwd=box).splitlines()]
        seconds = time.perf_counter() - t0
        episodes = [json.loads(line) for line in (box / "episodes.jsonl").read_text().splitlines()]
    games: dict[str, list[int]] = {}
    for ep in episodes:
        if ep["memory"] == "none":
            games.setdefault(ep["task_type"], []).append(ep["generation_properties"]["seed"])
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commands": [f"memp {c}" for c in build] + ["memp " + " ".join(run)],
        "versions": {
            "python": platform.python_version(),
            **{p: metadata.version(p) for p in ("memp", "textworld-express")},
        },
        "seconds": round(seconds, 1),
        "rows": rows,
        "game_seeds": games,
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{'game':14} {'memory':7} {'games':>5} {'success':>8} {'steps':>6} {'won in':>6} {'score':>6}")
    for r in sorted(rows, key=lambda r: (r["game"] == "all", r["game"], r["memory"] != "none")):
        mem = "none" if r["memory"] == "none" else "store"
        won = "-" if r["mean_steps_won"] is None else f"{r['mean_steps_won']:.1f}"
        print(
            f"{r['game']:14} {mem:7} {r['episodes']:5d} {r['success_rate']:8.2f} "
            f"{r['mean_steps']:6.1f} {won:>6} {r['mean_score']:6.2f}"
        )
    print(f"wrote {a.out.relative_to(REPO) if a.out.is_relative_to(REPO) else a.out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
