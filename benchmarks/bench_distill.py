"""Distill throughput and memp's own overhead per trajectory, against a local LLM server.

A local OpenAI-compatible server (tests/llm_server.py, run as a separate process so it does
not share memp's GIL) answers every chat request with a valid script after a fixed delay.
Trajectories: real ALFWorld and WebShop runs from ``shared/data`` (``--n`` of them, half each).

Measured (``memp distill --policy script --model openai/test-model --api-base <server>``):

1. Throughput: ``--concurrency 16`` with a 200 ms server delay, in-process after litellm is
   imported (steady state), and as a fresh ``memp distill`` process (what a cron job sees,
   litellm's import included). Ideal: 16 / 0.2 s = 80 trajectories/s. Target: >= 50/s.
2. Overhead: no server delay, ``--concurrency 1``. The same requests sent by a bare loop of
   ``llm.complete_json`` (litellm + HTTP + server) give the baseline; memp's own overhead per
   trajectory is the distill's wall time per trajectory minus that. Also: the time the store
   lock is held per memory written, and the cost of the pure-Python steps (prompt, validation,
   memory) measured alone. Target: < 5 ms a trajectory.
3. A rerun after deleting the memories: every reply from the response cache (no request).
4. The builtin distiller (no LLM) for comparison.

    python benchmarks/bench_distill.py [--n 400] [--delay 0.2] [--concurrency 16]

Prints figures, writes benchmarks/results/bench_distill.json. Needs no network and no key.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DATA, REPO, memp_env, write_result

sys.path.insert(0, str(REPO / "tests"))

MODEL = "openai/test-model"
KEY = "sk-bench-0123456789"
FILES = ("alfworld_train_replay.jsonl", "webshop_react_fixed100_499.jsonl")


# --------------------------------------------------------------------------- the server process


def _script_reply(body: dict[str, Any]) -> str:
    task = "the task"
    for m in body.get("messages", []):
        if m.get("role") == "user" and "Task: " in m.get("content", ""):
            task = m["content"].split("Task: ", 1)[1].split("\n", 1)[0]
            break
    return json.dumps(
        {
            "title": f"do: {task}"[:200],
            "steps": ["1. find the {object}", "2. take the {object}", "3. finish the task"],
            "variables": {"object": task.split()[-1] if task.split() else "x"},
            "preconditions": ["the {object} is reachable"],
            "pitfalls": ["do not repeat a failed action"],
            "keywords": ["alpha", "beta"],
        }
    )


def serve_main(delay: float) -> None:
    """``--serve``: run the scripted server and print its URL (the parent reads it)."""
    from llm_server import LLMServer

    server = LLMServer(delay=delay, default=_script_reply).start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.stop()


class ServerProcess:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- stores


def _records(n: int) -> list[bytes]:
    half = n // 2
    out: list[bytes] = []
    for name, want in zip(FILES, (half, n - half), strict=True):
        lines = [ln for ln in (DATA / name).read_bytes().splitlines() if ln.strip()]
        out.extend(lines[:want])
    return out


def make_template(root: Path, n: int) -> Path:
    """A store with ``n`` trajectories ingested and nothing distilled."""
    from memp_cli.config import Config
    from memp_cli.ingest import read_jsonl
    from memp_cli.store import Store

    cfg = Config()
    cfg.embedder.name, cfg.embedder.dim = "hash", 256
    store = Store.init(root / "template", cfg)
    import io

    rep = store.ingest(read_jsonl(io.BytesIO(b"\n".join(_records(n)) + b"\n"), "bench.jsonl", "auto"))
    print(f"store: {rep.added} trajectories ingested ({rep.duplicates} duplicates, {rep.bad} bad)")
    return store.root


def fresh(template: Path, root: Path, name: str) -> Path:
    dest = root / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(template, dest)
    return dest


def open_store(path: Path) -> Any:
    from memp_cli.store import Store

    return Store.open(path)


# --------------------------------------------------------------------------- measurements


def run_inprocess(path: Path, url: str, concurrency: int, policy: str = "script", model: str = MODEL) -> Any:
    from memp_cli.build.runner import distill

    store = open_store(path)
    t0 = time.perf_counter()
    rep = distill(store, policy, model=model, api_base=url, concurrency=concurrency)
    wall = time.perf_counter() - t0
    assert rep.failed == 0 and rep.error is None, rep.failures[:3]
    return rep, wall


def run_cli(path: Path, url: str, concurrency: int) -> tuple[dict[str, Any], float]:
    env = memp_env(OPENAI_API_KEY=KEY, MEMP_STORE=str(path))
    argv = [sys.executable, "-m", "memp_cli", "distill", "--policy", "script", "--model", MODEL]
    argv += ["--api-base", url, "--concurrency", str(concurrency), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    return json.loads(proc.stdout.splitlines()[-1]), wall


def baseline_calls(path: Path, url: str) -> float:
    """Seconds per request for a bare loop of llm.complete_json on the same prompts (no cache)."""
    from memp_cli.backends import llm
    from memp_cli.build.prompting import load_prompt, script_messages
    from memp_cli.build.runner import PROMPT_MAX_STEPS
    from memp_cli.model.script import script_from_reply

    store = open_store(path)
    prompt = load_prompt("script")
    settings = llm.LLMSettings(MODEL, api_base=url, max_tokens=1500)
    trajs = list(store.iter_trajectories())
    msgs = [script_messages(t, prompt, max_steps=PROMPT_MAX_STEPS, max_obs_chars=300) for t in trajs]
    t0 = time.perf_counter()
    for m in msgs:
        llm.complete_json(m, settings, validate=script_from_reply, json_mode=True)
    return (time.perf_counter() - t0) / len(msgs)


def local_steps(path: Path) -> dict[str, float]:
    """ms per trajectory of memp's pure-Python work around the call, measured alone."""
    from memp_cli.backends.llm import extract_json
    from memp_cli.build.policies import script_memory
    from memp_cli.build.prompting import load_prompt, script_messages
    from memp_cli.build.runner import PROMPT_MAX_STEPS
    from memp_cli.model.script import script_from_reply

    store = open_store(path)
    prompt = load_prompt("script")
    trajs = list(store.iter_trajectories())
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    msgs = [script_messages(t, prompt, max_steps=PROMPT_MAX_STEPS, max_obs_chars=300) for t in trajs]
    out["prompt_ms"] = 1000 * (time.perf_counter() - t0) / len(trajs)
    replies = [_script_reply({"messages": m}) for m in msgs]
    t0 = time.perf_counter()
    scripts = [script_from_reply(extract_json(r)) for r in replies]
    out["validate_ms"] = 1000 * (time.perf_counter() - t0) / len(trajs)
    t0 = time.perf_counter()
    mems = [
        script_memory(t, s, store, policy="script", model=MODEL, prompt_version=prompt.version)
        for t, s in zip(trajs, scripts, strict=True)
    ]
    out["memory_ms"] = 1000 * (time.perf_counter() - t0) / len(trajs)
    t0 = time.perf_counter()
    for m in mems:
        m.to_toml()
    out["toml_ms"] = 1000 * (time.perf_counter() - t0) / len(trajs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="trajectories (half ALFWorld, half WebShop)")
    ap.add_argument("--delay", type=float, default=0.2, help="server delay for the throughput run (s)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args.delay)
        return
    os.environ["OPENAI_API_KEY"] = KEY
    from memp_cli.backends import llm

    t0 = time.perf_counter()
    llm._litellm()
    import_s = time.perf_counter() - t0
    print(f"litellm import: {import_s:.2f} s (once per process)")
    results: dict[str, Any] = {"n": args.n, "delay_s": args.delay, "concurrency": args.concurrency}
    results["litellm_import_s"] = round(import_s, 3)

    with tempfile.TemporaryDirectory(prefix="memp-bench-distill-") as tmp:
        root = Path(tmp)
        template = make_template(root, args.n)
        n = sum(1 for _ in open_store(template).iter_trajectories())
        results["trajectories"] = n

        # 1. throughput at the given delay and concurrency
        server = ServerProcess(args.delay)
        try:
            warm = fresh(template, root, "warm")
            from memp_cli.build.runner import distill

            distill(open_store(warm), "script", model=MODEL, api_base=server.url, limit=args.concurrency,
                    concurrency=args.concurrency)  # fmt: skip
            rep, wall = run_inprocess(fresh(template, root, "tput"), server.url, args.concurrency)
            ideal = args.concurrency / args.delay if args.delay else float("inf")
            rate = rep.written / wall
            print(
                f"throughput, in-process, --concurrency {args.concurrency}, {1000 * args.delay:.0f} ms server "
                f"delay: {rate:.1f} trajectories/s for {rep.written} (ideal {ideal:.0f}/s, "
                f"{100 * rate / ideal:.0f}%), wall {wall:.2f} s"
            )
            results["throughput_inprocess"] = {
                "trajectories_per_s": round(rate, 2),
                "ideal_per_s": ideal,
                "share_of_ideal": round(rate / ideal, 3),
                "wall_s": round(wall, 3),
                "written": rep.written,
                "lock_ms_per_memory": round(1000 * rep.lock_seconds / max(rep.written, 1), 3),
            }
            summary, cli_wall = run_cli(fresh(template, root, "cli"), server.url, args.concurrency)
            cli_rate = summary["written"] / cli_wall
            print(
                f"throughput, `memp distill` process: {cli_rate:.1f} trajectories/s end to end "
                f"(wall {cli_wall:.2f} s incl. interpreter start, litellm import and index sync; "
                f"distill itself {summary['seconds']:.2f} s -> {summary['written'] / summary['seconds']:.1f}/s)"
            )
            results["throughput_cli"] = {
                "trajectories_per_s_end_to_end": round(cli_rate, 2),
                "wall_s": round(cli_wall, 3),
                "distill_seconds": summary["seconds"],
                "trajectories_per_s_distill": round(summary["written"] / summary["seconds"], 2),
            }
        finally:
            server.close()

        # 2. overhead: no delay, one at a time
        server = ServerProcess(0.0)
        try:
            per_call = baseline_calls(fresh(template, root, "base"), server.url)
            rep, wall = run_inprocess(fresh(template, root, "over"), server.url, 1)
            per_traj = wall / rep.written
            own = per_traj - per_call
            lock_ms = 1000 * rep.lock_seconds / rep.written
            print(
                f"overhead, --concurrency 1, no server delay: {1000 * per_traj:.2f} ms a trajectory; a bare "
                f"llm.complete_json loop on the same prompts (litellm + HTTP + server): {1000 * per_call:.2f} ms "
                f"-> memp's own overhead {1000 * own:.2f} ms a trajectory"
            )
            print(f"  store lock held per memory written: {lock_ms:.3f} ms")
            steps = local_steps(template)
            print(
                "  pure-Python steps alone, ms a trajectory: "
                + ", ".join(f"{k[:-3]} {v:.3f}" for k, v in steps.items())
            )
            results["overhead"] = {
                "distill_ms_per_trajectory": round(1000 * per_traj, 3),
                "bare_complete_json_ms_per_call": round(1000 * per_call, 3),
                "memp_own_ms_per_trajectory": round(1000 * own, 3),
                "lock_ms_per_memory": round(lock_ms, 3),
                "local_steps_ms": {k: round(v, 3) for k, v in steps.items()},
            }

            # 3. rerun from the cache
            path = root / "over"
            for p in (path / "memories").glob("*.toml"):
                p.unlink()
            rep, wall = run_inprocess(path, server.url, 1)
            assert rep.calls == 0 and rep.cached_calls == rep.written, rep.to_dict()
            print(
                f"rerun from the response cache: {rep.written / wall:.0f} trajectories/s, "
                f"{rep.calls} requests, {rep.tokens_in} tokens"
            )
            results["cache_rerun"] = {
                "trajectories_per_s": round(rep.written / wall, 1),
                "requests": rep.calls,
            }
        finally:
            server.close()

        # 4. builtin, for comparison
        rep, wall = run_inprocess(fresh(template, root, "builtin"), "", 1, "proceduralization", "builtin")
        print(f"builtin proceduralization (no LLM): {rep.written / wall:.0f} trajectories/s")
        results["builtin_per_s"] = round(rep.written / wall, 1)

    ok_rate = results["throughput_inprocess"]["trajectories_per_s"] >= 50
    ok_over = results["overhead"]["memp_own_ms_per_trajectory"] < 5
    print(
        f"\ntargets: >= 50 trajectories/s at --concurrency 16: {'yes' if ok_rate else 'NO'}; "
        f"memp's own overhead < 5 ms a trajectory: {'yes' if ok_over else 'NO'}"
    )
    results["targets_met"] = {"throughput": ok_rate, "overhead": ok_over}
    write_result("bench_distill", results)


if __name__ == "__main__":
    main()
