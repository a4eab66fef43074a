"""What each step of a run did, for the built-in distiller: think, fail, nav or act."""

from __future__ import annotations

import re
from dataclasses import dataclass

from memp_cli.model.text import one_line
from memp_cli.model.trajectory import Trajectory

_FAIL_START = re.compile(
    r"^(?:nothing happens|invalid action|no known action|you can't|you cannot|can't |cannot |"
    r"i don't understand|i don't know|i'm not sure what you mean|unknown (?:action|command)|"
    r"that's not a |there is no |no valid information|ambiguous request|error\b|no results|not found)",
    re.IGNORECASE,
)
_FAIL_ANY = re.compile(
    r"\bis not (?:a )?valid\b|\bis already (?:open|closed|on|off|activated|deactivated)\b", re.IGNORECASE
)


def _is_failed(observation: str) -> bool:
    obs = observation.strip()
    return bool(_FAIL_START.match(obs) or _FAIL_ANY.search(obs[:200]))


_THINK_RE = re.compile(r"^\s*think\s*(?::|\[)\s*(.*?)\s*\]?\s*$", re.IGNORECASE | re.DOTALL)
_DIRECTIONS = "north|south|east|west|northeast|northwest|southeast|southwest|up|down|left|right|forward|back"
NAV_DIR_RE = re.compile(rf"^(?:go|move|walk|run|head)\s+(?:to\s+the\s+)?({_DIRECTIONS})\b", re.IGNORECASE)
_NAV_RE = re.compile(r"^(?:go to|goto|teleport to|walk to|travel to|enter)\s+(?:the\s+)?(.+)$", re.IGNORECASE)
SCAN_RE = re.compile(r"^(?:open|close|examine|look at|look in|search)\s+(?:the\s+)?(.+)$", re.IGNORECASE)
LOOK_RE = re.compile(r"^(?:look|look around|inventory|i)$", re.IGNORECASE)


@dataclass(slots=True)
class Act:
    index: int  # position in the trajectory (0-based)
    raw: str  # the action, one line
    obs: str
    kind: str  # think | fail | nav | act
    place: str = ""  # nav target (entity, room or direction)
    text: str = ""  # the thought for "think"


def classify(t: Trajectory) -> list[Act]:
    acts: list[Act] = []
    for i, s in enumerate(t.steps):
        raw = one_line(s.action)
        m = _THINK_RE.match(s.action)
        if m or (not raw and s.thought):
            acts.append(Act(i, raw, s.observation, "think", text=one_line(m.group(1) if m else s.thought)))
        elif _is_failed(s.observation) or not raw:
            acts.append(Act(i, raw, s.observation, "fail"))
        elif (md := NAV_DIR_RE.match(raw)) is not None:
            acts.append(Act(i, raw, s.observation, "nav", place=md.group(1).lower()))
        elif (mn := _NAV_RE.match(raw)) is not None:
            acts.append(Act(i, raw, s.observation, "nav", place=mn.group(1).strip().lower()))
        else:
            acts.append(Act(i, raw, s.observation, "act"))
    return acts
