"""Run ``memp ARGS...`` and kill it with SIGKILL (a real ``kill -9``) at its N-th write point.

    MEMP_KILL_AT=N python tests/killpoint.py ARGS...    # dies at write point N (if it gets there)
    MEMP_KILL_COUNT=FILE python tests/killpoint.py ARGS...    # lists them in FILE, one a line

A *write point* is a call that changes what is on disk or makes it durable: ``os.write`` (the
journal, the outcome ledger, histories: :mod:`memp_cli.store.appendlog`), ``os.fsync`` (every
atomic write fsyncs its temp file before the rename), ``os.replace`` / ``os.rename`` and
``os.unlink`` / ``os.remove``. The process is killed *before* the call runs, by the kernel, as a
``kill -9`` from outside would: no ``finally``, no ``atexit``, no flush, the lock dropped by the
kernel. Unlike tests/faults.py (an exception in-process), nothing of memp's own cleanup runs.
The kill lands in whichever thread reaches the point (distill writes memory files in threads).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

POINTS = ("write", "fsync", "replace", "rename", "unlink", "remove")


def install(kill_at: int, count_file: str | None, where_file: str | None = None) -> None:
    lock = threading.Lock()
    count = [0]
    seen: list[str] = []  # each write point, when counting

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def point(*args: Any, **kwargs: Any) -> Any:
            with lock:
                count[0] += 1
                n = count[0]
                if count_file:
                    seen.append(f"{name} {_what(name, args)}")
                if kill_at and n >= kill_at:
                    if where_file:  # which point it was, for the report (not an os.write)
                        with open(where_file, "w") as f:
                            f.write(f"{name} {_what(name, args)}")
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return point

    for name in POINTS:
        setattr(os, name, wrap(name, getattr(os, name)))
    if count_file:
        real_write = open  # the count is written with the real, unwrapped file API

        def save() -> None:
            with real_write(count_file, "w") as f:
                f.write("".join(line + "\n" for line in seen))

        atexit.register(save)


def _what(name: str, args: tuple[Any, ...]) -> str:
    """The file a write point touches: the last two parts of its path (a descriptor's, via /proc)."""
    target: Any = args[1] if name in ("replace", "rename") else args[0] if args else ""
    if isinstance(target, int):
        try:
            target = os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            return f"fd {target}"
    p = os.fsdecode(os.fspath(target))
    return "/".join(p.split(os.sep)[-2:])


def main() -> None:
    env = os.environ.get
    install(int(env("MEMP_KILL_AT") or 0), env("MEMP_KILL_COUNT"), env("MEMP_KILL_WHERE"))
    from memp_cli.cli import main as memp_main

    sys.argv = ["memp", *sys.argv[1:]]
    memp_main()


if __name__ == "__main__":
    main()
