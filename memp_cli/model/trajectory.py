"""Trajectories: the agent runs memp learns from.

A trajectory is a task, the steps the agent took (action, observation,
optional thought) and the outcome. This module normalizes the record shapes
memp accepts into one :class:`Trajectory`, gives each a stable content-derived
id, and reads JSONL streams line by line, reporting bad lines as
``file:line: what is wrong`` without losing the good ones.

Accepted shapes (detected per line, or forced with ``fmt``):

- ``native``: ``{"task_id"|"id", "task", "steps": [{"action", "observation",
  "thought"?}], "success", "reward", "memories_used"?}``
- ``openai``: ``{"messages": [{"role", "content"}...], "success"?, "reward"?}``;
  the task is the first user turn, each assistant turn an action and the
  following user/tool turn its observation.
- ``memp``: the Mem^p reference record ``{"query", "trajectory", "reward"}``
  where ``trajectory`` is a list of steps or a ReAct-style text.
- ``conversations``: AgentInstruct/ETO ``{"conversations": [{"from", "value"}]}``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from memp_cli.errors import InputError

FORMATS = ("auto", "native", "openai", "memp", "conversations")

MAX_LINE_BYTES = 16 * 1024 * 1024


class RecordError(ValueError):
    """A record that cannot be read as a trajectory; the message says why."""


@dataclass(slots=True)
class Step:
    action: str
    observation: str = ""
    thought: str = ""

    def to_dict(self) -> dict[str, str]:
        d = {"action": self.action, "observation": self.observation}
        if self.thought:
            d["thought"] = self.thought
        return d


@dataclass(slots=True)
class Trajectory:
    task: str
    steps: list[Step]
    success: bool | None = None
    reward: float | None = None
    task_id: str | None = None
    task_type: str | None = None
    initial_observation: str = ""
    memories_used: list[str] = field(default_factory=list)
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = trajectory_id(self)

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON form; ``id`` first so segment scans stay cheap."""
        d: dict[str, Any] = {"id": self.id, "task": self.task}
        if self.task_id is not None:
            d["task_id"] = self.task_id
        if self.task_type is not None:
            d["task_type"] = self.task_type
        if self.initial_observation:
            d["initial_observation"] = self.initial_observation
        d["steps"] = [s.to_dict() for s in self.steps]
        d["success"] = self.success
        d["reward"] = self.reward
        if self.memories_used:
            d["memories_used"] = list(self.memories_used)
        if self.source is not None:
            d["source"] = self.source
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> Trajectory:
        return cls(
            id=d["id"],
            task=d["task"],
            task_id=d.get("task_id"),
            task_type=d.get("task_type"),
            initial_observation=d.get("initial_observation", ""),
            steps=[Step(s["action"], s.get("observation", ""), s.get("thought", "")) for s in d["steps"]],
            success=d.get("success"),
            reward=d.get("reward"),
            memories_used=list(d.get("memories_used", [])),
            source=d.get("source"),
            extra=dict(d.get("extra", {})),
        )


def trajectory_id(t: Trajectory) -> str:
    """A stable id from the content that defines a run (not its labels).

    The same run ingested twice, even under another ``task_id`` or with
    different extra keys, gets the same id and is stored once.
    """
    canon = orjson.dumps(
        [
            t.task,
            t.initial_observation,
            [[s.action, s.observation, s.thought] for s in t.steps],
            t.success,
            t.reward,
            sorted(t.memories_used),
        ]
    )
    return "t" + hashlib.sha256(canon).hexdigest()[:15]


# --------------------------------------------------------------------------
# Record shapes
# --------------------------------------------------------------------------

_KNOWN_NATIVE = {
    "task_id",
    "id",
    "task",
    "task_type",
    "initial_observation",
    "steps",
    "success",
    "reward",
    "memories_used",
    "source",
}


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"{what} must be a string, got {type(value).__name__}")


def _outcome(obj: dict[str, Any]) -> tuple[bool | None, float | None]:
    success = obj.get("success")
    reward = obj.get("reward")
    if success is not None and not isinstance(success, bool):
        if success in (0, 1):
            success = bool(success)
        else:
            raise RecordError(f'"success" must be true, false or null, got {success!r}')
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise RecordError(f'"reward" must be a number or null, got {reward!r}')
        reward = float(reward)
        if reward != reward:  # NaN
            raise RecordError('"reward" is NaN')
    if success is None and reward is not None and "success" not in obj:
        success = reward >= 1.0
    return success, reward


def _task(value: Any, what: str = '"task"') -> str:
    task = _str(value, what).strip()
    if not task:
        raise RecordError(f"{what} is missing or empty")
    return task


def _memories_used(obj: dict[str, Any]) -> list[str]:
    used = obj.get("memories_used") or []
    if not isinstance(used, list) or not all(isinstance(u, str) for u in used):
        raise RecordError('"memories_used" must be a list of memory ids (strings)')
    return used


def parse_native(obj: dict[str, Any]) -> Trajectory:
    steps_raw = obj.get("steps")
    if not isinstance(steps_raw, list):
        raise RecordError('"steps" must be a list of {"action", "observation"} objects')
    steps: list[Step] = []
    for i, s in enumerate(steps_raw, 1):
        if isinstance(s, str):
            steps.append(Step(action=s))
            continue
        if not isinstance(s, dict):
            raise RecordError(f"step {i} must be an object, got {type(s).__name__}")
        action = _str(s.get("action"), f'step {i} "action"')
        if not action and not s.get("thought"):
            raise RecordError(f'step {i} has no "action"')
        steps.append(
            Step(
                action=action,
                observation=_str(s.get("observation"), f'step {i} "observation"'),
                thought=_str(s.get("thought"), f'step {i} "thought"'),
            )
        )
    success, reward = _outcome(obj)
    task_id = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=_task(obj.get("task")),
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if task_id is None else _str(task_id, '"task_id"'),
        task_type=obj.get("task_type") if isinstance(obj.get("task_type"), str) else None,
        initial_observation=_str(obj.get("initial_observation"), '"initial_observation"'),
        memories_used=_memories_used(obj),
        source=obj.get("source") if isinstance(obj.get("source"), str) else None,
        extra={k: v for k, v in obj.items() if k not in _KNOWN_NATIVE},
    )


_TASK_MARKERS = ("Your task is to:", "Your task is to", "Task:", "Instruction:")


def _split_task(text: str) -> tuple[str, str]:
    """Split a first user turn into (task, preceding observation)."""
    for marker in _TASK_MARKERS:
        pos = text.rfind(marker)
        if pos >= 0:
            task = text[pos + len(marker) :].strip()
            task = task.split("\n", 1)[0].strip()
            if task:
                return task, text[:pos].strip()
    return text.strip(), ""


_ACTION_RE = re.compile(r"^\s*Action\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_THOUGHT_RE = re.compile(
    r"^\s*Thought\s*:\s*(.*?)(?=^\s*Action\s*:|\Z)", re.IGNORECASE | re.MULTILINE | re.DOTALL
)


def _turn_to_step(content: str) -> Step:
    """An agent turn in ReAct style (``Thought: ... Action: ...``) or plain."""
    m = _ACTION_RE.search(content)
    if m:
        thought_m = _THOUGHT_RE.search(content)
        thought = thought_m.group(1).strip() if thought_m else ""
        return Step(action=m.group(1).strip(), thought=thought)
    return Step(action=content.strip())


def _dialogue_to_trajectory(turns: list[tuple[str, str]], obj: dict[str, Any], what: str) -> Trajectory:
    """turns: (role in {system,user,assistant}, text). Task = first user turn."""
    first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
    if first_user is None:
        raise RecordError(f"{what} has no user turn to take the task from")
    task, initial = _split_task(turns[first_user][1])
    if not task:
        raise RecordError(f"{what}: the first user turn is empty")
    steps: list[Step] = []
    for role, text in turns[first_user + 1 :]:
        if role == "assistant":
            steps.append(_turn_to_step(text))
        elif role == "user" and steps:
            obs = text.strip()
            if obs.lower().startswith("observation:"):
                obs = obs[len("observation:") :].strip()
            steps[-1].observation = (steps[-1].observation + "\n" + obs).strip()
    success, reward = _outcome(obj)
    tid = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=task,
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if tid is None else str(tid),
        task_type=obj.get("task_type") if isinstance(obj.get("task_type"), str) else None,
        initial_observation=initial,
        memories_used=_memories_used(obj),
    )


_ROLE = {
    "system": "system",
    "user": "user",
    "human": "user",
    "tool": "user",
    "function": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        return ""
    raise RecordError(f"message content must be text, got {type(content).__name__}")


def parse_openai(obj: dict[str, Any]) -> Trajectory:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError('"messages" must be a non-empty list of {"role", "content"}')
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or "role" not in m:
            raise RecordError(f'message {i} must be an object with "role" and "content"')
        role = _ROLE.get(str(m["role"]).lower())
        if role is None:
            raise RecordError(f"message {i} has unknown role {m['role']!r}")
        text = _content_text(m.get("content"))
        if role == "assistant" and not text and m.get("tool_calls"):
            calls = m["tool_calls"]
            text = "; ".join(
                f"{c.get('function', {}).get('name', '')}({c.get('function', {}).get('arguments', '')})"
                for c in calls
                if isinstance(c, dict)
            )
        turns.append((role, text))
    return _dialogue_to_trajectory(turns, obj, '"messages"')


def parse_conversations(obj: dict[str, Any]) -> Trajectory:
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError('"conversations" must be a non-empty list of {"from", "value"}')
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(conv, 1):
        if not isinstance(m, dict) or "from" not in m:
            raise RecordError(f'turn {i} must be an object with "from" and "value"')
        role = _ROLE.get(str(m["from"]).lower())
        if role is None:
            raise RecordError(f"turn {i} has unknown speaker {m['from']!r}")
        turns.append((role, _str(m.get("value"), f'turn {i} "value"')))
    # AgentInstruct puts an instruction preamble and a canned "OK" exchange before
    # the real task: take the last user turn that names a task before the first
    # real action.
    task_turn = None
    for i, (role, text) in enumerate(turns):
        if role == "user" and any(mk in text for mk in _TASK_MARKERS):
            task_turn = i
        elif role == "assistant" and task_turn is not None and text.strip() != "OK":
            break  # the first real action: later observations may repeat the task text
    if task_turn is not None:
        turns = turns[task_turn:]
    return _dialogue_to_trajectory(turns, obj, '"conversations"')


_REACT_LINE = re.compile(r"^\s*(Thought|Action|Act|Observation|Obs)\s*:\s*(.*)$", re.IGNORECASE)


def _steps_from_react_text(text: str) -> list[Step]:
    steps: list[Step] = []
    thought = ""
    for line in text.splitlines():
        m = _REACT_LINE.match(line)
        if not m:
            if line.strip().startswith(">"):
                steps.append(Step(action=line.strip()[1:].strip(), thought=thought))
                thought = ""
            elif steps:
                steps[-1].observation = (steps[-1].observation + "\n" + line.strip()).strip()
            continue
        kind, body = m.group(1).lower(), m.group(2).strip()
        if kind == "thought":
            thought = body
        elif kind in ("action", "act"):
            steps.append(Step(action=body, thought=thought))
            thought = ""
        elif steps:
            steps[-1].observation = (steps[-1].observation + "\n" + body).strip()
    return steps


def parse_memp(obj: dict[str, Any]) -> Trajectory:
    raw = obj.get("trajectory")
    if isinstance(raw, str):
        steps = _steps_from_react_text(raw)
    elif isinstance(raw, list):
        steps = parse_native({"task": "x", "steps": raw}).steps
    else:
        raise RecordError('"trajectory" must be a list of steps or a ReAct-style text')
    if not steps:
        raise RecordError('"trajectory" holds no "Action:" lines or steps')
    success, reward = _outcome(obj)
    tid = obj.get("task_id", obj.get("id"))
    return Trajectory(
        task=_task(obj.get("query"), '"query"'),
        steps=steps,
        success=success,
        reward=reward,
        task_id=None if tid is None else str(tid),
        memories_used=_memories_used(obj),
    )


_PARSERS = {
    "native": parse_native,
    "openai": parse_openai,
    "memp": parse_memp,
    "conversations": parse_conversations,
}


def detect_format(obj: dict[str, Any]) -> str:
    if "steps" in obj and "task" in obj:
        return "native"
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "conversations"
    if "query" in obj and "trajectory" in obj:
        return "memp"
    if "steps" in obj or "task" in obj:
        return "native"
    raise RecordError(
        "unrecognised record: expected native {task, steps}, OpenAI {messages}, "
        "Mem^p {query, trajectory} or AgentInstruct {conversations}"
    )


def parse_record(obj: Any, fmt: str = "auto") -> Trajectory:
    if not isinstance(obj, dict):
        raise RecordError(f"a trajectory must be a JSON object, got {type(obj).__name__}")
    if fmt == "auto":
        fmt = detect_format(obj)
    try:
        parser = _PARSERS[fmt]
    except KeyError:
        raise RecordError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None
    t = parser(obj)
    if not t.steps:
        # A memory is built from the steps: a run without any could never be distilled.
        raise RecordError("the trajectory has no steps (no action was taken)")
    return t


@dataclass(slots=True)
class ReadResult:
    line: int
    trajectory: Trajectory | None = None
    error: InputError | None = None


def read_jsonl(lines: Iterable[bytes], path: str, fmt: str = "auto") -> Iterator[ReadResult]:
    """Parse JSONL lines; yield a trajectory or an error (with path:line) per line.

    Blank lines are skipped silently. Bytes that are not UTF-8, JSON that does
    not parse, and records of the wrong shape each give an error for their line.
    """
    for lineno, raw in enumerate(lines, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark, as some Windows tools write
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield ReadResult(
                lineno,
                error=InputError(
                    f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} byte limit", path=path, line=lineno
                ),
            )
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            yield ReadResult(
                lineno,
                error=InputError(
                    f"not valid JSON ({e.args[0] if e.args else e})",
                    path=path,
                    line=lineno,
                    hint="each line must hold one JSON object; fix or remove the line",
                ),
            )
            continue
        try:
            yield ReadResult(lineno, trajectory=parse_record(obj, fmt))
        except RecordError as e:
            yield ReadResult(lineno, error=InputError(str(e), path=path, line=lineno))
