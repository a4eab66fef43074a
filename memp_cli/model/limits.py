"""Limits on what memp reads from files it does not control: memory TOML files (often edited
by hand) and JSONL trajectory lines. A value past a limit is one bad file or line, reported by
path and left out, never a crash or a hang for the whole store."""

from __future__ import annotations

from typing import Any

# A memory file larger than this is refused unread. memp writes a few KiB, but the task (and so
# the key) of one ingested line may be as long as the line: the limit is that line's, so memp
# never writes a memory it would then refuse to read.
MAX_MEMORY_FILE_BYTES = 16 * 1024 * 1024
# Tables and arrays nested deeper than this are refused; orjson cannot write more than 254.
MAX_DEPTH = 32
# A JSONL trajectory line nested deeper than this is one bad line (records are stored with
# orjson, which cannot write 255 levels or more; tool-call arguments may nest a few).
MAX_JSON_DEPTH = 128
# Statistics and versions are whole numbers a JSON reader can hold exactly.
MAX_COUNT = 2**53
# A memory's retrieval texts: how many (memp writes one key and at most 6 keywords). Their
# length is bounded by the file's: a task, and so its key, may be long.
MAX_KEYWORDS = 1000
MAX_KEYS = 100


def depth_over(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        if d + 1 > limit:
            return True
        stack.extend((x, d + 1) for x in v if isinstance(x, (list, dict)))
    return False
