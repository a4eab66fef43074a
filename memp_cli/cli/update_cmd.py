"""Update commands: feedback, history, diff, revert, forget, restore, trash."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from memp_cli.cli import app, open_store, output
from memp_cli.cli.commands import JsonOpt, drain, sync_index
from memp_cli.cli.output import env
from memp_cli.errors import ExitCode, InputError

if TYPE_CHECKING:
    from memp_cli.update.history import History

IdsArg = Annotated[list[str], typer.Argument(metavar="ID...", help="Memory ids (see memp list).")]


@app.command()
def feedback(
    memory_ids: IdsArg,
    success: Annotated[
        bool | None,
        typer.Option("--success/--failure", help="How the run that used these memories ended."),
    ] = None,
    trajectory: Annotated[
        str | None,
        typer.Option(
            "--trajectory", "-t", help="The run's id: the same run reported again is not counted twice."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Count one use of each memory and its outcome (for logs without "memories_used").

    Example: memp feedback m1a2b3c4d5e6 --failure --trajectory run-42
    """
    from memp_cli.update.outcomes import Outcome, outcome_of, record

    if success is None:
        raise InputError("say how the run ended: --success or --failure")
    store = open_store("feedback")
    rep = record(
        store, [Outcome(mid, outcome_of(success), trajectory, source="feedback") for mid in memory_ids]
    )
    for mid in rep.unknown_ids:
        output.warn(f"no memory {mid!r} in {store.root}: not counted")
    output.info(
        f"{rep.recorded} outcome{'s' if rep.recorded != 1 else ''} counted, {rep.already} already counted"
    )
    if json_out:
        output.emit_json_lines(
            [{"recorded": rep.recorded, "already": rep.already, "unknown": rep.unknown_ids}]
        )
    if rep.unknown_ids and not rep.recorded and not rep.already:
        raise typer.Exit(int(ExitCode.NOT_FOUND))


def _noticed_history(command: str, memory_id: str) -> History:
    """The history of one memory (the id checked), with a hand edit since its last version
    recorded first."""
    from memp_cli.update.history import History

    store = open_store(command)
    store.memory_path(memory_id)  # validates the id
    h = History(store)
    with store.lock:
        h.notice(memory_id)
    return h


@app.command()
def history(
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="Memory id.")],
    json_out: JsonOpt = False,
) -> None:
    """The versions of a memory: when, by which command or a hand edit, and why.

    Example: memp history m1a2b3c4d5e6
    """
    h = _noticed_history("history", memory_id)
    versions = h.versions(memory_id)
    if not versions:
        raise InputError(f"{memory_id} has no history", hint="see `memp list` for memory ids")
    if json_out or not env.stdout_isatty:
        output.emit_json_lines({"id": memory_id, **v.to_dict()} for v in versions)
        return
    output.table(
        ["version", "time", "by", "why", "size"],
        ([str(v.v), v.time, v.by, v.why or ("deleted" if v.deleted else ""), str(v.size)] for v in versions),
        title=f"history of {memory_id}",
    )


@app.command()
def diff(
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="Memory id.")],
    v1: Annotated[
        str | None, typer.Argument(help="From this version (default: the one before the last).")
    ] = None,
    v2: Annotated[str | None, typer.Argument(help="To this version (default: the last).")] = None,
) -> None:
    """A unified diff between two versions of a memory.

    Example: memp diff m1a2b3c4d5e6 1 3
    """
    from memp_cli.update.history import resolve, unified_diff

    h = _noticed_history("diff", memory_id)
    n = len(h.versions(memory_id))
    a = resolve(h, memory_id, v1, -2 if n > 1 else -1)
    b = resolve(h, memory_id, v2, -1)
    sys.stdout.write(unified_diff(h, memory_id, a, b))


@app.command()
def revert(
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="Memory id.")],
    to: Annotated[str, typer.Option("--to", help="The version whose content comes back (see memp history).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff; change nothing.")] = False,
) -> None:
    """Restore an earlier version byte for byte; the revert is itself a new version.

    Example: memp revert m1a2b3c4d5e6 --to 2
    """
    from memp_cli.update.history import History, resolve, unified_diff

    store = open_store("revert")
    store.memory_path(memory_id)
    h = History(store)
    with store.lock:
        h.notice(memory_id)
        target = resolve(h, memory_id, to, -1)
        if dry_run:
            sys.stdout.write(unified_diff(h, memory_id, h.versions(memory_id)[-1].v, target))
            return
        ver = h.revert(memory_id, target)
        if ver is not None:
            store.journal("memory.revert", ids=[memory_id], to=target, history=ver.v)
    if ver is None:
        output.info(f"{memory_id} already has the content of version {target}")
        return
    output.info(f"{memory_id}: version {ver.v} has the content of version {target}")
    sync_index(store)


@app.command()
def forget(
    memory_ids: IdsArg,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (kept with it in the trash).")] = "",
) -> None:
    """Move memories to the trash: never returned by a query, never rebuilt by distill.

    `memp restore ID` brings one back; `memp trash empty` deletes for good.

    Example: memp forget m1a2b3c4d5e6 -m "wrong procedure for this game version"
    """
    from memp_cli.update import trash

    store = open_store("forget")
    with store.lock:
        trash.check_forgettable(store, memory_ids)
        for mid in memory_ids:
            trash.forget(store, mid, by="memp forget", why=reason)
        store.journal("memory.forget", ids=memory_ids, reason=reason)
    output.info(f"moved {len(memory_ids)} memor{'ies' if len(memory_ids) != 1 else 'y'} to the trash")
    sync_index(store)


@app.command()
def restore(memory_ids: IdsArg) -> None:
    """Bring memories back from the trash, whole (a new version in their history).

    Example: memp restore m1a2b3c4d5e6
    """
    from memp_cli.update import trash

    store = open_store("restore")
    with store.lock:
        trash.check_restorable(store, memory_ids)
        for mid in memory_ids:
            trash.restore(store, mid)
        store.journal("memory.restore", ids=memory_ids)
    output.info(f"restored {len(memory_ids)} memor{'ies' if len(memory_ids) != 1 else 'y'}")
    sync_index(store)


trash_app = typer.Typer(help="The trash: forgotten and pruned memories.", no_args_is_help=True)
app.add_typer(trash_app, name="trash")


@trash_app.command("list")
def trash_list(json_out: JsonOpt = False) -> None:
    """What is in the trash, when it went there, by what and why."""
    from memp_cli.update import trash

    store = open_store("trash list")
    rows = trash.entries(store)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(e.to_dict() for e in rows)
        return
    output.table(["id", "time", "by", "why"], ([e.id, e.time, e.by, e.why] for e in rows), title="trash")


@trash_app.command("empty")
def trash_empty(
    memory_ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Only these.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete memories in the trash for good (their history stays)."""
    from memp_cli.update import trash

    store = open_store("trash empty")
    n = len(memory_ids) if memory_ids else len(trash.trashed_ids(store))
    if not n:
        output.info("the trash is empty")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"this deletes {n} memories for good: add --yes to confirm")
        typer.confirm(f"Delete {n} memories in the trash for good?", abort=True, err=True)
    with store.lock:
        removed = trash.empty(store, memory_ids or None)
        store.journal("trash.empty", ids=removed)
    output.info(f"deleted {len(removed)} memories from the trash")


@app.command()
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and why; change nothing.")
    ] = False,
    rule: Annotated[
        list[str] | None,
        typer.Option(
            "--rule", "-r", help="Only these rules: failing, duplicate, stale, capacity (repeatable)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Merge each group of duplicates' scripts with this litellm model (default: keep the best-rated text)."
        ),
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="With --model: the API base URL (e.g. a local server).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Discard memories by the rules in memp.toml [prune]; each goes to the trash with its reason.

    Example: memp prune --dry-run
    """
    from memp_cli.update.prune import RULES, apply, plan

    only = tuple(rule) if rule else RULES
    for r in only:
        if r not in RULES:
            raise typer.BadParameter(
                f"unknown rule {r!r}; choose from {', '.join(RULES)}", param_hint="--rule"
            )
    store = open_store("prune")
    rules = store.config.prune
    with store.lock:
        idx = sync_index(store)
        decisions = plan(store, idx, rules, only=only)
        if not dry_run and not (model and model != "builtin"):
            apply(store, decisions)
    if not dry_run and model and model != "builtin":
        from memp_cli.update.prune import llm_merges

        merged = llm_merges(store, decisions, model, api_base=api_base)  # no lock during calls
        for why in merged.failed:
            output.warn(why)
        with store.lock:
            still = {d.id for d in plan(store, sync_index(store), rules, only=only)}
            decisions = [d for d in decisions if d.id in still]  # what changed meanwhile waits
            apply(store, decisions, merged)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines({**d.to_dict(), "dry_run": dry_run} for d in decisions)
    elif decisions:
        output.table(
            ["id", "rule", "why"],
            ([d.id, d.rule, d.reason] for d in decisions),
            title="would prune" if dry_run else "pruned (in the trash: memp restore ID)",
        )
    counts = ", ".join(f"{sum(1 for d in decisions if d.rule == r)} {r}" for r in only)
    verb = "would move" if dry_run else "moved"
    output.info(f"prune: {verb} {len(decisions)} memories to the trash ({counts})")
    if decisions and not dry_run:
        sync_index(store)


@app.command()
def reflect(
    trajectory_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[TID]...", help="Only these failed runs (default: every failure not reflected on)."
        ),
    ] = None,
    memory: Annotated[str | None, typer.Option("--memory", "-m", help="Only this memory.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="builtin (offline, the default) or any litellm model string (default: [llm] model)."
        ),
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="With --model: the API base URL (e.g. a local server).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print each change as a diff; write nothing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Correct memories from the failed runs that used them (the paper's adjustment).

    A failed run whose "memories_used" (or `memp feedback --failure -t RUN`) names a memory is
    compared with a successful run of a similar task; what went wrong becomes pitfalls and
    steps the success took are added (builtin), or a model revises the script (--model). Under
    [update] policy = "adjustment", a failed run that named no memory corrects the nearest
    successful procedure of its task family. The memory gets a new version (`memp history ID`);
    a bad model reply changes nothing.

    Example: memp reflect --dry-run
    """
    import dataclasses
    import difflib

    from memp_cli.update.reflect import pending
    from memp_cli.update.reflect import reflect as run_reflect

    store = open_store("reflect")
    if memory is not None:
        store.memory_path(memory)
    todo = pending(
        store,
        trajectories=set(trajectory_ids) if trajectory_ids else None,
        memory=memory,
        unattributed=store.config.update.policy == "adjustment",
    )
    use_model = model or store.config.llm.model
    report = run_reflect(store, todo, dry_run=dry_run, model=use_model, api_base=api_base)
    for why in report.skipped:
        output.warn(why)
    if json_out or (not env.stdout_isatty and not dry_run):
        output.emit_json_lines(r.to_dict() for r in report.reflections)
    elif dry_run:
        for r in report.reflections:
            if not r.changed:
                continue
            mem = store.load_memory(r.memory_id)
            new = dataclasses.replace(mem, script=r.after, version=mem.version + 1)
            sys.stdout.writelines(
                difflib.unified_diff(
                    mem.to_toml().splitlines(keepends=True),
                    new.to_toml().splitlines(keepends=True),
                    fromfile=f"{r.memory_id} (now)",
                    tofile=f"{r.memory_id} (after reflecting on {r.trajectory_id})",
                )
            )
    verb = "would change" if dry_run else "changed"
    changed = sum(1 for r in report.reflections if r.changed)
    output.info(
        f"reflect: {len(todo)} failed uses to reflect on, {verb} {changed} memor{'ies' if changed != 1 else 'y'}, "
        f"{report.unchanged} with nothing to learn, {len(report.skipped)} skipped"
        + (
            f"; {report.calls} model calls, {report.tokens_in:,} tokens in / {report.tokens_out:,} out"
            if report.calls
            else ""
        )
    )
    if report.written:
        sync_index(store)


@app.command()
def cycle(
    files: Annotated[
        list[str] | None, typer.Argument(help="JSONL runs to ingest first; - reads standard input.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Distill with this model (default: the store's [llm] model).")
    ] = None,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Skip the prune step.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """One learning cycle for cron: ingest -> distill -> reflect -> prune, with the store's settings.

    Every step is idempotent, so a cycle that was killed is simply run again.

    Example: MEMP_STORE=/data/memp memp cycle /logs/today.jsonl
    """
    from memp_cli.cli.output import open_input
    from memp_cli.ingest.transcripts import read_input
    from memp_cli.update.cycle import run_cycle

    store = open_store("cycle")
    drain(store)  # sessions a hook queued while the store was busy
    streams = [open_input(p) for p in files or []]
    try:
        rep = run_cycle(
            store,
            (read_input(s, name, "auto")[0] for s, name in streams),  # transcripts too
            model=model,
            prune=not no_prune,
            on_step=lambda name: output.info(f"cycle: {name}..."),
        )
    finally:
        for s, _ in streams:
            if s is not env.stdin:
                s.close()
    d = rep.to_dict()
    if json_out or not env.stdout_isatty:
        output.emit_json_lines([d])
    else:
        i, ds, rf, pr = d["ingest"], d["distill"], d["reflect"] or {}, d["prune"]
        output.table(
            ["step", "result", "seconds"],
            [
                [
                    "ingest",
                    f"{i['added']} new runs, {i['duplicates']} already stored, {i['outcomes']} outcomes counted",
                    f"{d['seconds'].get('ingest', 0):.1f}",
                ],
                [
                    "distill",
                    f"{ds['written']} memories written, {ds['failed']} failed, {ds['pending']} pending",
                    f"{d['seconds'].get('distill', 0):.1f}",
                ],
                [
                    "reflect",
                    f"{rf.get('written', 0)} memories corrected from {rf.get('reflected', 0)} failures",
                    f"{d['seconds'].get('reflect', 0):.1f}",
                ],
                [
                    "prune",
                    f"{pr['moved_to_trash']} moved to the trash",
                    f"{d['seconds'].get('prune', 0):.1f}",
                ],
            ],
            title=f"memp cycle: {store.root}",
        )
    for r in rep.ingested:
        for e in r.errors[:20]:
            output.warn(f"skipped {e}".split("\n")[0])
