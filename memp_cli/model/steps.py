"""The one step trimmer: which concrete steps of a run a memory keeps, and how they are cut.

Every policy that keeps steps (``trajectory``, ``proceduralization``) and the
``--format prompt`` renderer, when it shortens a memory to fit a token budget, use
:func:`trim_steps`: a run longer than ``max_steps`` keeps its first and last steps
around ONE marker step, :func:`omitted_step`::

    {"action": "[... 12 steps omitted ...]", "observation": ""}

A marker stands for the steps it replaced, so trimming trimmed steps again counts
them all (:func:`omitted_count`). Memory files keep loading whatever their steps
hold: a marker is an ordinary step; only the count reads it. Files written before
memp had one trimmer may hold the proceduralization policy's old marker,
``{"action": "…", "observation": "[12 steps omitted]"}``, which counts the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from memp_cli.model.text import cut

MIN_ACTION_CHARS = 1000  # an action is cut at max(max_chars, this): it is the step's point
_MARKER_RE = re.compile(r"^\[\.\.\. (\d+) steps omitted \.\.\.\]$")
_OLD_MARKER_RE = re.compile(r"^\[(\d+) steps omitted\]$")  # proceduralization memories, memp <= 0.1


def omitted_step(n: int) -> dict[str, str]:
    """The step that stands for ``n`` omitted steps."""
    return {"action": f"[... {n} steps omitted ...]", "observation": ""}


def omitted_count(step: Mapping[str, str]) -> int | None:
    """How many steps ``step`` stands for, if it is a marker (the current one or the old one)."""
    action, observation = step.get("action", ""), step.get("observation", "")
    m = _MARKER_RE.match(action) if not observation else None
    if m is None and action == "…":
        m = _OLD_MARKER_RE.match(observation)
    return int(m.group(1)) if m else None


def select_steps(n: int, max_steps: int) -> tuple[list[int], list[int]]:
    """(head, tail) indices of ``n`` steps to keep so that head + marker + tail <= ``max_steps``.

    Everything between head and tail is omitted (nothing when ``n <= max_steps``).
    """
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    if n <= max_steps:
        return list(range(n)), []
    keep = max_steps - 1
    head = (keep + 1) // 2
    tail = keep - head
    return list(range(head)), list(range(n - tail, n))


def trim_steps(
    steps: Sequence[Mapping[str, str]], max_steps: int, max_chars: int | None = None
) -> list[dict[str, str]]:
    """At most ``max_steps`` steps: head and tail around one :func:`omitted_step`.

    With ``max_chars``, observations and thoughts are stripped and cut to that many
    characters ("…" marks a cut), actions to ``max(max_chars, 1000)``; other keys (a
    hand edit may add some) are kept as they are.
    """
    head, tail = select_steps(len(steps), max_steps)

    def one(step: Mapping[str, str]) -> dict[str, str]:
        d = dict(step)
        if max_chars is None or omitted_count(step) is not None:
            return d
        if "action" in d:
            d["action"] = cut(d["action"], max(max_chars, MIN_ACTION_CHARS))
        for key in ("observation", "thought"):
            if key in d:
                d[key] = cut(d[key].strip(), max_chars)
        return d

    out = [one(steps[i]) for i in head]
    if len(head) + len(tail) < len(steps):
        middle = steps[len(head) : len(steps) - len(tail)]
        out.append(omitted_step(sum(omitted_count(s) or 1 for s in middle)))
    out.extend(one(steps[i]) for i in tail)
    return out
