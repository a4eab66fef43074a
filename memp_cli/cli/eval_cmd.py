"""Evaluation commands: ``memp eval replay``, ``memp eval retrieval`` and ``memp eval agent``."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from memp_cli.cli import G, app, open_store, output
from memp_cli.cli.commands import JsonOpt
from memp_cli.cli.output import env, open_input
from memp_cli.errors import ExitCode

if TYPE_CHECKING:
    from memp_cli.store import Store

eval_app = typer.Typer(
    help="Measure memp: replay recorded runs, or let an agent play new games.", no_args_is_help=True
)
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


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


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

    Before each batch its tasks query the store (hit: a top-1 memory of the same task type;
    also MRR and NDCG@10 of the top 10, grade 2 for the same type and object); after it the
    batch updates the store. One row per batch; P@1 is the hit rate. Offline: the builtin distiller
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
                    [
                        "batch",
                        "seen",
                        "memories",
                        "dups",
                        "P@1",
                        "MRR",
                        "NDCG@10",
                        "held-out P@1",
                        "held-out NDCG@10",
                        "reflected",
                        "pruned",
                    ],
                    (
                        [
                            str(r["batch"]),
                            str(r["seen"]),
                            str(r["memories"]),
                            str(r["duplicates"]),
                            *(_num(r[m]) for m in ("p1", "mrr", "ndcg10", "heldout_p1", "heldout_ndcg10")),
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


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:.2f} [{low:.2f},{high:.2f}]"


@eval_app.command("retrieval")
def retrieval_cmd(
    queries: Annotated[
        str,
        typer.Option(
            "--queries",
            help="JSONL queries with a label or graded relevant ids (a trajectory file works: "
            "task + task_type); - reads stdin.",
        ),
    ],
    k: Annotated[int, typer.Option("-k", "--top", help="Rank cut for P@k, MRR and NDCG@k.", min=1)] = 10,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key", help="Retrieval key: query, avefact or random (default: the store's). Repeat to compare."
        ),
    ] = None,
    embedder: Annotated[
        list[str] | None,
        typer.Option(
            "--embedder",
            help="Embedder (default: the store's). Another one is evaluated on an index built in memory; "
            "the store is not written. Repeat to compare.",
        ),
    ] = None,
    lexical_weight: Annotated[
        list[float] | None,
        typer.Option(
            help="Weight of BM25 in the query key's score, 0..1 (default: the store's). Repeat to compare.",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines",
            help="Also rank by each signal alone, per embedder: BM25 of the task text, the cosine, "
            "and --key random.",
        ),
    ] = False,
    seeds: Annotated[int, typer.Option(help="--key random: average over this many seeds.", min=1)] = 10,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the 95% intervals.", min=100)
    ] = 2000,
    exclude_seen: Annotated[
        bool,
        typer.Option(
            "--exclude-seen/--include-seen",
            help="Leave out queries whose text is a stored memory's task (measure new tasks).",
        ),
    ] = True,
    per_query: Annotated[bool, typer.Option("--per-query", help="Each query's metrics too.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Score retrieval on labelled queries: P@1, P@k, MRR, NDCG@k, fail@1 per key and embedder.

    A query is relevant to the memories of its label (task type; grade 2 when they also name its
    object) or to graded ids (memories, or the trajectories and tasks they were built from). One
    row per embedder x key x lexical weight, means with 95% bootstrap intervals; JSON lines with
    --json or in a pipe. Bad lines are skipped with a warning (exit 3 after the results).

    Example: memp eval retrieval --queries new_tasks.jsonl --key query --key random --embedder hash
    """
    from memp_cli.eval import retrieval as ev
    from memp_cli.model.memory import Memory
    from memp_cli.retrieve.retriever import KEYS

    for kk in key or []:
        if kk not in KEYS:
            raise typer.BadParameter(f"{kk!r} is not one of {', '.join(KEYS)}", param_hint="--key")
    store = open_store("eval retrieval")
    stream, name = open_input(queries)
    try:
        parsed, bad = ev.read_queries(stream, name)
    finally:
        if stream is not env.stdin:
            stream.close()
    for i, e in enumerate(bad):
        if i == 10:
            output.warn(f"... and {len(bad) - i} more bad lines in {name}")
            break
        output.warn(f"skipped {e}".split("\n")[0])
    if bad:
        output.warn(f"hint: {ev.QUERY_HINT}")
    memories = []
    for m in store.iter_memories():
        if isinstance(m, Memory):
            memories.append(ev.MemoryInfo.of(m))
        else:
            output.warn(str(m).split("\n")[0] + " (left out)")
    prepared = ev.judge(
        parsed,
        memories,
        k=k,
        exclude_seen=exclude_seen,
        task_trajectories=lambda: _task_trajectories(store),
        where=name,
    )
    for w in prepared.warnings:
        output.warn(w)
    c = prepared.counts()
    output.info(
        f"{len(prepared.judged)} of {len(parsed)} queries evaluated: {c['seen']} seen "
        f"({'left out' if exclude_seen else 'kept'}), {c['repeated']} repeated, "
        f"{c['no_relevant']} without a relevant memory, {len(bad)} bad lines; {len(memories)} memories"
    )
    if not prepared.judged:
        output.error("no query to evaluate")
        raise typer.Exit(int(ExitCode.BAD_INPUT))
    rc = store.config.retrieval
    weights: list[float | None] = [*lexical_weight] if lexical_weight else [rc.lexical_weight]
    embedders = embedder or [G.embedder or store.config.embedder.name]
    settings = [
        ev.Setting(name, kk, w)
        for name in embedders
        for kk in key or [rc.key]
        for w in (weights if kk == "query" else [None])
    ]
    if baselines:
        for name in embedders:
            settings += [ev.Setting(name, "query", None, b) for b in ev.BASELINES]
            if "random" not in (key or [rc.key]):
                settings.append(ev.Setting(name, "random"))
    rows = []
    for row in ev.run(
        store, prepared.judged, settings, k=k, seeds=seeds, resamples=bootstrap, on_note=output.warn
    ):
        d = {**row.to_dict(per_query=per_query), "left_out": {**c, "bad_lines": len(bad)}}
        if json_out or not env.stdout_isatty:
            output.emit_json_lines([d])
        rows.append(d)
    if rows and not (json_out or not env.stdout_isatty):
        _retrieval_tables(rows, k, per_query)
    if bad:
        output.error(f"{len(bad)} bad line{'s' if len(bad) != 1 else ''} skipped; the others were evaluated")
        raise typer.Exit(int(ExitCode.BAD_INPUT))


def _task_trajectories(store: Store) -> dict[str, list[str]]:
    """task id -> ids of the stored trajectories of that task (read only when an id needs it)."""
    out: dict[str, list[str]] = {}
    for t in store.iter_trajectories():
        if t.task_id:
            out.setdefault(t.task_id, []).append(t.id)
    return out


def _retrieval_tables(rows: list[dict], k: int, per_query: bool) -> None:
    metrics = (("p1", "P@1"), ("pk", f"P@{k}"), ("mrr", "MRR"), ("ndcg", f"NDCG@{k}"), ("fail1", "fail@1"))

    def key_of(r: dict) -> str:
        if r["key"] != "query":
            return r["key"]
        if r.get("baseline"):
            return f"{r['baseline']} alone"
        return f"query w={r['lexical_weight']:g}"

    output.table(
        ["embedder", "key", *(title for _, title in metrics), "n"],
        (
            [
                r["embedder"],
                key_of(r),
                *(_ci(r[m], *r[f"{m}_ci95"]) for m, _ in metrics[:4]),
                f"{r['fail1']:.2f}",
                str(r["queries"]),
            ]
            for r in rows
        ),
        title="retrieval: mean [95% bootstrap interval] over n queries; w: lexical weight",
    )
    if per_query:
        for r in rows:
            output.table(
                ["line", "query", "label", "relevant", *(title for _, title in metrics)],
                (
                    [
                        str(q["line"]),
                        q["query"],
                        str(q["label"] or "-"),
                        str(q["relevant"]),
                        *(f"{q[m]:.2f}" for m, _ in metrics),
                    ]
                    for q in r["per_query"]
                ),
                title=f"{r['embedder']} / {r['key']}"
                + (f" / w={r['lexical_weight']}" if r["lexical_weight"] is not None else ""),
            )


@eval_app.command("agent")
def agent_cmd(
    memory: Annotated[
        list[str] | None,
        typer.Option(
            "--memory",
            "-m",
            help="none, or a store directory. Repeat to compare (default: none and the current store).",
        ),
    ] = None,
    env_name: Annotated[
        str, typer.Option("--env", help="The text environment: twx (TextWorldExpress).")
    ] = "twx",
    game: Annotated[
        list[str] | None,
        typer.Option(
            "--game", "-g", help="A game type (twx: coin, cookingworld, ...). Repeat; default: all."
        ),
    ] = None,
    games: Annotated[int, typer.Option("--games", "-n", help="Unseen games per game type.", min=1)] = 5,
    seed: Annotated[int, typer.Option(help="Picks the games and seeds the builtin agent.")] = 0,
    max_steps: Annotated[int, typer.Option(help="Actions per game before it counts as failed.", min=1)] = 50,
    model: Annotated[
        str,
        typer.Option(help="The agent: builtin (deterministic, offline) or a litellm model string."),
    ] = "builtin",
    api_base: Annotated[
        str | None,
        typer.Option(envvar="MEMP_API_BASE", help="With --model: the API base URL (a local server)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(envvar="MEMP_LLM_TIMEOUT", help="With --model: seconds per request.", min=1.0)
    ] = 60.0,
    k: Annotated[int, typer.Option("-k", "--k", help="Memories retrieved per game.", min=1)] = 1,
    episodes_file: Annotated[
        Path | None,
        typer.Option(
            "--episodes", help="Write every game played as a trajectory (JSONL; memp ingest reads it)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Let an agent play unseen games with and without memory: success rate and steps per game type.

    Each memory setting plays the same games (test-fold seeds, never in a training run) with the
    same agent seed. Before a game its task queries the store as memp query does, with the
    store's embedder and [retrieval] settings; the top -k memories go to the agent. --model
    builtin follows the retrieved steps, filling in the new game's objects, and explores at
    random without memory; a litellm model gets a ReAct prompt with the memory block. Needs
    pip install 'memp[agent]' and Java 17 (exit 4 without them).

    Example: memp eval agent -m none -m .memp --game coin --game simonsays --games 20 --json
    """
    from contextlib import ExitStack

    import orjson

    from memp_cli.cli import G, store_path
    from memp_cli.eval.agent import (
        NONE,
        AgentSettings,
        Episode,
        MemorySetting,
        Recall,
        open_environment,
        run,
    )

    settings = AgentSettings(
        games=list(game or []),
        per_game=games,
        seed=seed,
        max_steps=max_steps,
        model=model,
        api_base=api_base,
        timeout=timeout,
        k=k,
    )
    labels = memory or [NONE, str(store_path())]
    settings_list = [
        MemorySetting(NONE)
        if m == NONE
        else MemorySetting(m, Recall(Path(m), k=k, wait=G.wait, on_note=output.warn))
        for m in labels
    ]
    out: list[IO[bytes]] = []

    def played(ep: Episode) -> None:
        end = f"won in {len(ep.steps)} steps" if ep.won else f"not won ({len(ep.steps)} steps)"
        output.info(f"agent: {ep.game} seed {ep.seed}, memory {ep.memory}: {end}")
        for f in out:
            f.write(orjson.dumps(ep.to_trajectory()) + b"\n")

    with ExitStack() as stack:
        if episodes_file is not None:
            out.append(stack.enter_context(episodes_file.open("wb")))
        environment = open_environment(env_name)
        stack.callback(environment.close)
        result = run(environment, settings, settings_list, on_episode=played, on_note=output.warn)
    rows = [s.to_dict() for s in result.summaries]
    if result.usage.calls:
        cost = "" if result.usage.cost_usd is None else f", ${result.usage.cost_usd:.4f}"
        output.info(
            f"agent: {result.usage.calls} LLM calls, {result.usage.tokens_in} tokens in, "
            f"{result.usage.tokens_out} out{cost}"
        )
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(rows)
        return
    order = {g: i for i, g in enumerate(dict.fromkeys(r["game"] for r in rows))}
    output.table(
        ["game", "memory", "games", "success", "mean steps", "steps when won", "mean score"],
        (
            [
                r["game"],
                r["memory"],
                str(r["episodes"]),
                f"{r['success_rate']:.2f}",
                f"{r['mean_steps']:.1f}",
                "-" if r["mean_steps_won"] is None else f"{r['mean_steps_won']:.1f}",
                f"{r['mean_score']:.2f}",
            ]
            for r in sorted(rows, key=lambda r: order[r["game"]])
        ),
        title=f"eval agent: {env_name}, model {model}, max {max_steps} steps",
    )
