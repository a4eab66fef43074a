"""The prompts memp sends to an LLM: loading, checking and filling them.

The built-in prompts ship in ``memp_cli/build/prompts/`` (``script.md``,
``keywords.md``); a store may override them in its ``prompts/`` folder.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from memp_cli.errors import ConfigError
from memp_cli.model.script import SCRIPT_JSON_SCHEMA
from memp_cli.model.steps import MIN_ACTION_CHARS, select_steps
from memp_cli.model.text import cut, one_line
from memp_cli.model.trajectory import Trajectory

PROMPT_NAMES = ("script", "keywords", "reflect", "merge")
# prompt name -> (placeholders it may use, placeholders it must use)
_PROMPT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "script": (
        frozenset({"task", "initial_observation", "trajectory", "n_steps", "outcome", "schema"}),
        frozenset({"trajectory"}),
    ),
    "keywords": (frozenset({"task"}), frozenset({"task"})),
    "reflect": (
        frozenset({"script", "task", "failed", "outcome", "success", "schema"}),
        frozenset({"script", "failed"}),
    ),
    "merge": (frozenset({"scripts", "schema"}), frozenset({"scripts"})),
}
_MARKER_RE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_HEADER_LINE_RE = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*[:=]\s*(.*?)\s*$")
_SECTION_RE = re.compile(r"^##\s+(system|user)\s*$", re.IGNORECASE)


@dataclass(slots=True)
class Prompt:
    name: str
    version: str
    system: str
    user: str
    source: str  # "builtin" or the override file's path


def parse_prompt(name: str, text: str, source: str) -> Prompt:
    """Parse a prompt file; :class:`ValueError` says what is wrong.

    Format: a header between ``---`` lines with ``version: <name>`` (or
    ``version = "<name>"``), then a ``## system`` and a ``## user`` section.
    Placeholders are ``{{name}}`` markers; single braces are plain text.
    """
    lines = text.lstrip("\ufeff").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines or lines[0].strip() != "---":
        raise ValueError('it must start with a "---" header line holding "version: ..."')
    close = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
    if close is None:
        raise ValueError('the header is not closed by a "---" line')
    header: dict[str, str] = {}
    for i in range(1, close):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _HEADER_LINE_RE.match(line)
        if not m:
            raise ValueError(f"line {i + 1}: expected 'key: value' in the header, got {line.strip()!r}")
        header[m.group(1).lower()] = m.group(2).strip().strip("\"'")
    i = close
    version = header.get("version", "")
    if not version:
        raise ValueError('the header has no "version: ..." line')
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(lines[i + 1 :], i + 2):
        m = _SECTION_RE.match(line.strip())
        if m:
            current = m.group(1).lower()
            if current in sections:
                raise ValueError(f"line {lineno}: a second '## {current}' section")
            sections[current] = []
        elif current is None:
            if line.strip():
                raise ValueError(f"line {lineno}: text before the first '## system' or '## user' section")
        else:
            sections[current].append(line)
    if "user" not in sections:
        raise ValueError("there is no '## user' section")
    system = "\n".join(sections.get("system", [])).strip("\n").rstrip()
    user = "\n".join(sections["user"]).strip("\n").rstrip()
    if not user.strip():
        raise ValueError("the '## user' section is empty")
    allowed, required = _PROMPT_FIELDS[name]
    used = {m.group(1) for m in _MARKER_RE.finditer(system + "\n" + user)}
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; "
            f"this prompt can use {', '.join('{{' + a + '}}' for a in sorted(allowed))}"
        )
    missing = sorted(required - used)
    if missing:
        raise ValueError(f"it must use the placeholder(s) {', '.join('{{' + m + '}}' for m in missing)}")
    return Prompt(name=name, version=version, system=system, user=user, source=source)


def load_prompt(name: str, override_dir: Path | None = None) -> Prompt:
    """The prompt ``name``: ``<override_dir>/<name>.md`` if it exists, else the built-in one.

    A broken override raises :class:`ConfigError` naming the file and the problem.
    """
    if name not in _PROMPT_FIELDS:
        raise ValueError(f"unknown prompt {name!r}; choose from {', '.join(PROMPT_NAMES)}")
    if override_dir is not None:
        path = Path(override_dir) / f"{name}.md"
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"{path}: cannot read the prompt override ({e})",
                    hint="fix the file, or delete it to use the built-in prompt",
                ) from e
            try:
                return parse_prompt(name, text, str(path))
            except ValueError as e:
                raise ConfigError(
                    f"{path}: broken prompt override: {e}",
                    hint="fix the file, or delete it to use the built-in prompt",
                ) from e
    resource = importlib.resources.files("memp_cli.build.prompts").joinpath(f"{name}.md")
    text = resource.read_text(encoding="utf-8")
    try:
        return parse_prompt(name, text, "builtin")
    except ValueError as e:  # a packaging bug, not a user error
        raise ConfigError(f"built-in prompt {name}.md is broken: {e}") from e


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` markers in one pass (values are never re-scanned)."""
    return _MARKER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _messages(prompt: Prompt, values: dict[str, str]) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if prompt.system.strip():
        messages.append({"role": "system", "content": _fill(prompt.system, values)})
    messages.append({"role": "user", "content": _fill(prompt.user, values)})
    return messages


def _outcome(t: Trajectory) -> str:
    reward = f" (reward {t.reward:g})" if t.reward is not None else ""
    if t.success is True:
        return "success" + reward
    if t.success is False:
        return "failure" + reward
    return "unknown: the run has no success label" + (
        f"; reward {t.reward:g}" if t.reward is not None else ""
    )


def _render_trajectory(t: Trajectory, max_steps: int, max_obs_chars: int) -> str:
    """The run as the model reads it: numbered steps, the middle of a long run left out.

    It keeps the steps a memory would (:func:`select_steps`); its own marker also
    names the step numbers left out, for the model (changing it would change every
    prompt, and so miss every reply in the response cache).
    """
    head, tail = select_steps(len(t.steps), max_steps)
    omitted = len(t.steps) - len(head) - len(tail)
    lines: list[str] = []

    def block(i: int) -> None:
        s = t.steps[i]
        prefix = f"{i + 1}. "
        pad = " " * len(prefix)
        if s.thought.strip():
            lines.append(prefix + "(thought: " + cut(one_line(s.thought), max_obs_chars) + ")")
            prefix = pad
        lines.append(prefix + "> " + cut(one_line(s.action), max(max_obs_chars, MIN_ACTION_CHARS)))
        obs = cut(s.observation.strip(), max_obs_chars)
        obs_lines = [ln.strip() for ln in obs.splitlines() if ln.strip()] or ["(no observation)"]
        lines.extend(pad + ln for ln in obs_lines)

    for i in head:
        block(i)
    if omitted:
        first = len(head) + 1
        lines.append(f"… [{omitted} steps omitted: {first}-{first + omitted - 1}] …")
    for i in tail:
        block(i)
    return "\n".join(lines) if lines else "(no steps)"


def script_messages(
    t: Trajectory, prompt: Prompt, *, max_steps: int = 60, max_obs_chars: int = 300
) -> list[dict[str, str]]:
    """Chat messages asking an LLM to distill a script from ``t``."""
    initial = ""
    if t.initial_observation.strip():
        initial = "Initial observation: " + cut(one_line(t.initial_observation), max_obs_chars * 2) + "\n\n"
    values = {
        "task": one_line(t.task),
        "initial_observation": initial,
        "trajectory": _render_trajectory(t, max_steps, max_obs_chars),
        "n_steps": str(len(t.steps)),
        "outcome": _outcome(t),
        "schema": orjson.dumps(SCRIPT_JSON_SCHEMA, option=orjson.OPT_INDENT_2).decode(),
    }
    return _messages(prompt, values)


def keyword_messages(task: str, prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages asking an LLM for the keywords of ``task``."""
    return _messages(prompt, {"task": one_line(task)})


def reflect_messages(
    script: dict[str, Any],
    failed: Trajectory,
    success: Trajectory | None,
    prompt: Prompt,
    schema: dict[str, Any],
    *,
    max_steps: int = 40,
    max_obs_chars: int = 200,
) -> list[dict[str, str]]:
    """Chat messages asking an LLM to correct ``script`` from the ``failed`` run (and a
    ``success`` of a similar task, when there is one)."""
    shown = {
        k: v
        for k, v in script.items()
        if k in ("title", "steps", "variables", "preconditions", "pitfalls", "keywords")
    }
    example = "(The store has no successful run of a similar task.)"
    if success is not None:
        example = (
            f"A successful run of a similar task. Task: {one_line(success.task)}\n"
            + _render_trajectory(success, max_steps, max_obs_chars)
        )
    values = {
        "script": orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode(),
        "task": one_line(failed.task),
        "failed": _render_trajectory(failed, max_steps, max_obs_chars),
        "outcome": _outcome(failed),
        "success": example,
        "schema": orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode(),
    }
    return _messages(prompt, values)


def merge_messages(scripts: list[dict[str, Any]], prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages asking an LLM to merge near-duplicate ``scripts`` (best rated first)."""
    keys = ("title", "steps", "variables", "preconditions", "pitfalls", "keywords")
    shown = [{k: v for k, v in s.items() if k in keys} for s in scripts]
    values = {
        "scripts": orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode(),
        "schema": orjson.dumps(SCRIPT_JSON_SCHEMA, option=orjson.OPT_INDENT_2).decode(),
    }
    return _messages(prompt, values)
