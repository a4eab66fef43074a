"""Store commands: init, ingest, distill, list, show, edit, stats."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import typer

from .. import index as index_mod
from ..config import Config
from ..distill import POLICIES, distill
from ..errors import ExitCode, InputError, MemoryFileError, NotFoundError
from ..memory import memory_from_toml
from ..store import Store, store_embedder
from ..trajectories import FORMATS, read_jsonl
from . import G, app, open_store, output, store_path
from .output import env

MAX_SHOWN_ERRORS = 20

JsonOpt = Annotated[bool, typer.Option("--json", "--nl", help="Output JSON lines on stdout.")]


def open_input(path: str) -> tuple[IO[bytes], str]:
    """``-`` is stdin; anything else a file. Returns (stream, name for messages)."""
    if path == "-":
        return env.stdin, "<stdin>"
    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory", hint="give a JSONL file, or - for standard input")
    return open(p, "rb"), path


def sync_index(store: Store, what: str = "memories") -> index_mod.Index:
    """Embed what changed, with a progress line on stderr."""
    emb = store_embedder(store, G.embedder)

    def progress(done: int, total: int) -> None:
        if env.stderr_isatty and not env.quiet:
            sys.stderr.write(f"\rmemp: embedding {what}: {done}/{total}")
            if done == total:
                sys.stderr.write("\n")

    idx, report = index_mod.sync(store, emb, progress=progress)
    for e in report.broken:
        output.warn(str(e).split("\n")[0] + " (left out of the index)")
    if report.embedded:
        output.info(f"index: {report.embedded} embedded ({emb.name}), {len(idx)} memories indexed")
    return idx


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
    root = Path(directory) if directory else store_path()
    cfg = Config()
    name = embedder or G.embedder or cfg.embedder.name
    cfg.embedder.name = name
    if name == "hash":
        cfg.embedder.dim = dim or 256
    elif name == "minilm":
        cfg.embedder.dim = 384
    elif dim:
        cfg.embedder.dim = dim
    if model:
        cfg.llm.model = model
    Store.init(root, cfg)
    output.info(f"created store {root} (embedder {name})")


@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="JSONL trajectory files; - reads standard input.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"Record shape: {', '.join(FORMATS)}.")] = "auto",
    strict: Annotated[
        bool, typer.Option(help="Abort on the first bad line; nothing of that file is stored.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Store trajectories from JSONL (one run per line).

    Shapes: native {task, steps, success}, OpenAI {messages}, Mem^p {query, trajectory, reward},
    AgentInstruct {conversations}. Ingesting the same run twice stores it once.

    Example: cat runs/*.jsonl | memp ingest -
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    store = open_store("ingest")
    bad_total = 0
    for path in files:
        stream, name = open_input(path)
        try:
            report = store.ingest(read_jsonl(stream, name, fmt), strict=strict)
        finally:
            if stream is not env.stdin:
                stream.close()
        for i, e in enumerate(report.errors):
            if i == MAX_SHOWN_ERRORS:
                output.warn(f"... and {len(report.errors) - i} more bad lines in {name}")
                break
            output.warn(f"skipped {e}".split("\n")[0])
        bad_total += report.bad
        output.info(
            f"{name}: {report.read} trajectories read, {report.added} added, "
            f"{report.duplicates} already stored, {report.bad} bad line{'s' if report.bad != 1 else ''}"
        )
        if json_out:
            output.emit_json_lines([{"file": name, **report.to_dict()}])
    if bad_total:
        output.error(f"{bad_total} bad line{'s' if bad_total != 1 else ''} skipped; the good ones are stored")
        raise typer.Exit(int(ExitCode.BAD_INPUT))


@app.command(name="distill")
def distill_cmd(
    policy: Annotated[
        str | None, typer.Option(help=f"Build policy: {', '.join(POLICIES)} (default: the store's).")
    ] = None,
    only_success: Annotated[
        bool, typer.Option("--only-success", help="Build from successful runs only (validation).")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many new memories.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be built; write nothing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build memories from ingested trajectories that have none yet.

    Example: memp distill --policy trajectory --only-success
    """
    store = open_store("distill")
    pol = policy or store.config.distill.policy
    report = distill(store, pol, only_success=only_success, limit=limit, dry_run=dry_run)
    verb = "would write" if dry_run else "wrote"
    output.info(
        f"distill ({pol}): {report.read} trajectories to build, {verb} {report.written if not dry_run else report.read} "
        f"memories, {report.skipped} already built, {report.filtered} filtered (not successful)"
    )
    if json_out:
        if dry_run:
            output.emit_json_lines({"id": mid, "would_write": True} for mid in report.ids)
        output.emit_json_lines([report.to_dict()])
    if report.written:
        sync_index(store)


def _memories_for_list(store: Store, kind: str | None) -> Iterator[object]:
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError) or kind is None or m.kind == kind:
            yield m


@app.command(name="list")
def list_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind: trajectory, script, procedure.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most this many.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List memories (a table on a terminal, JSON lines otherwise or with --json)."""
    store = open_store("list")
    rows = []
    broken = 0
    for m in _memories_for_list(store, kind):
        if isinstance(m, MemoryFileError):
            output.warn(str(m).split("\n")[0])
            broken += 1
            continue
        if limit is not None and len(rows) >= limit:
            break
        rows.append(m)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(
            {
                "id": m.id,
                "kind": m.kind,
                "task": m.task,
                "task_type": m.task_type or None,
                "success": m.success,
                "stats": vars(m.stats),
                "version": m.version,
                "updated": m.provenance.updated,
            }
            for m in rows  # type: ignore[attr-defined]
        )
    else:
        ok = {True: "yes", False: "no", None: "?"}
        output.table(
            ["id", "kind", "success", "task", "used", "updated"],
            (
                [m.id, m.kind, ok[m.success], m.task, str(m.stats.retrieved), m.provenance.updated]
                for m in rows
            ),  # type: ignore[attr-defined]
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
    store = open_store("show")
    mem = store.load_memory(memory_id)
    if json_out:
        output.emit_json(mem.to_dict())
    else:
        sys.stdout.write(store.memory_path(memory_id).read_text(encoding="utf-8"))


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
    original = store.load_memory(memory_id)  # also validates the current file
    before = path.read_bytes()
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
                if mem.id != original.id:
                    raise InputError("the id cannot be changed by editing", path=str(path))
                break
            except InputError as e:
                output.error(str(e).replace(str(path), f"{path} (your edit)"))
                if sys.stdin.isatty() and typer.confirm("Edit again?", default=True, err=True):
                    continue
                raise typer.Exit(int(ExitCode.BAD_INPUT)) from None
        with store.lock:
            if path.read_bytes() != before:
                keep = Path(tempfile.mkstemp(prefix=f"memp-edit-{memory_id}-", suffix=".toml")[1])
                keep.write_text(text, encoding="utf-8")
                raise InputError(
                    "the memory changed on disk while you were editing; your edit was not applied",
                    path=str(path),
                    hint=f"your version is saved in {keep}",
                )
            mem.version = original.version + 1
            store.save_memory(mem, event="memory.edit")
    output.info(f"saved {memory_id} (version {mem.version})")
    sync_index(store)


@app.command()
def stats(json_out: JsonOpt = False) -> None:
    """Counts: trajectories, memories by kind, index state, size on disk."""
    from ..stats import store_stats

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
