"""A script: the abstract procedure memp distills from one trajectory (Mem^p).

A :class:`Script` is what an LLM (or the built-in offline distiller) makes of one
finished run: a general title with ``{variables}``, ordered general steps, what
each variable stood for, preconditions, pitfalls and the task's key phrases.

This module holds the schema (:class:`Script`, :data:`SCRIPT_JSON_SCHEMA`) and the
validation of an LLM's reply (:func:`script_from_reply`, :func:`keywords_from_reply`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memp_cli.redact import shown

MAX_SCRIPT_STEPS = 40
MAX_TEXT_CHARS = 2000
MAX_LIST_ITEMS = 40
MAX_KEYWORDS = 6

# --------------------------------------------------------------------------
# The script schema
# --------------------------------------------------------------------------

SCRIPT_KEYS = ("title", "steps", "variables", "preconditions", "pitfalls", "keywords")


@dataclass(slots=True)
class Script:
    """An abstract procedure distilled from one trajectory."""

    title: str
    steps: list[str]
    variables: dict[str, str] = field(default_factory=dict)
    preconditions: list[str] = field(default_factory=list)
    pitfalls: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "steps": list(self.steps),
            "variables": dict(self.variables),
            "preconditions": list(self.preconditions),
            "pitfalls": list(self.pitfalls),
            "keywords": list(self.keywords),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Script:
        """Strict inverse of :meth:`to_dict`: every key, exact types, nothing else."""
        if not isinstance(d, dict):
            raise ValueError(f"a script must be an object, got {type(d).__name__}")
        missing = [k for k in SCRIPT_KEYS if k not in d]
        if missing:
            raise ValueError(f"script is missing {', '.join(repr(k) for k in missing)}")
        # "generator" is provenance memp adds to a memory's [script] (who wrote it).
        unknown = sorted(str(k) for k in d if k not in SCRIPT_KEYS and k != "generator")
        if unknown:
            raise ValueError(f"script has unknown key(s) {', '.join(repr(k) for k in unknown)}")
        title = d["title"]
        if not isinstance(title, str) or not title.strip():
            raise ValueError('"title" must be a non-empty string')
        steps = d["steps"]
        if not _is_str_list(steps) or not steps:
            raise ValueError('"steps" must be a non-empty list of strings')
        variables = d["variables"]
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise ValueError('"variables" must be an object mapping names to strings')
        for key in ("preconditions", "pitfalls", "keywords"):
            if not _is_str_list(d[key]):
                raise ValueError(f'"{key}" must be a list of strings')
        return cls(
            title=title,
            steps=list(steps),
            variables=dict(variables),
            preconditions=list(d["preconditions"]),
            pitfalls=list(d["pitfalls"]),
            keywords=list(d["keywords"]),
        )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_STR_LIST = {"type": "array", "items": {"type": "string"}}

SCRIPT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {
            "type": "string",
            "description": "one line: the general task with {variables}, "
            'e.g. "clean a {object} and put it in/on a {receptacle}"',
        },
        "steps": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": MAX_SCRIPT_STEPS,
            "description": "ordered general steps using the {variables}",
        },
        "variables": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "variable name (no braces) -> what it stood for in this run, "
            'e.g. {"object": "mug", "receptacle": "coffeemachine 1"}',
        },
        "preconditions": {**_STR_LIST, "description": "what must hold before the procedure applies"},
        "pitfalls": {**_STR_LIST, "description": "mistakes the run shows or invites, and how to avoid them"},
        "keywords": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": MAX_KEYWORDS,
            "description": "2-6 short key phrases of the task, lowercase",
        },
    },
    "required": list(SCRIPT_KEYS),
    "additionalProperties": False,
}

# --------------------------------------------------------------------------
# Validating an LLM's reply
# --------------------------------------------------------------------------

_NUMBERING_RE = re.compile(
    r"^\s*(?:(?:step\s*)?\d{1,3}\s*[.):\-]|step\s*\d{1,3}\b|[-*•·]\s)\s*", re.IGNORECASE
)
_ITEM_KEYS = ("step", "text", "action", "description", "instruction", "content", "value")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][\w\-]*$")


def _check_len(text: str, what: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is {len(text)} characters long (the limit is {MAX_TEXT_CHARS})")
    return text


def _reply_items(value: Any, key: str, *, strip_numbers: bool) -> list[str]:
    """A list of strings from a reply field, tolerating small deviations."""
    if value is None:
        return []
    if isinstance(value, str):
        lines = value.splitlines() if strip_numbers else [value]
        value = [ln for ln in lines if ln.strip()]
    if not isinstance(value, list):
        raise ValueError(f'"{key}" must be a list of strings, got {type(value).__name__}')
    if len(value) > MAX_LIST_ITEMS:
        raise ValueError(f'"{key}" has {len(value)} items (the limit is {MAX_LIST_ITEMS})')
    out: list[str] = []
    for i, item in enumerate(value, 1):
        if isinstance(item, dict):
            texts = [item[k] for k in _ITEM_KEYS if isinstance(item.get(k), str)]
            if not texts:
                raise ValueError(f'"{key}" item {i} is an object without a "step" or "text" string')
            item = texts[0]
        if not isinstance(item, str):
            raise ValueError(f'"{key}" must be a list of strings (item {i} is {type(item).__name__})')
        _check_len(item, f'"{key}" item {i}')
        text = " ".join(item.split())
        if strip_numbers:
            text = _NUMBERING_RE.sub("", text, count=1).strip()
        if not text:
            raise ValueError(f'"{key}" item {i} is empty')
        out.append(text)
    return out


def script_from_reply(obj: Any) -> Script:
    """Validate an LLM's parsed JSON reply as a :class:`Script`.

    Tolerated: the script wrapped as ``{"script": {...}}``; steps given as
    ``{"step": ...}`` objects, as numbered or bulleted strings, or as one
    multi-line string; missing or null optional lists; a keyword string with
    commas; variable names written with braces; numeric variable values;
    missing keywords (derived from the title). Raises :class:`ValueError` with
    a short, precise reason otherwise.
    """
    if isinstance(obj, dict) and "title" not in obj and isinstance(obj.get("script"), dict):
        obj = obj["script"]
    if not isinstance(obj, dict):
        raise ValueError(f"the reply must be a JSON object, got {type(obj).__name__}")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError('"title" must be a non-empty string')
    _check_len(title, '"title"')
    title = " ".join(title.split())

    if "steps" not in obj or obj["steps"] is None:
        raise ValueError('"steps" is missing: it must be a non-empty list of strings')
    steps = _reply_items(obj["steps"], "steps", strip_numbers=True)
    if not steps:
        raise ValueError('"steps" must be a non-empty list of strings')
    if len(steps) > MAX_SCRIPT_STEPS:
        raise ValueError(f'"steps" has {len(steps)} items (the limit is {MAX_SCRIPT_STEPS})')

    raw_vars = obj.get("variables")
    variables: dict[str, str] = {}
    if raw_vars is not None:
        if not isinstance(raw_vars, dict):
            raise ValueError('"variables" must be an object mapping names to strings')
        for name, value in raw_vars.items():
            clean = str(name).strip().strip("{}").strip()
            if not _VAR_NAME_RE.match(clean):
                raise ValueError(f'"variables" has an invalid name {shown(name)}')
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f'"variables" value for {clean!r} must be a string')
            variables[clean] = _check_len(str(value), f'"variables" value for {clean!r}')

    preconditions = _reply_items(obj.get("preconditions"), "preconditions", strip_numbers=True)
    pitfalls = _reply_items(obj.get("pitfalls"), "pitfalls", strip_numbers=True)

    raw_kw = obj.get("keywords")
    if isinstance(raw_kw, str):
        raw_kw = [k for k in re.split(r"[,;\n]", raw_kw) if k.strip()]
    keywords = dedupe_keywords(_reply_items(raw_kw, "keywords", strip_numbers=False))
    if not keywords:
        # the built-in extractor, imported here: it is build code, and imports this module
        from memp_cli.build.builtin.keywords import extract_keywords

        keywords = extract_keywords(fill_variables(title, variables))
    return Script(title, steps, variables, preconditions, pitfalls, keywords[:MAX_KEYWORDS])


def dedupe_keywords(words: Iterable[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for w in words:
        k = " ".join(w.split()).strip(" .,;:").lower()
        if k and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def keywords_from_reply(obj: Any) -> list[str]:
    """Validate ``{"keywords": [...]}`` (or a bare list); :class:`ValueError` with the reason."""
    if isinstance(obj, dict):
        if "keywords" not in obj:
            raise ValueError('the reply must be an object with a "keywords" list')
        obj = obj["keywords"]
    if isinstance(obj, str):
        obj = [k for k in re.split(r"[,;\n]", obj) if k.strip()]
    if not isinstance(obj, list):
        raise ValueError(f'"keywords" must be a list of strings, got {type(obj).__name__}')
    for i, k in enumerate(obj, 1):
        if not isinstance(k, str):
            raise ValueError(f'"keywords" must be a list of strings (item {i} is {type(k).__name__})')
        if len(k) > 200:
            raise ValueError(f'"keywords" item {i} is {len(k)} characters long (the limit is 200)')
    keywords = dedupe_keywords(obj)
    if not keywords:
        raise ValueError('"keywords" is empty')
    return keywords[:MAX_KEYWORDS]


def fill_variables(text: str, variables: dict[str, str]) -> str:
    """Put each variable's recorded value back in place of ``{name}``."""
    return re.sub(r"\{([A-Za-z_][\w\-]*)\}", lambda m: variables.get(m.group(1), m.group(1)), text)
