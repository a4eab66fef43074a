"""Throughput and per-call overhead of memp's LLM layer (litellm + retries + cache), offline.

A local OpenAI-compatible server (tests/llm_server.py) answers every request after a fixed
delay. N calls to :func:`memp_cli.backends.llm.complete` go through a thread pool; the ideal rate is
workers / delay. A second run with no delay and one worker measures what memp + litellm +
httpx cost per call on their own (the server's share is tiny).

    python benchmarks/bench_llm_overhead.py [--calls 200] [--workers 16] [--delay 0.2]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llm_server import serve  # noqa: E402

from memp_cli.backends import llm  # noqa: E402


def _messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Summarise the trajectory as a procedure."},
        {"role": "user", "content": f"trajectory {i}: open the file, fix the bug, run the tests"},
    ]


def _run(
    url: str, calls: int, workers: int, cache: llm.ResponseCache | None = None
) -> tuple[float, list[float]]:
    settings = llm.LLMSettings("openai/test-model", api_base=url, timeout=30.0)
    latencies: list[float] = []

    def one(i: int) -> None:
        t0 = time.perf_counter()
        llm.complete(_messages(i), settings, cache=cache)
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(calls)))
    return time.perf_counter() - t0, latencies


def _ms(xs: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else 1000 * xs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")

    t0 = time.perf_counter()
    llm.client._litellm()
    print(f"litellm import + setup: {time.perf_counter() - t0:.2f} s (once per process)")

    with serve(delay=0.0) as server:
        _run(server.url, 20, 1)  # warm up: client creation, first-call paths
        wall, lat = _run(server.url, args.calls, 1)
        per_call = wall / args.calls
        print(
            f"overhead, 1 worker, no server delay: {1000 * per_call:.2f} ms/call "
            f"(p50 {_ms(lat, 50):.2f} ms, p95 {_ms(lat, 95):.2f} ms) -> at most {1 / per_call:.0f} calls/s a core"
        )
        with tempfile.TemporaryDirectory() as tmp:
            cache = llm.ResponseCache(tmp)
            _run(server.url, args.calls, 1, cache)
            wall_hit, _ = _run(server.url, args.calls, 1, cache)
            print(f"cache hit: {1e6 * wall_hit / args.calls:.0f} us/call")

    with serve(delay=args.delay) as server:
        _run(server.url, args.workers, args.workers)  # warm up the connection pool
        wall, lat = _run(server.url, args.calls, args.workers)
        rate = args.calls / wall
        ideal = args.workers / args.delay if args.delay > 0 else float("inf")
        over = [x - args.delay for x in lat]
        print(
            f"throughput, {args.workers} workers, {1000 * args.delay:.0f} ms server delay, {args.calls} calls: "
            f"{rate:.1f} calls/s vs ideal {ideal:.1f} ({100 * rate / ideal:.0f}%), wall {wall:.2f} s"
        )
        print(
            f"  latency minus server delay: mean {1000 * statistics.fmean(over):.1f} ms, "
            f"p50 {_ms(over, 50):.1f} ms, p95 {_ms(over, 95):.1f} ms"
        )


if __name__ == "__main__":
    main()
