"""``memp eval agent``: an agent loop over a real text environment, with and without memory.

- :mod:`.env`: the :class:`Environment` protocol and the TextWorldExpress adapter;
- :mod:`.agents`: the builtin (deterministic, offline) agent and the LLM (litellm) agent;
- :mod:`.run`: playing unseen games per memory setting and summarizing success and steps.
"""

from __future__ import annotations

from memp_cli.eval.agent.agents import BuiltinAgent, LLMAgent, parse_action
from memp_cli.eval.agent.env import ENVIRONMENTS, Environment, Observation, Start, open_environment
from memp_cli.eval.agent.run import (
    NONE,
    AgentResult,
    AgentSettings,
    Episode,
    MemorySetting,
    Recall,
    Summary,
    run,
)

__all__ = [
    "ENVIRONMENTS",
    "NONE",
    "AgentResult",
    "AgentSettings",
    "BuiltinAgent",
    "Environment",
    "Episode",
    "LLMAgent",
    "MemorySetting",
    "Observation",
    "Recall",
    "Start",
    "Summary",
    "open_environment",
    "parse_action",
    "run",
]
