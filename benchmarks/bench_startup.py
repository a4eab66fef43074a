"""Start-up cost: `memp --help` as a fresh process, against a bare interpreter.

Target: `memp --help` within 4x a bare `python -c pass`, both medians of fresh processes in the same
run (a ratio, so a busy machine slows both alike). The script also
times `--version` and a subcommand's help, the same with typer's plain (non-rich) help formatter
(`TYPER_USE_RICH=0`, to show what rich help rendering costs), and reports the imports that dominate
(`python -X importtime`), and a what-if: the same `--help` from a temporary copy of memp_cli whose
Typer apps pass `rich_markup_mode=None` (click's plain help). Variants run round-robin so
machine-load drift hits them alike.

::

    python benchmarks/bench_startup.py [--quick] [--reps N] [--compare DIR]

``--compare DIR`` also times ``memp --help`` and ``import memp_cli.cli`` from another checkout (a
git worktree of an older commit, say), in the same round-robin: before and after in one run.

Writes ``benchmarks/results/bench_startup.json``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_RATIO = 4.0  # `memp --help` over `python -c pass`


def _plain_help_copy() -> Path | None:
    """A temporary copy of memp_cli whose Typer apps use click's plain help (no rich), or None if
    the source already does that. Shows what the one-argument change would save."""
    import re
    import shutil
    import tempfile

    src = C.REPO / "memp_cli"
    cli_files = list((src / "cli").glob("*.py"))
    if any("rich_markup_mode=None" in f.read_text() for f in cli_files):
        return None
    dest = Path(tempfile.mkdtemp(prefix="memp-bench-plainhelp-"))
    shutil.copytree(src, dest / "memp_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for f in (dest / "memp_cli" / "cli").glob("*.py"):
        f.write_text(re.sub(r"typer\.Typer\(", "typer.Typer(rich_markup_mode=None, ", f.read_text()))
    return dest


def _time_interleaved(
    variants: dict[str, tuple[list[str], dict[str, str] | None]], n: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds of each variant, run round-robin (as ``C.time_interleaved``)."""
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(-warmup, n):
        for name, (argv, env) in variants.items():
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            C.run(argv, env=env)
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= 0:
                wall[name].append(dt)
                cpu[name].append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 runs per variant instead of 15")
    ap.add_argument("--reps", type=int, help="runs per variant")
    ap.add_argument("--compare", type=Path, help="another checkout of memp to time alongside")
    a = ap.parse_args()
    reps = a.reps or (5 if a.quick else 15)
    py = sys.executable
    env = C.memp_env()
    env_plain = C.memp_env(TYPER_USE_RICH="0")
    env_nobc = C.memp_env(PYTHONDONTWRITEBYTECODE="1")
    memp = C.memp_argv()
    C.run([*memp, "--help"], env=env)  # writes memp_cli's bytecode caches if missing
    variants: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "python -c pass": ([py, "-c", "pass"], env),
        "python -c 'import memp_cli.cli'": ([py, "-c", "import memp_cli.cli"], env),
        "memp --help": ([*memp, "--help"], env),
        "memp --version": ([*memp, "--version"], env),
        "memp query --help": ([*memp, "query", "--help"], env),
        "memp --help (TYPER_USE_RICH=0)": ([*memp, "--help"], env_plain),
        "memp --help (PYTHONDONTWRITEBYTECODE=1)": ([*memp, "--help"], env_nobc),
    }
    if a.compare is not None:
        other = C.memp_env(PYTHONPATH=str(a.compare.resolve()))
        C.run([*memp, "--help"], env=other)
        variants[f"{a.compare.name}: memp --help"] = ([*memp, "--help"], other)
        variants[f"{a.compare.name}: python -c 'import memp_cli.cli'"] = (
            [py, "-c", "import memp_cli.cli"],
            other,
        )
    whatif = _plain_help_copy()
    if whatif is not None:
        variants["what-if: Typer(rich_markup_mode=None), memp --help"] = (
            [*memp, "--help"],
            C.memp_env(PYTHONPATH=str(whatif)),
        )
    script = C.console_script()
    if script:
        variants["console script: memp --help"] = ([script, "--help"], env)
    try:
        times, cpu = _time_interleaved(variants, reps)
    finally:
        if whatif is not None:
            C.reset_dir(whatif)
    res: dict[str, Any] = {"target_ratio": TARGET_RATIO, "reps": reps, "memp_argv": memp, "timings_ms": {}}
    base = C.summary(times["python -c pass"])["median"]
    help_med = C.summary(times["memp --help"])["median"]
    print(
        f"fresh processes, {reps} runs each (round-robin); median / p90 / min ms, median minus and over "
        "`python -c pass`, median over `memp --help`:"
    )
    for name, ts in times.items():
        s = C.summary(ts)
        s["over_baseline_ms"] = round(s["median"] - base, 1)
        s["ratio_to_baseline"] = round(s["median"] / base, 2)
        s["ratio_to_help"] = round(s["median"] / help_med, 2)
        res["timings_ms"][name] = s
        print(
            f"  {s['median']:7.1f} {s['p90']:7.1f} {s['min']:7.1f}   +{s['over_baseline_ms']:6.1f} "
            f"x{s['ratio_to_baseline']:5.2f}  x{s['ratio_to_help']:4.2f}   {name}"
        )
    # CPU time (user + system) of each child: what a busy machine inflates least.
    res["cpu_ms"] = {}
    cpu_base = C.summary(cpu["python -c pass"])["median"]
    print("\nCPU time (user + sys) of the same processes; median ms, ratio to `python -c pass`:")
    for name, ts in cpu.items():
        c = C.summary(ts)
        c["ratio_to_baseline"] = round(c["median"] / cpu_base, 2)
        res["cpu_ms"][name] = c
        print(f"  {c['median']:7.1f}  x{c['ratio_to_baseline']:5.2f}   {name}")
    help_ms = res["timings_ms"]["memp --help"]["median"]
    ratio = res["timings_ms"]["memp --help"]["ratio_to_baseline"]
    res["meets_target"] = ratio <= TARGET_RATIO
    print(
        f"\n`memp --help` median {help_ms:.0f} ms, x{ratio:.2f} `python -c pass` ({base:.0f} ms); "
        f"target <= x{TARGET_RATIO:.1f}: {'MET' if res['meets_target'] else 'MISSED'}"
    )

    it = C.importtime([*memp, "--help"], env=env, top=15)
    res["importtime_help"] = it
    print(f"\n-X importtime for `memp --help`: {it['total_ms']} ms of imports")
    print("  largest cumulative:")
    for name, ms in list(it["largest_cumulative_ms"].items())[:20]:
        print(f"    {ms:7.1f} ms  {name}")
    print("  self time by top-level package:")
    for name, ms in it["self_by_package_ms"].items():
        print(f"    {ms:7.1f} ms  {name}")
    it2 = C.importtime([*memp, "--help"], env=env_plain, top=15)
    res["importtime_help_plain"] = it2
    print(f"  with TYPER_USE_RICH=0: {it2['total_ms']} ms of imports")
    C.write_result("bench_startup_quick" if a.quick else "bench_startup", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
