"""Fault injection: kill a writer at its N-th write point, as SQLite's crash tests do.

A *write point* is a call that changes what a reader sees: ``os.replace`` / ``os.rename`` (every
atomic write ends in one: memp_cli.store.fsutil) and ``os.unlink`` / ``os.remove`` (removing an
old file). :func:`kill_at` makes the N-th of them raise :class:`Killed`, and every one after it
too: a killed process does no cleanup, so the temp file of the interrupted write stays, as it
would after ``kill -9``. :class:`Killed` is a BaseException, so no ``except Exception`` (or
``contextlib.suppress(OSError)``) in memp swallows it.

Typical use, a loop over every write point of an operation::

    for n in itertools.count(1):
        reset_the_store()
        with kill_at(n) as k:
            with contextlib.suppress(Killed):
                operation()
        check_the_store()
        if not k.fired:
            break  # the operation completed: every write point was covered
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

POINTS = ("replace", "rename", "unlink", "remove")


class Killed(BaseException):
    """The simulated kill of the writing process."""


@dataclass
class Kill:
    n: int
    calls: list[tuple[str, str]] = field(default_factory=list)  # (function, path) of each write point
    fired: bool = False

    @property
    def where(self) -> str:
        """The write point the kill hit, e.g. ``replace index/state.json``."""
        if not self.fired:
            return "nowhere (the operation completed)"
        fn, path = self.calls[self.n - 1]
        return f"{fn} {path}"


@contextlib.contextmanager
def kill_at(n: int, *, points: tuple[str, ...] = POINTS) -> Iterator[Kill]:
    """Within the block, the ``n``-th write point (1-based) and every later one raise Killed."""
    kill = Kill(n)
    real = {name: getattr(os, name) for name in points}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            target = args[1] if name in ("replace", "rename") else args[0]
            kill.calls.append((name, _short(target)))
            if len(kill.calls) >= n:
                kill.fired = True
                raise Killed(f"killed at write point {n}: {kill.where}")
            return fn(*args, **kwargs)

        return faulty

    try:
        for name, fn in real.items():
            setattr(os, name, wrap(name, fn))
        yield kill
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def _short(path: Any) -> str:
    """The last two components of a path (``index/state.json``)."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = p.decode(errors="replace")
    return "/".join(p.split(os.sep)[-2:])
