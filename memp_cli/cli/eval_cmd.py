"""Evaluation commands: ``memp eval replay``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memp_cli.cli import app, output
from memp_cli.cli.commands import JsonOpt
from memp_cli.cli.output import env, open_input

eval_app = typer.Typer(help="Measure memp on recorded runs.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _read(path: str) -> list:
    from memp_cli.ingest import read_jsonl

    stream, name = open_input(path)
    out = []
    try:
        for r in read_jsonl(stream, name):
            if r.error is not None:
                output.warn(f"skipped {r.error}".split("\n")[0])
            elif r.trajectory is not None:
                out.append(r.trajectory)
    finally:
        if stream is not env.stdin:
            stream.close()
    return out


@eval_app.command("replay")
def replay_cmd(
    file: Annotated[str, typer.Argument(help="JSONL runs, in the order they happened; - reads stdin.")],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Runs per batch.", min=1)] = 20,
    update: Annotated[
        list[str] | None,
        typer.Option(
            "--update",
            "-u",
            help="vanilla (every run a memory), validation (successes only), adjustment (successes, "
            "and failures reflected into the memory they used). Repeat to compare.",
        ),
    ] = None,
    prune: Annotated[
        str, typer.Option(help="Run memp prune after each batch: off, on, or both (compare).")
    ] = "off",
    heldout: Annotated[
        str | None, typer.Option(help="JSONL tasks never ingested, queried after each batch.")
    ] = None,
    embedder: Annotated[
        str, typer.Option(help="The scratch store's embedder: hash (fast) or minilm.")
    ] = "hash",
    shuffle: Annotated[
        int | None, typer.Option(help="Shuffle the stream with this seed first (for a file sorted by type).")
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Distill and reflect with this model: builtin (offline) or a litellm model string."
        ),
    ] = "builtin",
    api_base: Annotated[
        str | None,
        typer.Option(envvar="MEMP_API_BASE", help="With --model: the API base URL (a local server)."),
    ] = None,
    utility_weight: Annotated[
        float,
        typer.Option(
            help="The outcome term's weight in ranking (see memp query --utility-weight).", min=0.0, max=1.0
        ),
    ] = 0.0,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="Draw memories and hit rate per batch to this PNG.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Feed recorded runs in batches to a scratch store and measure each update policy (Mem^p).

    Before each batch its tasks query the store (hit: a top-1 memory of the same task type);
    after it the batch updates the store. One row per batch. Offline: the builtin distiller
    and reflector, no key.

    Example: memp eval replay runs.jsonl --batch-size 40 -u vanilla -u adjustment --prune both
    """
    from memp_cli.eval.replay import UPDATES, ReplaySettings, plot, replay

    updates = update or ["adjustment"]
    for u in updates:
        if u not in UPDATES:
            raise typer.BadParameter(f"{u!r} is not one of {', '.join(UPDATES)}", param_hint="--update")
    if prune not in ("off", "on", "both"):
        raise typer.BadParameter(f"{prune!r} is not one of off, on, both", param_hint="--prune")
    if embedder not in ("hash", "minilm"):
        raise typer.BadParameter(f"{embedder!r} is not one of hash, minilm", param_hint="--embedder")
    stream = _read(file)
    if shuffle is not None:
        import random

        random.Random(shuffle).shuffle(stream)
    held = _read(heldout) if heldout else []
    prunes = {"off": [False], "on": [True], "both": [False, True]}[prune]
    results = []
    for u in updates:
        for p in prunes:
            s = ReplaySettings(
                batch_size=batch_size,
                update=u,
                prune=p,
                embedder=embedder,
                utility_weight=utility_weight,
                model=model,
                api_base=api_base or "",
                dim=384 if embedder == "minilm" else 256,
            )
            name = u + (" + prune" if p else "")
            output.info(f"replay: {name}, {len(stream)} runs in batches of {batch_size}")
            res = replay(stream, s, heldout=held)
            results.append(res)
            rows = [{"update": u, "prune": p, **r.to_dict()} for r in res.rows]
            if json_out or not env.stdout_isatty:
                output.emit_json_lines(rows)
            else:
                output.table(
                    ["batch", "seen", "memories", "dups", "hit rate", "held-out", "reflected", "pruned"],
                    (
                        [
                            str(r["batch"]),
                            str(r["seen"]),
                            str(r["memories"]),
                            str(r["duplicates"]),
                            "-" if r["hit_rate"] is None else f"{r['hit_rate']:.2f}",
                            "-" if r["heldout_hit_rate"] is None else f"{r['heldout_hit_rate']:.2f}",
                            str(r["reflected"]),
                            str(r["pruned"]),
                        ]
                        for r in rows
                    ),
                    title=f"replay: {name}",
                )
    if plot_file is not None:
        plot(results, plot_file)
        output.info(f"wrote {plot_file}")
