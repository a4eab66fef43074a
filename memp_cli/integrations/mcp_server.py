"""memp as an MCP server over stdio: an agent queries the store before a task, reports how the run
went after it, and records the finished run for the next ``memp distill``.

Two halves: :class:`MempTools` does the work with the library alone (each call opens the store
afresh, so memories, settings and outcomes written by other processes are seen at once, and
returns JSON-ready dicts); :func:`build_server` exposes it as the tools of an
:class:`mcp.server.MCPServer` (the official MCP Python SDK, 2.x; ``pip install 'memp[mcp]'``).
This module imports the SDK when it is imported: only ``memp mcp`` imports it.

Locks, as for the CLI: the read tools (query, show, list) never wait for the writers' lock
(:mod:`memp_cli.index.access`: a query answers from the last complete index while another process
writes); the write tools (feedback, record) wait at most ``lock_timeout`` seconds for it, then
fail with a tool error. A memp error reaches the agent as a tool error carrying memp's message
and hint; the server goes on serving.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, WithJsonSchema

from memp_cli import __version__
from memp_cli.backends.embedders import Embedder
from memp_cli.errors import InputError, LockedError, MemoryFileError, MempError, NotFoundError
from memp_cli.index.access import open_index
from memp_cli.ingest import read_jsonl
from memp_cli.model.memory import KINDS, Memory, read_memory_bytes
from memp_cli.retrieve.render import pack_prompt
from memp_cli.retrieve.retriever import KEYS, Retriever
from memp_cli.store import Store, store_embedder
from memp_cli.update.outcomes import Ledger, Outcome, add_usage, outcome_of, record

DEFAULT_LOCK_TIMEOUT = 10.0  # seconds a write tool waits for another memp process to finish writing
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
MAX_K = 50
RECORD_NAME = "trajectory"  # how the record tool's input is named in error messages

# memp's OS-level failures that are the store's condition, not a bug (as the CLI maps them).
_OS_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


class MempTools:
    """The work behind each MCP tool, on the store at ``root``.

    ``embedder``: another embedder than the store's (as ``--embedder``). ``lock_timeout``:
    seconds a write waits for the writers' lock before it fails with :class:`LockedError`.
    Calls may come from several threads (the SDK runs each on a worker thread): each opens its
    own :class:`Store`, so two writes exclude each other through the lock file as two processes
    would; the cached embedder is used by one query at a time.
    """

    def __init__(
        self, root: Path, *, embedder: str | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        self.root = root
        self.embedder_name = embedder
        self.lock_timeout = lock_timeout
        self._embedder: tuple[tuple[str | None, str], Embedder] | None = None
        self._read_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def open(self, command: str) -> Store:
        """The store as it is now; its writers' lock waits at most ``lock_timeout``."""
        store = Store.open(self.root)
        store.command = f"mcp {command}"
        store.lock.timeout = self.lock_timeout
        return store

    @contextmanager
    def _bounded_wait(self) -> Iterator[None]:
        """A lock that stayed taken: say how long this waited and what to do."""
        try:
            yield
        except LockedError as e:
            raise LockedError(
                f"{e.message}; gave up after waiting {self.lock_timeout:g} s",
                hint="try again in a moment (a distill or cycle may be running), or raise "
                "`memp mcp --lock-timeout`",
            ) from None

    def _store_embedder(self, store: Store) -> Embedder:
        """The store's embedder, built once while its settings stay the same (a local model
        loads once per server, not once per query)."""
        key = (self.embedder_name, repr(store.config.embedder))  # a dataclass: all its settings
        if self._embedder is None or self._embedder[0] != key:
            self._embedder = (key, store_embedder(store, self.embedder_name))
        return self._embedder[1]

    # ------------------------------------------------------------------ read tools
    def query(
        self,
        task: str,
        *,
        k: int | None = None,
        min_score: float | None = None,
        kind: str | None = None,
        prompt: bool = False,
        max_tokens: int = 1500,
    ) -> dict[str, Any]:
        """The memories for ``task`` as ``memp query --json --explain`` ranks and prints them
        (the store's [retrieval] settings; ``k`` and ``min_score`` override them), with the
        ``--format prompt`` block when ``prompt``, and the notes the CLI prints on stderr."""
        task = task.strip()
        if not task:
            raise InputError("the task is empty", hint="describe the task to find memories for")
        store = self.open("query")
        rc = store.config.retrieval
        if rc.key not in KEYS:
            raise InputError(
                f"unknown key {rc.key!r} in {store.root}/memp.toml", hint=f"choose one of {', '.join(KEYS)}"
            )
        notes: list[str] = []
        out: dict[str, Any] = {"task": task, "results": []}
        with self._read_lock, self._bounded_wait():
            embedder = self._store_embedder(store)
            opened = open_index(
                store, embedder, keywords=rc.key == "avefact", exact=True, on_note=notes.append
            )
            for e in opened.report.broken if opened.report is not None else []:
                notes.append(f"{str(e).splitlines()[0]} (left out of the index)")
            if opened.index is None:
                notes.append(
                    f"the store {store.root} has no memories yet: record runs (the record tool or "
                    "`memp ingest`), then build memories with `memp distill`"
                )
                hits = []
            else:
                retriever = Retriever.from_config(
                    opened.index,
                    embedder,
                    rc,
                    k=k,
                    min_score=min_score,
                    kind=kind,
                    explain=True,
                    collapse=True,
                    collapse_similarity=store.config.prune.duplicate_similarity,
                )
                retriever.usage = Ledger.of(store).usage()
                hits = retriever.search([task])[0]
                best = retriever.best_below[0] if retriever.best_below else None
                if best is not None:
                    notes.append(
                        f"no memory is a match: the best scored {best:.3f}, below the floor "
                        f"{retriever.min_score:g}; min_score -1 returns the nearest anyway"
                    )
                notes.extend(w.split("\n")[0] for w in retriever.warnings)
        out["results"] = [h.to_dict() for h in hits]
        if prompt:
            packed = pack_prompt(hits, max_tokens=max_tokens)
            out["prompt"] = packed.text
            if hits and not packed.shown:
                notes.append(
                    f"max_tokens {max_tokens} is too small for even one memory (the best needs "
                    f"{packed.needed}): the prompt is empty"
                )
            elif packed.shown < len(hits):
                notes.append(f"{len(hits) - packed.shown} of {len(hits)} memories did not fit in max_tokens")
        out["notes"] = notes
        return out

    def show(self, memory_id: str, fmt: str = "both") -> dict[str, Any]:
        """One memory as ``memp show`` prints it: its TOML file (``toml``) and/or the JSON of
        ``memp show --json``, outcome statistics included (``memory``)."""
        store = self.open("show")
        mem = store.load_memory(memory_id)
        out: dict[str, Any] = {"id": mem.id}
        if fmt in ("toml", "both"):
            out["toml"] = read_memory_bytes(store.memory_path(memory_id)).decode("utf-8")
        if fmt in ("json", "both"):
            add_usage(store, [mem])
            out["memory"] = mem.to_dict()
        return out

    def list_memories(self, *, kind: str | None = None, limit: int = DEFAULT_LIST_LIMIT) -> dict[str, Any]:
        """Memories with the fields of ``memp list --json``, at most ``limit`` (0: all);
        ``more`` says whether there are others, ``broken`` names unreadable files."""
        store = self.open("list")
        rows: list[Memory] = []
        broken: list[str] = []
        more = False
        for m in store.iter_memories():
            if isinstance(m, MemoryFileError):
                broken.append(str(m).split("\n")[0])
                continue
            if kind is not None and m.kind != kind:
                continue
            if limit and len(rows) >= limit:
                more = True
                break
            rows.append(m)
        add_usage(store, rows)
        return {"memories": [m.list_row() for m in rows], "more": more, "broken": broken}

    # ------------------------------------------------------------------ write tools
    def feedback(self, memory_ids: list[str], success: bool, trajectory: str | None = None) -> dict[str, Any]:
        """Count one use of each memory and the run's outcome, as ``memp feedback`` does."""
        if not memory_ids:
            raise InputError("no memory ids given", hint="pass the ids the query tool returned")
        store = self.open("feedback")
        with self._bounded_wait():
            rep = record(
                store,
                [Outcome(mid, outcome_of(success), trajectory, source="feedback") for mid in memory_ids],
            )
        if rep.unknown_ids and not rep.recorded and not rep.already:
            raise NotFoundError(
                f"no memory {', '.join(map(repr, rep.unknown_ids))} in {store.root}: nothing was counted",
                hint="use the ids the query or list tool returned",
            )
        return {"recorded": rep.recorded, "already": rep.already, "unknown": rep.unknown_ids}

    def record(self, trajectory: dict[str, Any]) -> dict[str, Any]:
        """Store one finished run, read and checked as ``memp ingest -`` reads a line: the same
        validation, and the same run recorded twice is stored once."""
        line = orjson.dumps(trajectory)
        results = list(read_jsonl([line], RECORD_NAME))
        error = next((r.error for r in results if r.error is not None), None)
        if error is not None:
            raise InputError(f"{RECORD_NAME}: {error.reason}", hint=error.hint)
        if not results or results[0].trajectory is None:  # read_jsonl skips an empty line only
            raise InputError(f"{RECORD_NAME}: the record is empty")
        tid = results[0].trajectory.id
        store = self.open("record")
        with self._bounded_wait():
            report = store.ingest(results)
        out: dict[str, Any] = {"trajectory_id": tid, **report.to_dict()}
        out["notes"] = [
            f"memories_used names {mid!r}, which is not in the store: not counted"
            for mid in report.unknown_memories
        ]
        if report.added:
            out["notes"].append("stored; `memp distill` (or `memp cycle`) builds memories from it")
        else:
            out["notes"].append("this run was already stored: nothing added")
        return out


def tool_error(e: BaseException) -> ToolError:
    """What the agent reads for a failed call: memp's message and hint, or the store's OS
    problem (a permission, a full disk) with the path."""
    if isinstance(e, OSError) and e.errno in _OS_PROBLEMS:
        where = f"{e.filename}: " if e.filename else ""
        return ToolError(f"{where}{_OS_PROBLEMS[e.errno]}")
    return ToolError(str(e))


# ---------------------------------------------------------------------- the MCP side

INSTRUCTIONS = """\
memp is procedural memory: how past runs of similar tasks were done, and how well that worked.
Before a task, call `query` with the task text and follow the procedures it returns (`prompt`
is a ready-made block for your context). After the task, call `feedback` with the ids of the
memories you used and whether the task succeeded: that is how memp learns which memories help.
`record` stores the finished run itself (task, steps, outcome); `memp distill` builds memories
from recorded runs. `show` and `list` look at memories by id."""

_STEP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "description": "The action (a command, a tool call)."},
        "observation": {"type": "string", "description": "What came back."},
        "thought": {"type": "string", "description": "The reasoning before the action."},
    },
    "required": ["action"],
}
# The native record, as the record tool's schema shows it (memp validates the record itself, with
# the messages `memp ingest` gives; unknown keys are kept).
NATIVE_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A finished run in memp's native record shape (one line of `memp ingest`).",
    "properties": {
        "task": {"type": "string", "description": "The task as it was given."},
        "steps": {
            "type": "array",
            "description": "What was done, in order: one object per action (or just the action text).",
            "items": {"anyOf": [_STEP_SCHEMA, {"type": "string"}]},
            "minItems": 1,
        },
        "success": {"type": ["boolean", "null"], "description": "Did the task succeed (null: unknown)?"},
        "reward": {"type": ["number", "null"], "description": "A score; alone, >= 1 counts as success."},
        "task_id": {"type": "string", "description": "The run's id, if it has one."},
        "task_type": {"type": "string", "description": "A label for the task family."},
        "initial_observation": {"type": "string", "description": "What the agent saw before the first step."},
        "memories_used": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Ids of memories the run used: their outcome is counted as feedback would.",
        },
        "source": {"type": "string", "description": "Where the run comes from (an agent, a benchmark)."},
    },
    "required": ["task", "steps"],
    "additionalProperties": True,
}

Kind = Literal["trajectory", "script", "procedure"]
assert set(Kind.__args__) == set(KINDS)  # type: ignore[attr-defined]


def build_server(tools: MempTools) -> MCPServer[Any]:
    """The MCP server: five tools over ``tools``, described for the agent that calls them."""
    server: MCPServer[Any] = MCPServer(
        name="memp", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(name="query", title="Find memories for a task", annotations=read_only)
    def query(
        task: Annotated[str, Field(description="The new task, in words (as the agent was given it).")],
        k: Annotated[
            int | None, Field(ge=1, le=MAX_K, description="How many memories (default: the store's, 3).")
        ] = None,
        min_score: Annotated[
            float | None,
            Field(description="Leave out memories scoring below this (default: the store's; -1: all)."),
        ] = None,
        kind: Annotated[Kind | None, Field(description="Only memories of this kind.")] = None,
        include_prompt: Annotated[
            bool, Field(description="Also return `prompt`: the memories as a text block to put in context.")
        ] = True,
        max_tokens: Annotated[
            int, Field(ge=50, le=100_000, description="Token budget of `prompt` (4 characters a token).")
        ] = 1500,
    ) -> CallToolResult:
        """Find the memories most relevant to a task: procedures and past runs of similar tasks,
        best first. First the memories as a text block ready for your context (`prompt`), then
        JSON: each result's id (for `feedback` and `show`), score, kind, task, steps or script,
        outcome statistics, and `explain`: every part of its score (lexical, cosine, utility from
        past outcomes, matched terms, near-duplicates collapsed into it); `notes` says when
        nothing matched or the index is being updated."""
        try:
            out = tools.query(
                task, k=k, min_score=min_score, kind=kind, prompt=include_prompt, max_tokens=max_tokens
            )
        except (MempError, OSError) as e:
            raise tool_error(e) from e
        # The block the agent reads first; the JSON (without the block again) for the details.
        blocks = [out["prompt"]] if out.get("prompt") else []
        blocks.append(orjson.dumps({k: v for k, v in out.items() if k != "prompt"}).decode())
        return CallToolResult(
            content=[TextContent(type="text", text=b) for b in blocks], structured_content=out
        )

    @server.tool(name="show", title="Show one memory", annotations=read_only)
    def show(
        memory_id: Annotated[str, Field(description="The memory's id (from `query` or `list`).")],
        format: Annotated[
            Literal["toml", "json", "both"],
            Field(description="`toml`: the memory file as stored; `json`: its fields, outcome statistics."),
        ] = "both",
    ) -> dict[str, Any]:
        """One memory, in full: the TOML file memp stores (`toml`) and/or its fields as JSON with
        its outcome statistics (`memory`), as `memp show` and `memp show --json` print them."""
        try:
            return tools.show(memory_id, format)
        except (MempError, OSError) as e:
            raise tool_error(e) from e

    @server.tool(name="list", title="List memories", annotations=read_only)
    def list_memories(
        kind: Annotated[Kind | None, Field(description="Only memories of this kind.")] = None,
        limit: Annotated[
            int, Field(ge=0, le=MAX_LIST_LIMIT, description="At most this many (0: up to the maximum).")
        ] = DEFAULT_LIST_LIMIT,
    ) -> dict[str, Any]:
        """The memories in the store, in id order: id, kind, task, task_type, success, stats
        (uses and outcomes), version and when it was last updated. `more` is true when the limit
        left some out."""
        try:
            return tools.list_memories(kind=kind, limit=limit or MAX_LIST_LIMIT)
        except (MempError, OSError) as e:
            raise tool_error(e) from e

    @server.tool(
        name="feedback",
        title="Report how a run that used memories ended",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
    )
    def feedback(
        memory_ids: Annotated[
            list[str], Field(min_length=1, description="Ids of the memories the run used (from `query`).")
        ],
        success: Annotated[bool, Field(description="Whether the task succeeded.")],
        trajectory: Annotated[
            str | None,
            Field(description="The run's id: the same run reported again is not counted twice."),
        ] = None,
    ) -> dict[str, Any]:
        """Count one use of each memory and the run's outcome; memp ranks memories that keep
        succeeding higher and prunes those that keep failing. Returns how many were counted,
        how many were already counted for this run, and ids the store does not have."""
        try:
            return tools.feedback(memory_ids, success, trajectory)
        except (MempError, OSError) as e:
            raise tool_error(e) from e

    @server.tool(
        name="record",
        title="Record a finished run",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    def record_run(
        trajectory: Annotated[dict[str, Any], WithJsonSchema(NATIVE_RECORD_SCHEMA)],
    ) -> dict[str, Any]:
        """Store a finished run (the task, the steps taken, whether it succeeded) so memp can
        learn a memory from it at the next `memp distill`. The same run recorded twice is stored
        once; `memories_used` counts the outcome of those memories as `feedback` would. Returns
        the run's id and what was stored."""
        try:
            return tools.record(trajectory)
        except (MempError, OSError) as e:
            raise tool_error(e) from e

    return server


def serve(root: Path, *, embedder: str | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Serve the store at ``root`` over stdio until the client closes the connection."""
    Store.open(root)  # no store, a broken memp.toml: fail now, not at the first call
    build_server(MempTools(root.absolute(), embedder=embedder, lock_timeout=lock_timeout)).run("stdio")
