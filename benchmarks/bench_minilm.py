"""Throughput of the numpy ``minilm`` embedder on task-length texts (~15 words).

Run on one core, as the target (>= 50 texts/s) is stated for one core::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_minilm.py [--model-path DIR] [--texts N]

Prints texts/s for batch size 1 (one embed() call per text) and 32 (one call per 32 texts).
The model comes from ``--model-path``, ``MEMP_MINILM_PATH`` or memp's cache (downloaded if needed).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memp_cli.backends.embedders.minilm import MiniLMEmbedder

_VERBS = ["put", "heat", "cool", "clean", "examine", "find", "look at", "place"]
_OBJECTS = ["mug", "apple", "egg", "potato", "knife", "plate", "book", "alarmclock", "cd", "pencil"]
_PLACES = ["coffeemachine", "fridge", "microwave", "countertop", "shelf", "drawer", "sinkbasin", "desk"]


def task_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` ALFWorld-like task descriptions of about 15 words each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        verb, obj, place = rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)
        num = rng.randint(1, 4)
        out.append(f"Your task is to: {verb} a clean {obj} and then put it in the {place} {num}.")
    return out


def bench(embedder: MiniLMEmbedder, texts: list[str], batch: int) -> float:
    """texts/s of embedding ``texts`` in calls of ``batch`` texts."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="local all-MiniLM-L6-v2 folder")
    parser.add_argument("--texts", type=int, default=256, help="texts per measurement (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per batch size; best is shown")
    args = parser.parse_args(argv)

    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        print("note: set OPENBLAS_NUM_THREADS=1 to measure one core", file=sys.stderr)
    embedder = MiniLMEmbedder(args.model_path)
    t0 = time.perf_counter()
    embedder.load()
    print(f"model load: {time.perf_counter() - t0:.2f} s ({embedder.folder})")
    texts = task_texts(args.texts)
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"texts: {len(texts)}, {words:.1f} words on average, e.g. {texts[0]!r}")
    embedder.embed(texts[:32])  # warm-up
    for batch in (1, 32):
        rate = max(bench(embedder, texts, batch) for _ in range(args.repeat))
        print(f"batch {batch:>2}: {rate:8.1f} texts/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
