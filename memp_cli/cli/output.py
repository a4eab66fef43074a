"""Where the CLI reads and writes: stdout carries data, stderr the rest.

Every command reads stdin and writes stdout/stderr through :data:`env`, so a test can swap
the streams or pretend they are terminals. Imports stay light: ``memp --help`` loads this.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from memp_cli.errors import InputError, NotFoundError


class Env:
    """The process's standard streams and whether they are terminals (httpie's Environment).

    A stream or tty flag left ``None`` is the process's own, looked up when used (click's
    ``CliRunner`` swaps ``sys.stdout`` for each run). :meth:`swap` replaces any of them for a
    block; tests use it.
    """

    def __init__(
        self,
        stdin: IO[bytes] | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        *,
        stdin_isatty: bool | None = None,
        stdout_isatty: bool | None = None,
        stderr_isatty: bool | None = None,
    ) -> None:
        self._stdin, self._stdout, self._stderr = stdin, stdout, stderr
        self._ttys: dict[str, bool | None] = {
            "stdin": stdin_isatty,
            "stdout": stdout_isatty,
            "stderr": stderr_isatty,
        }
        self.quiet = False
        self.traceback = False
        self.fast_exit = False  # main(): end with os._exit after a read-only command

    @property
    def stdin(self) -> IO[bytes]:
        return self._stdin if self._stdin is not None else sys.stdin.buffer

    @stdin.setter
    def stdin(self, stream: IO[bytes]) -> None:
        self._stdin = stream

    @property
    def stdout(self) -> IO[str]:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def stderr(self) -> IO[str]:
        return self._stderr if self._stderr is not None else sys.stderr

    def _isatty(self, name: str, stream: IO[Any]) -> bool:
        forced = self._ttys[name]
        if forced is not None:
            return forced
        try:
            return stream.isatty()
        except ValueError:  # a closed stream
            return False

    @property
    def stdin_isatty(self) -> bool:
        return self._isatty("stdin", self.stdin)

    @property
    def stdout_isatty(self) -> bool:
        return self._isatty("stdout", self.stdout)

    @property
    def stderr_isatty(self) -> bool:
        return self._isatty("stderr", self.stderr)

    @contextmanager
    def swap(
        self,
        *,
        stdin: IO[bytes] | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        stdin_isatty: bool | None = None,
        stdout_isatty: bool | None = None,
        stderr_isatty: bool | None = None,
    ) -> Iterator[Env]:
        """Use these streams / tty flags (the ones given) for the block, then restore."""
        saved = (self._stdin, self._stdout, self._stderr, dict(self._ttys))
        self._stdin = stdin if stdin is not None else self._stdin
        self._stdout = stdout if stdout is not None else self._stdout
        self._stderr = stderr if stderr is not None else self._stderr
        for name, flag in (("stdin", stdin_isatty), ("stdout", stdout_isatty), ("stderr", stderr_isatty)):
            if flag is not None:
                self._ttys[name] = flag
        try:
            yield self
        finally:
            self._stdin, self._stdout, self._stderr, self._ttys = saved


env = Env()


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


def write(text: str) -> None:
    """Data on stdout, as is."""
    env.stdout.write(text)


def emit_json_lines(rows: Iterable[dict[str, Any]]) -> None:
    import orjson

    out = env.stdout
    for row in rows:
        out.write(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS).decode())
        out.write("\n")
    out.flush()


def _line(prefix: str, msg: str) -> str:
    # Library log callbacks may already carry the program name (for their own stderr default).
    return f"memp: {prefix}{msg.removeprefix('memp: ')}\n"


def info(msg: str) -> None:
    """A progress or summary line on stderr (silenced by --quiet)."""
    if not env.quiet:
        err = env.stderr
        err.write(_line("", msg))
        err.flush()


def warn(msg: str) -> None:
    err = env.stderr
    err.write(_line("warning: ", msg))
    err.flush()


def error(msg: str) -> None:
    err = env.stderr
    err.write(_line("error: ", msg))
    err.flush()


def stdout_console() -> Any:
    from rich.console import Console

    width = None if env.stdout_isatty else int(os.environ.get("COLUMNS", "120"))
    return Console(file=env.stdout, width=width, soft_wrap=False)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(file=env.stderr)


def table(columns: list[str], rows: Iterable[list[str]], title: str | None = None) -> None:
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    stdout_console().print(t)


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar of texts embedded, on stderr when it is a terminal (not with --quiet);
    None otherwise. Shown only once embedding starts, so a sync with nothing to embed is silent."""
    if not env.stderr_isatty or env.quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"memp: {what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task(what, total=total))
        bar.update(task[0], completed=done, total=total)

    try:
        yield update
    finally:
        if task:
            bar.stop()
