"""``memp eval agent``: an agent plays unseen games with and without procedural memory.

The paper's headline measure (Mem^p, Table 1): task success and steps of an agent with and
without memory. Every memory setting (``none``, or a store) plays the same games with the same
agent seed, so the settings differ only by what memory the agent reads. Before each game the
task text queries the store as ``memp query`` would (:meth:`Retriever.from_config` with the
store's ``[retrieval]`` settings and embedder); the top ``k`` memories go to the agent.

Results: one :class:`Summary` per (memory setting, game) and per memory setting over all
games; each game played is an :class:`Episode`, which :meth:`Episode.to_trajectory` writes as a
native trajectory (``memories_used`` included), so ``memp ingest`` can learn from the runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memp_cli.backends.llm import LLMSettings, Usage
from memp_cli.errors import InputError
from memp_cli.eval.agent.agents import Agent, BuiltinAgent, LLMAgent
from memp_cli.eval.agent.env import Environment, Observation, UnplayableGame
from memp_cli.model.memory import Memory

NONE = "none"


@dataclass
class AgentSettings:
    games: list[str] = field(default_factory=list)  # empty: every game of the environment
    per_game: int = 5  # unseen games per game type
    seed: int = 0  # picks the games and seeds the builtin agent
    max_steps: int = 50
    model: str = "builtin"
    api_base: str | None = None
    timeout: float = 60.0
    k: int = 1  # memories retrieved per game
    prompt_tokens: int = 1500  # the LLM agent's memory block budget

    def check(self) -> None:
        if self.per_game < 1:
            raise InputError(f"--games must be at least 1, got {self.per_game}")
        if self.max_steps < 1:
            raise InputError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.k < 1:
            raise InputError(f"--k must be at least 1, got {self.k}")


class Recall:
    """Retrieval from one store, as ``memp query`` ranks (one search per distinct task)."""

    def __init__(
        self, path: Path, *, k: int, wait: bool = True, on_note: Callable[[str], None] | None = None
    ) -> None:
        from memp_cli.index import open_index
        from memp_cli.retrieve.retriever import Retriever
        from memp_cli.store import Store, store_embedder

        self.path = path
        store = Store.open(path, wait=wait)
        store.command = "eval agent"
        embedder = store_embedder(store)
        index = open_index(store, embedder, exact=True, on_note=on_note).index
        self._retriever = (
            None if index is None else Retriever.from_config(index, embedder, store.config.retrieval, k=k)
        )
        if index is None and on_note is not None:
            on_note(f"the store {path} has no memories: its games are played without memory")
        self._cache: dict[str, list[Any]] = {}

    def search(self, task: str) -> list[Any]:
        """The retrieved :class:`~memp_cli.retrieve.retriever.Hit` list, best first."""
        if self._retriever is None:
            return []
        if task not in self._cache:
            self._cache[task] = self._retriever.search([task])[0]
        return self._cache[task]


@dataclass
class MemorySetting:
    label: str  # "none", or the store's path as given
    recall: Recall | None = None


@dataclass
class Episode:
    memory: str
    env: str
    game: str
    seed: int
    task: str
    first_observation: str
    won: bool = False
    score: float = 0.0
    steps: list[dict[str, str]] = field(default_factory=list)
    memories_used: list[str] = field(default_factory=list)
    invalid_actions: int = 0  # LLM agent: replies that named no admissible action
    properties: dict[str, Any] = field(default_factory=dict)

    def to_trajectory(self) -> dict[str, Any]:
        """The run as a native trajectory record (``memp ingest`` reads it)."""
        return {
            "task_id": f"{self.env}/{self.game}/test/seed{self.seed}/{self.memory}",
            "task": self.task,
            "task_type": self.game,
            "initial_observation": self.first_observation,
            "steps": self.steps,
            "success": self.won,
            "reward": self.score,
            "memories_used": self.memories_used,
            "memory": self.memory,
            "fold": "test",
            "generation_properties": self.properties,
            "invalid_actions": self.invalid_actions,
        }


@dataclass
class Summary:
    memory: str
    game: str  # a game type, or "all"
    episodes: int = 0
    won: int = 0
    steps: int = 0
    steps_won: int = 0
    score: float = 0.0
    with_memory: int = 0  # episodes whose agent was given at least one memory

    def to_dict(self) -> dict[str, Any]:
        n = self.episodes or 1
        return {
            "memory": self.memory,
            "game": self.game,
            "episodes": self.episodes,
            "won": self.won,
            "success_rate": round(self.won / n, 4),
            "mean_steps": round(self.steps / n, 2),  # a game lost at once counts its few steps
            "mean_steps_won": round(self.steps_won / self.won, 2) if self.won else None,
            "mean_score": round(self.score / n, 4),
            "with_memory": self.with_memory,
        }


@dataclass
class AgentResult:
    summaries: list[Summary]
    episodes: list[Episode]
    usage: Usage


def seed_order(env: Environment, game: str, seed: int) -> list[int]:
    """The unseen games of type ``game`` (test-fold seeds), in the order ``seed`` draws them."""
    pool = list(env.test_seeds(game))
    if not pool:
        raise InputError(f"{env.name} has no test games for {game!r}")
    random.Random(f"{seed}/{game}").shuffle(pool)
    return pool


def make_agent(settings: AgentSettings, seed: int) -> Agent:
    if settings.model == "builtin":
        return BuiltinAgent(seed=seed)
    return LLMAgent(
        LLMSettings(
            model=settings.model, api_base=settings.api_base, timeout=settings.timeout, max_tokens=256
        )
    )


def play(
    env: Environment,
    agent: Agent,
    game: str,
    seed: int,
    memory: MemorySetting,
    *,
    max_steps: int,
    prompt_tokens: int = 1500,
) -> Episode:
    """One game, start to end (won, lost, or ``max_steps`` actions)."""
    from memp_cli.retrieve.render import render_prompt

    start = env.reset(game, seed)
    hits = memory.recall.search(start.task) if memory.recall is not None else []
    memories: list[Memory] = [h.memory for h in hits]
    agent.start(start.task, start.observation.text, memories, render_prompt(hits, max_tokens=prompt_tokens))
    ep = Episode(
        memory=memory.label,
        env=env.name,
        game=game,
        seed=seed,
        task=start.task,
        first_observation=start.observation.text,
        memories_used=[m.id for m in memories],
        properties=start.properties,
    )
    obs: Observation = start.observation
    for _ in range(max_steps):
        action = agent.act(obs.text, obs.actions)
        obs = env.step(action)
        ep.steps.append({"action": action, "observation": obs.text})
        if obs.done:
            break
    ep.won, ep.score = obs.won, obs.score
    ep.invalid_actions = getattr(agent, "invalid", 0)
    return ep


def summarize(episodes: Sequence[Episode]) -> list[Summary]:
    """Per (memory, game) in the order first played, then per memory over all games."""
    by: dict[tuple[str, str], Summary] = {}
    for ep in episodes:
        for game in (ep.game, "all"):
            s = by.setdefault((ep.memory, game), Summary(ep.memory, game))
            s.episodes += 1
            s.won += ep.won
            s.steps += len(ep.steps)
            s.steps_won += len(ep.steps) if ep.won else 0
            s.score += ep.score
            s.with_memory += bool(ep.memories_used)
    return sorted(by.values(), key=lambda s: s.game == "all")


def run(
    env: Environment,
    settings: AgentSettings,
    memories: Sequence[MemorySetting],
    *,
    on_episode: Callable[[Episode], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> AgentResult:
    """Every memory setting plays the same unseen games, each with the same agent seed."""
    settings.check()
    known = env.games()
    games = settings.games or known
    for g in games:
        if g not in known:
            raise InputError(f"{env.name} has no game {g!r}", hint=f"choose from {', '.join(known)}")
    usage = Usage()
    episodes: list[Episode] = []
    for game in games:
        played = 0
        for seed in seed_order(env, game, settings.seed):
            if played == settings.per_game:
                break
            try:
                env.reset(game, seed)
            except UnplayableGame as err:
                if on_note is not None:
                    on_note(f"{err.message}; drawing another")
                continue
            played += 1
            agent_seed = random.Random(f"{settings.seed}/{game}/{seed}").randrange(2**32)
            for mem in memories:
                agent = make_agent(settings, agent_seed)
                ep = play(
                    env,
                    agent,
                    game,
                    seed,
                    mem,
                    max_steps=settings.max_steps,
                    prompt_tokens=settings.prompt_tokens,
                )
                if isinstance(agent, LLMAgent):
                    usage.add(agent.usage)
                episodes.append(ep)
                if on_episode is not None:
                    on_episode(ep)
    return AgentResult(summarize(episodes), episodes, usage)
