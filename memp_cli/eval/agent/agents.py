"""Agents that play an :class:`~memp_cli.eval.agent.env.Environment`, with or without memory.

- :class:`BuiltinAgent` (``--model builtin``): deterministic for a seed, offline. With a
  retrieved memory it follows the memory's remembered steps in order, mapping each one onto
  the most similar admissible action of the new game (same verb, then shared words), and fills
  the specifics from the new game: when the remembered action named something the observation
  before it had just mentioned (an instruction, a recipe, a map), it takes the admissible
  action that names what the current observation mentions. A remembered step with no
  counterpart is skipped. When the memories are used up, or without memory, it explores: a
  seeded random admissible action.
- :class:`LLMAgent` (``--model <litellm model>``): a ReAct-style prompt with the task, the
  memory block :func:`memp_cli.retrieve.render.render_prompt` renders, the recent history and
  the admissible actions; one action per turn, parsed from the reply (:func:`parse_action`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from memp_cli.backends.llm import LLMSettings, Usage, complete
from memp_cli.model.memory import Memory
from memp_cli.model.steps import omitted_count

_WORD = re.compile(r"[a-z0-9]+")
# Actions that only show what is already known; exploration never picks them.
_IDLE = {"inventory", "look", "look around", "task", "help"}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` mentions ``phrase`` as whole words."""
    w = _words(phrase)
    if not w:
        return False
    return re.search(r"\b" + r"\s+".join(map(re.escape, w)) + r"\b", text.lower()) is not None


@dataclass
class _Step:
    action: str
    before: str  # the observation the remembered action answered ("" when not recorded)


def _verb(action: str) -> str:
    w = _words(action)
    return w[0] if w else ""


def _object(action: str) -> str:
    return " ".join(_words(action)[1:])


class Agent(Protocol):
    name: str

    def start(self, task: str, observation: str, memories: Sequence[Memory], prompt: str) -> None:
        """A new game: the task, the first observation, the retrieved memories (best first)
        and the same memories rendered as a prompt block ("" without memory)."""
        ...

    def act(self, observation: str, actions: list[str]) -> str: ...


@dataclass
class BuiltinAgent:
    """Follows the retrieved procedures step by step, then explores at random (see the module)."""

    seed: int = 0
    name: str = "builtin"
    _plan: list[_Step] = field(default_factory=list, init=False, repr=False)
    _grounded: bool = field(default=False, init=False, repr=False)
    _taken: list[str] = field(default_factory=list, init=False, repr=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def start(self, task: str, observation: str, memories: Sequence[Memory], prompt: str) -> None:
        self._rng = random.Random(self.seed)
        self._plan = []
        self._taken = []
        follow = 0
        total = 0
        for m in memories:
            before = ""
            for s in m.steps:
                act = s.get("action", "")
                if act and omitted_count(s) is None:  # a "[... N steps omitted ...]" marker is no step
                    self._plan.append(_Step(act, before))
                    if before:
                        total += 1
                        follow += _mentions(before, _object(act) or act)
                before = s.get("observation", "")
        # A memory whose actions at least half the time named what the observation had just mentioned teaches
        # "do what the text says": the new game's own text then fills every step.
        self._grounded = total > 0 and follow / total >= 0.5

    def _score(self, step: _Step, cand: str, observation: str) -> float:
        score = 0.0
        if _verb(step.action) == _verb(cand):
            score += 1.0
        a, c = set(_words(step.action)), set(_words(cand))
        score += len(a & c) / max(len(a | c), 1)
        if self._grounded:
            obj = _object(cand)
            if _mentions(observation, cand):  # the text names this very action
                score += 4.0
            elif obj and _mentions(observation, obj):  # or what it acts on
                score += 1.5
        if cand in self._taken:
            score -= 0.25
        return score

    def act(self, observation: str, actions: list[str]) -> str:
        while self._plan:
            step = self._plan.pop(0)
            if step.action in actions and not self._grounded:
                return self._take(step.action)
            scored = [(self._score(step, c, observation), c) for c in actions]
            best = max((s for s, _ in scored), default=0.0)
            if best >= 1.0:  # the same verb, or the current text names the action
                return self._take(self._rng.choice([c for s, c in scored if s == best]))
        useful = [a for a in actions if a.lower() not in _IDLE] or actions
        if not useful:
            return "look around"
        return self._take(self._rng.choice(useful))

    def _take(self, action: str) -> str:
        self._taken.append(action)
        return action


SYSTEM = (
    "You are an agent playing a text game. Each turn you see the latest observation and the "
    "actions you can take. Think briefly if you need to, then answer with exactly one line "
    "'Action: <one of the admissible actions, copied exactly>'."
)


def parse_action(reply: str, actions: Sequence[str]) -> tuple[str, bool]:
    """The action a reply chose, and whether it is one of ``actions``.

    Takes the last ``Action:`` line (or, without one, the last non-empty line), strips quotes,
    markdown and trailing punctuation, and matches it to an admissible action: exactly
    (ignoring case), then the longest admissible action the choice contains or is contained
    in. A choice that matches none is returned as written (the game answers it).
    """
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    tagged = [ln for ln in lines if re.match(r"^[*_`>\s-]*action\s*[:：]", ln, re.I)]
    raw = tagged[-1] if tagged else (lines[-1] if lines else "")
    choice = re.sub(r"^[*_`>\s-]*action\s*[:：]\s*", "", raw, flags=re.I)
    choice = choice.strip().strip("*_`'\">").strip().rstrip(".!").strip().strip("'\"`")
    norm = " ".join(_words(choice))
    by_norm = {" ".join(_words(a)): a for a in actions}
    if norm in by_norm:
        return by_norm[norm], True
    inside = [a for n, a in by_norm.items() if n and (f" {n} " in f" {norm} " or f" {norm} " in f" {n} ")]
    if norm and inside:
        return max(inside, key=len), True
    return choice, False


@dataclass
class LLMAgent:
    """A ReAct-style agent driven by any litellm model (see the module)."""

    settings: LLMSettings
    history_turns: int = 10
    name: str = "llm"
    usage: Usage = field(default_factory=Usage)
    invalid: int = 0  # replies that named no admissible action
    _task: str = field(default="", init=False, repr=False)
    _first: str = field(default="", init=False, repr=False)
    _memory: str = field(default="", init=False, repr=False)
    _history: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    _last: str | None = field(default=None, init=False, repr=False)

    def start(self, task: str, observation: str, memories: Sequence[Memory], prompt: str) -> None:
        self._task, self._memory, self._first = task, prompt, " ".join(observation.split())
        self._history = []
        self._last = None

    def messages(self, observation: str, actions: list[str]) -> list[dict[str, str]]:
        if self._last is not None:
            self._history.append((self._last, observation))
        parts = [f"Your task: {self._task}"]
        if self._memory:
            parts.append(self._memory.strip())
        parts.append(f"At the start: {self._first}")
        recent = self._history[-self.history_turns :]
        if recent:
            skipped = len(self._history) - len(recent)
            head = f"Your last {len(recent)} actions" if skipped else "Your actions"
            parts.append(head + " and what followed:")
            parts.extend(f"> {a}\n{' '.join(o.split())}" for a, o in recent)
        parts.append("Admissible actions: " + "; ".join(actions))
        parts.append("Your next action?")
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]

    def act(self, observation: str, actions: list[str]) -> str:
        reply = complete(self.messages(observation, actions), self.settings)
        self.usage.add(reply.usage)
        action, ok = parse_action(reply.text, actions)
        self.invalid += not ok
        self._last = action
        return action
