"""What the rest of memp needs of a store: the seam for a second backend.

Build (distill), Retrieve (the index and the retriever), Update (outcomes, reflect, prune,
history, trash, cycle), eval and a future MCP server are written against :class:`MemoryStore`,
never against the file layout. :class:`memp_cli.store.Store` (a directory of plain files) is the
one implementation today; a second backend (PostgreSQL + pgvector, say) implements this protocol
and nothing outside ``memp_cli/store/`` changes. mypy checks every caller against it.

Primary data (memories, trajectories, the journal) is reached only through methods. A backend
also provides local directories for what is derived or cached (the index, the LLM cache, prompt
overrides) and the files of the Update layer's logs (outcomes, reflections, history, trash),
which a file store keeps beside its memories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from memp_cli.config import Config
    from memp_cli.errors import MemoryFileError
    from memp_cli.ingest import ReadResult
    from memp_cli.model.memory import Memory
    from memp_cli.model.trajectory import Trajectory
    from memp_cli.store import IngestReport
    from memp_cli.store.ledger import Settles


class WriterLock(Protocol):
    """The writers' lock: held to write, never to read; re-entrant. ``wait`` False: fail with
    LockedError instead of waiting."""

    wait: bool

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...


class MemoryStore(Protocol):
    root: Path  # where the store is (named in messages)
    config: Config
    command: str  # the command writing (recorded in the journal and in memory histories)

    # derived data, caches and overrides: local directories
    index_dir: Path
    cache_dir: Path
    prompts_dir: Path
    # the Update layer's logs
    outcomes_path: Path
    reflections_path: Path
    history_dir: Path
    trash_dir: Path

    @property
    def lock(self) -> WriterLock: ...

    def journal(self, event: str, **fields: Any) -> None: ...

    # trajectories
    def ingest(self, results: Iterable[ReadResult], *, strict: bool = False) -> IngestReport: ...

    def iter_trajectories(
        self,
        skip: Callable[[str], bool] | None = None,
        *,
        settled: Settles | None = None,
        record: bool = True,
    ) -> Iterator[Trajectory]: ...

    # memories
    def memory_ids(self) -> list[str]: ...

    def memory_path(self, memory_id: str) -> Path: ...

    def load_memory(self, memory_id: str) -> Memory: ...

    def read_memory(self, memory_id: str) -> Memory: ...

    def iter_memories(self) -> Iterator[Memory | MemoryFileError]: ...

    def memory_stamps(self) -> dict[str, tuple[int, int]]: ...

    def memories_mtime_ns(self) -> int: ...

    def save_memory(
        self,
        memory: Memory,
        *,
        base: str | None = None,
        event: str = "memory.write",
        why: str = "",
        trajectory: str | None = None,
        **fields: Any,
    ) -> None: ...

    def save_memories(
        self, memories: list[Memory], *, event: str, why: str = "", **fields: Any
    ) -> dict[str, tuple[Memory, tuple[int, int]]]: ...

    def notice_edits(self, memory_ids: list[str]) -> None: ...
