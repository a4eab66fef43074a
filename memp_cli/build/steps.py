"""The concrete steps a memory keeps of a run."""

from __future__ import annotations

from memp_cli.build.text import cut
from memp_cli.model.trajectory import Trajectory


def select_steps(n: int, max_steps: int) -> tuple[list[int], int, list[int]]:
    """(head indices, number omitted, tail indices) so that head + marker + tail <= max_steps."""
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    if n <= max_steps:
        return list(range(n)), 0, []
    keep = max_steps - 1
    head = (keep + 1) // 2
    tail = keep - head
    return list(range(head)), n - head - tail, list(range(n - tail, n))


def trim_steps(t: Trajectory, max_steps: int, max_obs_chars: int) -> list[dict[str, str]]:
    """The concrete steps kept in a proceduralization memory.

    Observations (and thoughts) longer than ``max_obs_chars`` are cut with "…";
    a run longer than ``max_steps`` keeps its head and tail around one marker
    step ``{"action": "…", "observation": "[N steps omitted]"}``.
    """
    head, omitted, tail = select_steps(len(t.steps), max_steps)

    def one(i: int) -> dict[str, str]:
        s = t.steps[i]
        d = {
            "action": cut(s.action, max(max_obs_chars, 1000)),
            "observation": cut(s.observation, max_obs_chars),
        }
        if s.thought:
            d["thought"] = cut(s.thought, max_obs_chars)
        return d

    out = [one(i) for i in head]
    if omitted:
        out.append({"action": "…", "observation": f"[{omitted} steps omitted]"})
    out.extend(one(i) for i in tail)
    return out
