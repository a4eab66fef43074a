"""Store commands: init, ingest, distill, list, show, edit, stats."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from memp_cli import index as index_mod
from memp_cli.build.policies import BUILTIN_MODEL, POLICIES, resolve_policy
from memp_cli.build.runner import MAX_CONCURRENCY, DistillReport, Failure, distill
from memp_cli.cli import G, app, choice, open_store, output, store_path
from memp_cli.cli.output import env, open_input
from memp_cli.config import Config
from memp_cli.errors import ExitCode, InputError, MemoryFileError, NotFoundError, StoreError
from memp_cli.index.entry import Fresh, Scan
from memp_cli.ingest import FORMATS
from memp_cli.ingest.transcripts import FORMATS as TRANSCRIPT_FORMATS
from memp_cli.model.memory import KINDS, Memory, memory_from_toml, read_memory_bytes
from memp_cli.redact import shown
from memp_cli.store import Store, store_embedder

MAX_SHOWN_ERRORS = 20
TERMINAL_LIST_LIMIT = 50  # rows `memp list` prints in a table unless --limit says otherwise

INGEST_FORMATS = (*FORMATS, *TRANSCRIPT_FORMATS)

JsonOpt = Annotated[bool, typer.Option("--json", "--nl", help="Output JSON lines on stdout.")]


def redacted_note(counts: Mapping[str, int]) -> str:
    """``, 3 secrets redacted (2 openai-key, 1 password)``: counts by kind, never a value."""
    n = sum(counts.values())
    if not n:
        return ""
    kinds = ", ".join(f"{c} {k}" for k, c in sorted(counts.items(), key=lambda kc: (-kc[1], kc[0])))
    return f", {n} secret{'s' if n != 1 else ''} redacted ({kinds})"


def sync_index(
    store: Store, what: str = "memories", fresh: Fresh | None = None, scanned: Scan | None = None
) -> index_mod.Index:
    """Embed what changed (a writer: waits for the lock), with a progress bar on a terminal.
    ``fresh``: the memories this command just wrote (not read again, :data:`Fresh`);
    ``scanned``: its scan of the memory files (:class:`Scan`: not statted again while valid)."""
    emb = store_embedder(store, G.embedder)
    with output.progress_bar(f"embedding {what}") as progress:
        idx, report = index_mod.sync(store, emb, progress=progress, fresh=fresh, scanned=scanned)
    report_sync(report, store, emb.name, len(idx))
    return idx


def report_sync(report: index_mod.SyncReport, store: Store, embedder: str, n: int) -> None:
    """The stderr lines of a sync: why it rebuilt, broken files, what it embedded."""
    if report.rebuild_reason:
        output.warn(f"{report.rebuild_reason}; rebuilt the index from the memories of {store.root}")
    for e in report.broken:
        output.warn(str(e).split("\n")[0] + " (left out of the index)")
    if report.embedded:
        output.info(f"index: {report.embedded} embedded ({embedder}), {n} memories indexed")


def drain(store: Store) -> None:
    """Ingest the sessions a hook queued while the store was busy (the store's inbox)."""
    from memp_cli.ingest.transcripts import inbox

    d = inbox.drain(store, output.warn)
    if d.sessions:
        output.info(
            f"inbox: {d.sessions} queued session{'s' if d.sessions != 1 else ''} read, {d.added} added"
        )


@app.command()
def init(
    directory: Annotated[
        str | None, typer.Argument(help="Store directory (default: --store, MEMP_STORE or ./.memp).")
    ] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedder for this store: minilm, hash, litellm/<model>.")
    ] = None,
    dim: Annotated[
        int | None, typer.Option(help="Vector dimension (hash embedder; litellm models with a known size).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Default LLM (a litellm model string, or builtin).")
    ] = None,
) -> None:
    """Create a memp store.

    Example: memp init --embedder hash ./mem
    """
    root = Path(directory) if directory else store_path(discover=False)
    cfg = Config()
    name = embedder or G.embedder or cfg.embedder.name
    cfg.embedder.name = name
    if dim is not None:
        cfg.embedder.dim = dim
    elif name == "hash":
        cfg.embedder.dim = 256
    if model:
        cfg.llm.model = model
    Store.init(root, cfg)  # validates the settings before it creates anything
    output.info(f"created store {root} (embedder {name})")


@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="JSONL trajectory files; - reads standard input.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help=f"Record shape: {', '.join(INGEST_FORMATS)}.",
            callback=choice(INGEST_FORMATS),
        ),
    ] = "auto",
    strict: Annotated[
        bool, typer.Option(help="Abort on the first bad line; nothing of that file is stored.")
    ] = False,
    success: Annotated[
        bool | None,
        typer.Option(
            "--success/--failure", help="Outcome of transcript sessions (they record none; default unknown)."
        ),
    ] = None,
    no_redact: Annotated[
        bool,
        typer.Option(
            "--no-redact",
            help="Store secrets (API keys, tokens, passwords) as they are, not [REDACTED:kind].",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Store trajectories from JSONL (one run per line).

    Shapes: native {task, steps, success}, OpenAI {messages}, Mem^p {query, trajectory, reward},
    AgentInstruct {conversations}. Ingesting the same run twice stores it once. Coding-agent
    transcripts (claude-code, codex, gemini-cli; recognised by auto) are one session per file.

    Example: cat runs/*.jsonl | memp ingest -
    """
    from memp_cli.ingest.transcripts import read_input

    store = open_store("ingest")
    drain(store)
    bad_total = 0
    for path in files:
        stream, name = open_input(path)
        try:
            results, session = read_input(stream, name, fmt, success=success)
            report = store.ingest(results, strict=strict, redact=not no_redact)
        finally:
            if stream is not env.stdin:
                stream.close()
        if session is not None and (note := session.summary(name)):
            output.info(note)
        for i, e in enumerate(report.errors):
            if i == MAX_SHOWN_ERRORS:
                output.warn(f"... and {len(report.errors) - i} more bad lines in {name}")
                break
            output.warn(f"skipped {e}".split("\n")[0])
        bad_total += report.bad
        for mid in report.unknown_memories:
            output.warn(
                f"{name}: memories_used names {shown(mid)}, which is not in {store.root}: not counted"
            )
        if report.outcomes:
            output.info(
                f"{name}: {report.outcomes} memory outcome{'s' if report.outcomes != 1 else ''} counted"
            )
        output.info(
            f"{name}: {report.read} trajectories read, {report.added} added, "
            f"{report.duplicates} already stored, {report.bad} bad line{'s' if report.bad != 1 else ''}"
            + redacted_note(report.redacted)
        )
        if json_out:
            extra = {"transcript": session.to_dict()} if session is not None else {}
            output.emit_json_lines([{"file": name, **report.to_dict(), **extra}])
    if bad_total:
        output.error(f"{bad_total} bad line{'s' if bad_total != 1 else ''} skipped; the good ones are stored")
        raise typer.Exit(int(ExitCode.BAD_INPUT))


@app.command(name="distill")
def distill_cmd(
    policy: Annotated[
        str | None,
        typer.Option(help=f"Build policy: {', '.join(POLICIES)} (default: the store's, proceduralization)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            envvar="MEMP_MODEL",
            help="A litellm model string (openai/gpt-4o-mini, anthropic/..., ollama/llama3.1), "
            "or builtin (rule-based, offline). Default: the store's, in memp.toml.",
        ),
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option(envvar="MEMP_API_BASE", help="Endpoint for local or proxied models (Ollama, vLLM)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            envvar="MEMP_LLM_TIMEOUT", min=0.1, help="Seconds per LLM request before it is retried."
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            envvar="MEMP_CONCURRENCY", min=1, max=MAX_CONCURRENCY, help="LLM requests in flight at once."
        ),
    ] = 4,
    only_success: Annotated[
        bool | None,
        typer.Option(
            "--only-success/--with-failures",
            help="Build from successful runs only, or from failed runs too "
            "(default: [update] policy; only vanilla builds failures).",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many new memories.")] = None,
    replace_edits: Annotated[
        bool,
        typer.Option(
            "--replace-edits",
            help="Rebuild memories edited by hand too (kept by default; the edit stays in memp history).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be sent to the model and its size; write nothing."),
    ] = False,
    no_redact: Annotated[
        bool,
        typer.Option(
            "--no-redact",
            help="Send and store secrets found in the trajectories as they are (stored with ingest --no-redact).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build memories from ingested trajectories that have none yet.

    Policies: trajectory keeps the concrete steps; script asks the model for an abstract
    procedure (steps with {variables}, preconditions, pitfalls); proceduralization keeps both.
    Idempotent: a trajectory already built with the same policy, model and prompt version is
    skipped; a new model or prompt version rebuilds it as a new version of the same memory.
    A failed trajectory is reported and stays pending (exit code 8); a rerun resumes, and
    replies already received come from the cache (no tokens). API keys come from the
    environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...).

    Example: memp distill --model openai/gpt-4o-mini --only-success --concurrency 8
    """
    t0 = time.perf_counter()
    store = open_store("distill")
    if not dry_run:
        drain(store)
    pol = resolve_policy(store, policy)
    if pol == "trajectory" and (model or api_base):
        output.warn("--model and --api-base do not apply to the trajectory policy (no LLM); ignored")

    def on_failure(f: Failure) -> None:
        output.warn(f"trajectory {f.trajectory} failed, left pending: {f.reason}")

    with _progress_bar(enabled=env.stderr_isatty and not env.quiet and not dry_run) as progress:
        report = distill(
            store,
            pol,
            model=model,
            api_base=api_base,
            timeout=timeout,
            concurrency=concurrency,
            only_success=only_success,
            limit=limit,
            replace_edits=replace_edits,
            dry_run=dry_run,
            progress=progress,
            on_failure=on_failure,
            redact=not no_redact,
        )
    for w in report.warnings:
        output.warn(w)
    try:
        # Before the summary: its last line says the run is done. Also when this run wrote
        # nothing: a distill killed after its memory files left them unindexed.
        if report.written or (not dry_run and not _index_is_fresh(store)):
            sync_index(store, fresh=report.fresh, scanned=report.scan)
    finally:
        for line in _distill_summary(report, time.perf_counter() - t0):
            output.info(line)
        if json_out:
            if dry_run:
                output.emit_json_lines(report.planned)
            row = report.to_dict()
            row["failures"] = [vars(f) for f in report.failures]
            output.emit_json_lines([row])
    if report.error is not None:
        raise report.error
    if report.failed:
        n = report.failed
        output.error(
            f"{n} trajector{'ies' if n != 1 else 'y'} failed and stay{'s' if n == 1 else ''} pending; "
            "run `memp distill` again to retry them"
        )
        raise typer.Exit(int(ExitCode.LLM))


def _index_is_fresh(store: Store) -> bool:
    try:
        return index_mod.is_fresh(store, index_mod.read_state(store))
    except StoreError:  # unreadable state: the sync rebuilds it, and says so
        return False


@contextlib.contextmanager
def _progress_bar(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr, created when the run knows its size."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("memp: distill"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=output.stderr_console(),
        transient=True,
    )
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("distill", total=total))
        bar.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            bar.stop()


def _distill_summary(r: DistillReport, seconds: float) -> list[str]:
    """The run in a few lines; ``seconds``: the whole command, the index update included."""
    what = r.policy + (f", model {r.model}" if r.model else "")
    if r.model == BUILTIN_MODEL:
        what += " (rule-based, not an LLM)"
    if r.dry_run:
        made = f"would write {r.read} memories"
    else:
        made = f"wrote {r.written} memories" + (f" ({r.versioned} as new versions)" if r.versioned else "")
    lines = [
        f"distill ({what}): {r.read} trajectories to build, {made}, {r.skipped} already built, "
        f"{r.filtered - r.unlabeled} failed runs not built (lessons for memp reflect), {r.failed} failed"
        + (f", {r.unlabeled} runs of unknown outcome not built" if r.unlabeled else "")
        + (f", {r.pending} still pending" if r.pending else "")
        + (f", {r.forgotten} in the trash (not rebuilt)" if r.forgotten else "")
        + (f", {r.kept_edits} edited by hand (kept)" if r.kept_edits else "")
        + (f", {r.redacted} secret{'s' if r.redacted != 1 else ''} redacted" if r.redacted else "")
    ]
    if r.dry_run:
        if r.model and r.model != BUILTIN_MODEL:
            cached = sum(1 for row in r.planned if row.get("cached"))
            lines.append(
                f"dry run: about {r.estimated_tokens:,} prompt tokens to send"
                + (f" ({cached} replies already cached)" if cached else "")
                + "; nothing written"
            )
        else:
            lines.append("dry run: no LLM calls; nothing written")
    elif r.model and r.model != BUILTIN_MODEL and r.read:
        cost = f"${r.cost_usd:.4f}" if r.cost_usd is not None else "unknown (litellm has no price for it)"
        lines.append(
            f"tokens {r.tokens_in:,} in / {r.tokens_out:,} out in {r.calls} calls"
            f" ({r.cached_calls} from the cache), cost {cost}, done in {seconds:.1f} s"
        )
    elif r.read:
        lines.append(f"done in {seconds:.1f} s")
    return lines


def _memories_for_list(store: Store, kind: str | None) -> Iterator[Memory | MemoryFileError]:
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError) or kind is None or m.kind == kind:
            yield m


@app.command(name="list")
def list_cmd(
    kind: Annotated[
        str | None,
        typer.Option(help="Only this kind: trajectory, script, procedure.", callback=choice(KINDS)),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            min=0,
            help=f"At most this many; 0 for all (default: {TERMINAL_LIST_LIMIT} in a table on a "
            "terminal, all in JSON lines).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List memories (a table on a terminal, JSON lines otherwise or with --json)."""
    from memp_cli.update.outcomes import add_usage, with_usage

    store = open_store("list")
    as_table = env.stdout_isatty and not json_out
    cap = (TERMINAL_LIST_LIMIT if as_table else 0) if limit is None else limit
    rows: list[Memory] = []
    broken = matching = 0

    def listed() -> Iterator[Memory]:
        nonlocal broken, matching
        shown = 0
        for m in _memories_for_list(store, kind):
            if isinstance(m, MemoryFileError):
                output.warn(str(m).split("\n")[0])
                broken += 1
                continue
            matching += 1
            if cap and shown >= cap:
                if limit is not None:
                    break  # an explicit --limit: read no further
                continue  # the terminal default: count the rest for the note below
            shown += 1
            yield m

    if not as_table:  # JSON lines as read: a million memories are never held at once
        output.emit_json_lines(m.list_row() for m in with_usage(store, listed()))
    else:
        rows = list(listed())
        add_usage(store, rows)
        if limit is None and len(rows) < matching:
            output.info(f"showing {len(rows)} of {matching}; --limit 0 for all")
        ok = {True: "yes", False: "no", None: "?"}
        output.table(
            ["id", "kind", "success", "task", "used", "updated"],
            (
                [m.id, m.kind, ok[m.success], m.task, str(m.stats.retrieved), m.provenance.updated]
                for m in rows
            ),
        )
    if broken:
        output.error(f"{broken} memory file{'s' if broken != 1 else ''} could not be read; run `memp doctor`")
        raise typer.Exit(int(ExitCode.BAD_INPUT))


@app.command()
def show(
    memory_id: Annotated[str, typer.Argument(metavar="ID", help="Memory id (see memp list).")],
    json_out: JsonOpt = False,
) -> None:
    """Print one memory: its TOML file, or JSON with --json."""
    from memp_cli.update.outcomes import add_usage

    store = open_store("show")
    mem = store.load_memory(memory_id)
    add_usage(store, [mem])
    if json_out:
        output.emit_json_lines([mem.to_dict()])
    else:
        output.write(read_memory_bytes(store.memory_path(memory_id)).decode("utf-8"))


def _editor() -> list[str]:
    cmd = os.environ.get("MEMP_EDITOR") or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    return shlex.split(cmd)


@app.command()
def edit(memory_id: Annotated[str, typer.Argument(metavar="ID", help="Memory id (see memp list).")]) -> None:
    """Edit a memory in $EDITOR; it is validated before it replaces the file.

    An invalid edit never reaches the store: you are asked to fix it (on a terminal), or
    the command exits with code 3 and the file stays as it was.
    """
    store = open_store("edit")
    path = store.memory_path(memory_id)
    if not path.exists():
        raise NotFoundError(f"no memory {memory_id!r} in {store.root}", hint="see `memp list`")
    before = read_memory_bytes(path)  # a FIFO or a symlink to /dev/zero is refused, not read
    try:
        old_version: int | None = store.load_memory(memory_id).version
    except MemoryFileError as e:  # a broken file is exactly what one may want to edit
        output.warn(f"{str(e).splitlines()[0]}; fix it in the editor")
        old_version = None
    with tempfile.TemporaryDirectory(prefix="memp-edit-") as tmp:
        draft = Path(tmp) / path.name
        draft.write_bytes(before)
        while True:
            rc = subprocess.call([*_editor(), str(draft)])
            if rc != 0:
                raise InputError(f"the editor exited with status {rc}; nothing was changed", path=str(path))
            text = draft.read_text(encoding="utf-8")
            if text.encode() == before:
                output.info("no changes")
                return
            try:
                mem = memory_from_toml(text, path)
                if mem.id != memory_id:
                    raise InputError("the id cannot be changed by editing", path=str(path))
                break
            except InputError as e:
                output.error(str(e).replace(str(path), f"{path} (your edit)"))
                if env.stdin_isatty and typer.confirm("Edit again?", default=True, err=True):
                    continue
                raise typer.Exit(int(ExitCode.BAD_INPUT)) from None
        with store.lock:
            if read_memory_bytes(path) != before:
                keep = Path(tempfile.mkstemp(prefix=f"memp-edit-{memory_id}-", suffix=".toml")[1])
                keep.write_text(text, encoding="utf-8")
                raise InputError(
                    "the memory changed on disk while you were editing; your edit was not applied",
                    path=str(path),
                    hint=f"your version is saved in {keep}",
                )
            mem.version = (old_version if old_version is not None else mem.version) + 1
            store.save_memory(mem, base=text, event="memory.edit")
    output.info(f"saved {memory_id} (version {mem.version})")
    sync_index(store)


@app.command()
def stats(json_out: JsonOpt = False) -> None:
    """Counts: trajectories, memories by kind, index state, size on disk."""
    from memp_cli.store.stats import store_stats

    store = open_store("stats")
    st = store_stats(store)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines([st])
        return
    rows = []
    for key, value in st.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                rows.append([f"{key}.{k2}", str(v2)])
        else:
            rows.append([key, str(value)])
    output.table(["what", "value"], rows, title=f"memp store {store.root}")
