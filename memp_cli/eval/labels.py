"""Task labels for retrieval evaluation: which memories count as relevant to a query.

A query and a memory each get a :class:`TaskLabel` (a task type, and for ALFWorld the object the
task is about). :func:`grade` compares two labels: 2 = same type and same object, 1 = same type,
0 = other. Where the data carries no type, :func:`task_type_of` reads it from an ALFWorld task
text; other domains pass their own ``task_type`` (a shared type label is then the relevance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The task types :func:`task_type_of` returns (ALFWorld's six templates).
ALFWORLD_TYPES = ("clean", "heat", "cool", "puttwo", "examine", "put")

_WORDS = re.compile(r"[a-z]+")
_TOKENS = re.compile(r"[a-z0-9]+")

_OBJECT_PATTERNS = (
    # put two X in Y / find two X and put them in Y
    re.compile(r"^(?:put|find) two (\w+)"),
    # put a/some [clean|hot|cool|cold] X in/on Y; clean/heat/cool/find some X and put it in Y
    re.compile(r"^(?:clean|heat|cool|find|put) (?:a|an|some) (?:(?:clean|hot|cool|cold) )?(\w+)"),
    # look at X under the desklamp / examine the X with the desklamp
    re.compile(r"^(?:look at|examine) (?:(?:the|a|an|some) )?(\w+)"),
)


def norm_task(text: str) -> str:
    """A task text as a key: lowercased, whitespace collapsed, trailing period dropped.

    Two tasks with the same key are the same task (used to dedupe queries and to tell whether a
    query is new, i.e. not already a memory's task).
    """
    return " ".join(text.lower().split()).rstrip(".").strip()


def task_type_of(text: str) -> str:
    """ALFWorld task type from the task text (for data without a label).

    First match wins, over the ``[a-z]+`` words of the text: "clean" -> clean; "heat" or "hot" ->
    heat; "cool" or "cold" -> cool; "two" -> puttwo; "examine" or the phrase "look at" (the
    "... under/with the desklamp" tasks) -> examine; anything else -> put.
    """
    low = text.lower()
    words = set(_WORDS.findall(low))
    if "clean" in words:
        return "clean"
    if words & {"heat", "hot"}:
        return "heat"
    if words & {"cool", "cold"}:
        return "cool"
    if "two" in words:
        return "puttwo"
    if "examine" in words or "look at" in low:
        return "examine"
    return "put"


def target_object(text: str) -> str | None:
    """The object an ALFWorld task is about ("mug" in "put a clean mug in coffeemachine."), or None.

    The first word after the article / number / state adjective in the six ALFWorld templates;
    a trailing plural "s" is not stripped (ALFWorld object names are singular).
    """
    low = " ".join(text.lower().split())
    for pat in _OBJECT_PATTERNS:
        m = pat.match(low)
        if m:
            return m.group(1)
    return None


@dataclass(frozen=True)
class TaskLabel:
    """What a task is, for relevance: its type and, when known, its target object."""

    type: str
    object: str | None = None


def task_label(text: str, task_type: str | None = None) -> TaskLabel:
    """The label of a task text: ``task_type`` when the data has one, else the ALFWorld rule."""
    return TaskLabel(task_type or task_type_of(text), target_object(text))


def mentions(text: str, word: str) -> bool:
    """Whether ``text`` has ``word`` as a token (``[a-z0-9]+``, case-insensitive), either one
    with a plural ``s``/``es`` more than the other ("mug" ~ "mugs", "boxes" ~ "box")."""
    w = word.lower().strip()
    if not w:
        return False
    forms = {w, w + "s", w + "es"}
    forms |= {w[:-2]} if w.endswith("es") else set()
    forms |= {w[:-1]} if w.endswith("s") else set()
    return not forms.isdisjoint(_TOKENS.findall(text.lower()))


def grade(query: TaskLabel, item: TaskLabel) -> int:
    """Graded relevance of ``item`` to ``query``: 2 = same type and same (known) object,
    1 = same type, 0 = another type."""
    if item.type != query.type:
        return 0
    return 2 if (query.object is not None and item.object == query.object) else 1
