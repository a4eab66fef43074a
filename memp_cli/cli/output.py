"""Output helpers for the CLI layer: stdout carries data, stderr the rest."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson


@dataclass
class Env:
    """Where the CLI reads and writes; tests may swap it (httpie's Environment)."""

    stdin: IO[bytes] = field(default_factory=lambda: sys.stdin.buffer)
    quiet: bool = False
    traceback: bool = False

    @property
    def stdout_isatty(self) -> bool:
        return sys.stdout.isatty()

    @property
    def stderr_isatty(self) -> bool:
        return sys.stderr.isatty()


env = Env()


def emit_json_lines(rows: Iterable[dict[str, Any]]) -> None:
    out = sys.stdout
    for row in rows:
        out.write(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS).decode())
        out.write("\n")
    out.flush()


def emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def info(msg: str) -> None:
    """A progress or summary line on stderr (silenced by --quiet)."""
    if not env.quiet:
        sys.stderr.write(f"memp: {msg}\n")
        sys.stderr.flush()


def warn(msg: str) -> None:
    sys.stderr.write(f"memp: warning: {msg}\n")
    sys.stderr.flush()


def error(msg: str) -> None:
    sys.stderr.write(f"memp: error: {msg}\n")
    sys.stderr.flush()


def stdout_console() -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(file=sys.stdout, width=width, soft_wrap=False)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(file=sys.stderr)


def table(columns: list[str], rows: Iterable[list[str]], title: str | None = None) -> None:
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    stdout_console().print(t)
