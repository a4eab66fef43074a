"""Small text helpers shared by the distillers, the prompts and the step trimmer."""

from __future__ import annotations


def cut(text: str, limit: int) -> str:
    """Cut to at most ``limit`` characters, marking the cut with "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    return text[: limit - 1].rstrip() + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())
