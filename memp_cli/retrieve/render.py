"""Rendering memories as text an agent reads: the ``--format prompt`` block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memp_cli.model.steps import omitted_count, omitted_step, trim_steps
from memp_cli.model.text import cut
from memp_cli.retrieve.retriever import Hit

PROMPT_HEADER = (
    "Procedural memory: how similar tasks were done before. Adapt the procedure to the "
    "current task; the concrete steps are examples, not commands to repeat blindly."
)


def estimate_tokens(text: str) -> int:
    """A fast, model-free token estimate (about 4 characters per token)."""
    return (len(text) + 3) // 4


def _script_lines(script: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if script.get("title"):
        lines.append(f"Procedure: {script['title']}")
    for i, step in enumerate(script.get("steps", []), 1):
        lines.append(f"  {i}. {step}")
    for label, key in (("Preconditions", "preconditions"), ("Pitfalls", "pitfalls")):
        items = script.get(key) or []
        if items:
            lines.append(f"{label}:")
            lines.extend(f"  - {x}" for x in items)
    return lines


def _step_lines(steps: Sequence[dict[str, str]], obs_chars: int) -> list[str]:
    lines = []
    for s in steps:
        omitted = omitted_count(s)
        if omitted is not None:  # never shown as an action taken
            lines.append(f"  {omitted_step(omitted)['action']}")
            continue
        if s.get("thought"):
            lines.append(f"  think: {s['thought']}")
        lines.append(f"  > {s.get('action', '')}")
        obs = " ".join(s.get("observation", "").split())
        if obs:
            lines.append(f"    {cut(obs, obs_chars)}")
    return lines


def render_memory(hit: Hit, n: int, *, max_steps: int | None = None, obs_chars: int = 200) -> str:
    """One memory; ``max_steps`` trims its steps as distill does (head and tail around a marker)."""
    m = hit.memory
    outcome = {True: "succeeded", False: "failed", None: "outcome unknown"}[m.success]
    head = f"## Memory {n} [{m.kind}, id {m.id}, score {hit.score:.2f}]: {m.task} ({outcome})"
    lines = [head]
    if m.script:
        lines.extend(_script_lines(m.script))
    if m.steps:
        steps = m.steps if max_steps is None else trim_steps(m.steps, max_steps)
        lines.append("Steps taken:" if m.kind == "trajectory" else "Example run:")
        lines.extend(_step_lines(steps, obs_chars))
    return "\n".join(lines)


def render_prompt(hits: Sequence[Hit], *, max_tokens: int = 1500) -> str:
    """Pack memories, best first, into at most ``max_tokens`` (estimated).

    A memory that does not fit whole keeps fewer of its steps, the first and the
    last around one "[... N steps omitted ...]" line, down to that line alone;
    when even that does not fit, packing stops.
    """
    if not hits:
        return ""
    parts = [PROMPT_HEADER]
    used = estimate_tokens(PROMPT_HEADER)
    for n, hit in enumerate(hits, 1):
        text = render_memory(hit, n)
        cost = estimate_tokens(text) + 1
        if used + cost > max_tokens:
            n_steps = len(hit.memory.steps)
            for max_steps in range(min(n_steps, max(n_steps - 1, 1)), 0, -1):
                text = render_memory(hit, n, max_steps=max_steps, obs_chars=120)
                cost = estimate_tokens(text) + 1
                if used + cost <= max_tokens:
                    break
            else:
                break
        parts.append(text)
        used += cost
    return "\n\n".join(parts) + "\n"
