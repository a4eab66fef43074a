"""Rendering memories as text an agent reads: the ``--format prompt`` block.

A run that failed is never shown as a way to do its task: a failed memory is rendered as a
warning (what went wrong, its last steps), never under "Steps taken:" or "Example run:", and a
failed near-duplicate collapsed into a hit (:mod:`memp_cli.retrieve.collapse`) becomes a pitfall
line of that hit. A budget too small for even one memory gives no block at all
(:func:`pack_prompt` says which budget would fit one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memp_cli.model.memory import Memory
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


# A failed run shows at most its last this many steps: where it went wrong.
FAILED_TAIL = 3
# At most this many failed near-duplicates become pitfall lines of a hit (the rest are counted).
FAILED_PITFALLS = 3


def _script_lines(script: dict[str, Any], extra_pitfalls: Sequence[str] = ()) -> list[str]:
    lines: list[str] = []
    if script.get("title"):
        lines.append(f"Procedure: {script['title']}")
    for i, step in enumerate(script.get("steps", []), 1):
        lines.append(f"  {i}. {step}")
    for label, key in (("Preconditions", "preconditions"), ("Pitfalls", "pitfalls")):
        items = [*(script.get(key) or []), *(extra_pitfalls if key == "pitfalls" else ())]
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


def what_went_wrong(m: Memory) -> str:
    """One line on a failed run: its own first pitfall (the distiller's diagnosis), else how it
    ended (its last actions)."""
    pitfalls = (m.script or {}).get("pitfalls") or []
    if pitfalls:
        return str(pitfalls[0])
    actions = [s.get("action", "") for s in m.steps if omitted_count(s) is None][-2:]
    if not actions:
        return "it did not succeed"
    return "it did not succeed; it ended with " + ", ".join(f"`{a}`" for a in actions)


def similar_note(hit: Hit) -> str:
    """ " (+2 similar runs, 1 failed)" for a hit with collapsed near-duplicates."""
    n = len(hit.duplicates)
    if not n:
        return ""
    failed = sum(d.memory.success is False for d in hit.duplicates)
    return f" (+{n} similar run{'s' if n > 1 else ''}{f', {failed} failed' if failed else ''})"


def _failed_lines(m: Memory, max_steps: int | None, obs_chars: int) -> list[str]:
    """A failed run as a warning: what went wrong and its last steps, never as a recipe."""
    lines = ["Warning: a run of this task failed; it is not a way to do it. Avoid what it did:"]
    lines.extend(f"  - {x}" for x in (m.script or {}).get("pitfalls") or [])
    real = [s for s in m.steps if omitted_count(s) is None]
    total = sum(omitted_count(s) or 1 for s in m.steps)
    n_tail = min(FAILED_TAIL, max_steps if max_steps is not None else FAILED_TAIL, len(real))
    if n_tail:
        lines.append(f"Its last {n_tail} of {total} steps, where it went wrong:")
        lines.extend(_step_lines(real[-n_tail:], obs_chars))
    return lines


def render_memory(hit: Hit, n: int, *, max_steps: int | None = None, obs_chars: int = 200) -> str:
    """One memory; ``max_steps`` trims its steps as distill does (head and tail around a marker).

    A failed memory is a warning (:func:`_failed_lines`); the failed near-duplicates of a hit
    are pitfall lines of it.
    """
    m = hit.memory
    outcome = {True: "succeeded", False: "failed", None: "outcome unknown"}[m.success]
    head = f"## Memory {n} [{m.kind}, id {m.id}, score {hit.score:.2f}]: {m.task} ({outcome})"
    lines = [head + similar_note(hit)]
    if m.success is False:
        lines.extend(_failed_lines(m, max_steps, obs_chars))
        return "\n".join(lines)
    failed = [d.memory for d in hit.duplicates if d.memory.success is False]
    pitfalls = [f"a similar run failed ({d.id}): {what_went_wrong(d)}" for d in failed[:FAILED_PITFALLS]]
    if len(failed) > FAILED_PITFALLS:
        pitfalls.append(f"{len(failed) - FAILED_PITFALLS} more similar runs failed")
    if m.script:
        lines.extend(_script_lines(m.script, pitfalls))
    elif pitfalls:
        lines.append("Pitfalls:")
        lines.extend(f"  - {x}" for x in pitfalls)
    if m.steps:
        steps = m.steps if max_steps is None else trim_steps(m.steps, max_steps)
        lines.append("Steps taken:" if m.kind == "trajectory" else "Example run:")
        lines.extend(_step_lines(steps, obs_chars))
    return "\n".join(lines)


@dataclass
class Packed:
    """What :func:`pack_prompt` made of the hits."""

    text: str  # the block ("" when no memory fits, or there are none)
    shown: int  # how many memories it holds
    needed: int  # the smallest budget that holds the first memory (0 without hits)


def _shortest(hit: Hit, n: int) -> str:
    """The memory as far as packing can shorten it (as :func:`pack_prompt` does)."""
    if hit.memory.steps:
        return render_memory(hit, n, max_steps=1, obs_chars=120)
    return render_memory(hit, n)


def pack_prompt(hits: Sequence[Hit], *, max_tokens: int = 1500) -> Packed:
    """Pack memories, best first, into at most ``max_tokens`` (estimated).

    A memory that does not fit whole keeps fewer of its steps, the first and the
    last around one "[... N steps omitted ...]" line, down to that line alone;
    when even that does not fit, packing stops. When not even the first memory
    fits, the block is empty (no header promising memories that do not follow).
    """
    if not hits:
        return Packed("", 0, 0)
    parts = [PROMPT_HEADER]
    header = estimate_tokens(PROMPT_HEADER)
    used = header
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
    needed = header + estimate_tokens(_shortest(hits[0], 1)) + 1
    shown = len(parts) - 1
    return Packed("\n\n".join(parts) + "\n" if shown else "", shown, needed)


def render_prompt(hits: Sequence[Hit], *, max_tokens: int = 1500) -> str:
    """The ``--format prompt`` block of ``hits`` (see :func:`pack_prompt`)."""
    return pack_prompt(hits, max_tokens=max_tokens).text
