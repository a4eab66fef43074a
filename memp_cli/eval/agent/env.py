"""Text environments an agent plays: the :class:`Environment` protocol and its adapters.

An environment generates a game from (game name, seed), returns the task, the first
observation and the admissible actions, and then answers one action at a time. Only the
adapter imports the simulator, lazily, so ``memp --help`` and every other command never pay
for it.

- :class:`TextWorldExpress` (``twx``): TextWorldExpress 1.1.0 (``pip install
  'memp[agent]'``, Java 17). It generates its games offline from a seed; its *test* fold seeds
  are games no training run saw. The default parameters per game are the ones the shared
  ``twx_train`` runs were generated with, so memories built from those runs meet unseen games
  of the same family.

ALFWorld is not here: its adapter needs the game files (``alfworld-download``), which this
project cannot ship or test; it is future work.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any, Protocol

from memp_cli.errors import InputError, NotFoundError

# The parameters twx_train (the shared TextWorldExpress runs, examples/twx) was generated with.
TWX_PARAMS: dict[str, str] = {
    "coin": "numLocations=5,numDistractorItems=3,includeDoors=0,limitInventorySize=1",
    "cookingworld": (
        "numLocations=3,numIngredients=2,numDistractorItems=3,includeDoors=0,limitInventorySize=1"
    ),
    "twc": "numLocations=2,numItemsToPutAway=3,includeDoors=0,limitInventorySize=0",
    "mapreader": (
        "numLocations=8,maxDistanceApart=4,maxDistractorItemsPerLocation=3,includeDoors=0,limitInventorySize=0"
    ),
    "arithmetic": "",
    "sorting": "",
    "simonsays": "gameLength=5,numDistractors=3",
    "peckingorder": "",
}
TWX_GAMES = tuple(TWX_PARAMS)
TWX_INSTALL_HINT = "pip install 'memp[agent]' (textworld-express==1.1.0)"
JAVA_HINT = "TextWorldExpress runs on Java 17: apt-get install openjdk-17-jre-headless"


@dataclass
class Observation:
    """What the agent sees after a reset or a step."""

    text: str
    actions: list[str]  # the admissible actions now (deduplicated, in the game's order)
    score: float = 0.0  # the game's progress, 0..1
    won: bool = False
    done: bool = False  # won, or lost (the game ended without success)


@dataclass
class Start:
    """A new game: its task and the first observation."""

    game: str
    seed: int
    task: str
    observation: Observation
    properties: dict[str, Any] = field(default_factory=dict)  # how the game was generated


class UnplayableGame(InputError):
    """The environment could not generate the game for this seed (the runner draws another)."""


class Environment(Protocol):
    name: str

    def games(self) -> list[str]:
        """The game (task type) names this environment generates."""
        ...

    def test_seeds(self, game: str) -> list[int]:
        """Seeds of games held out from training (unseen)."""
        ...

    def reset(self, game: str, seed: int) -> Start:
        """A new game; :class:`UnplayableGame` when this seed yields none."""
        ...

    def step(self, action: str) -> Observation: ...

    def close(self) -> None: ...


def _unique(actions: Any) -> list[str]:
    return list(dict.fromkeys(str(a) for a in actions))


class TextWorldExpress:
    """TextWorldExpress through its Python package (a JVM behind py4j)."""

    name = "twx"

    def __init__(self, params: dict[str, str] | None = None, step_limit: int = 10_000) -> None:
        self.params = dict(TWX_PARAMS, **(params or {}))
        try:
            import textworld_express
        except ImportError:
            raise NotFoundError(
                "memp eval agent --env twx needs the textworld-express package", hint=TWX_INSTALL_HINT
            ) from None
        if shutil.which("java") is None:
            raise NotFoundError("memp eval agent --env twx needs Java, and none is on PATH", hint=JAVA_HINT)
        try:
            self._env = textworld_express.TextWorldExpressEnv(envStepLimit=step_limit)
        except Exception as err:  # py4j reports a JVM that does not start as a bare Exception
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise NotFoundError(f"TextWorldExpress did not start: {why}", hint=JAVA_HINT) from None
        self._game: str | None = None
        self._seeds: dict[str, list[int]] = {}

    def games(self) -> list[str]:
        return [g for g in self._env.getGameNames() if g in self.params] + [
            g for g in self._env.getGameNames() if g not in self.params
        ]

    def _load(self, game: str) -> None:
        if game == self._game:
            return
        if game not in self._env.getGameNames():
            raise InputError(
                f"TextWorldExpress has no game {game!r}", hint=f"choose from {', '.join(self.games())}"
            )
        self._env.load(game, self.params.get(game, ""))
        self._game = game

    def test_seeds(self, game: str) -> list[int]:
        if game not in self._seeds:
            self._load(game)
            self._seeds[game] = [int(s) for s in self._env.getValidSeedsTest()]
        return self._seeds[game]

    def reset(self, game: str, seed: int) -> Start:
        self._load(game)
        try:
            text, info = self._env.reset(seed=seed, gameFold="test")
        except Exception as err:  # py4j.protocol.Py4JJavaError: the generator gave up on this seed
            first = str(err).split(": ", 2)[-1].strip().splitlines()[0] if str(err) else type(err).__name__
            raise UnplayableGame(f"TextWorldExpress could not generate {game} seed {seed}: {first}") from None
        return Start(
            game=game,
            seed=seed,
            task=str(info["taskDescription"]),
            observation=self._observation(text, info),
            properties=dict(self._env.getGenerationProperties()),
        )

    def step(self, action: str) -> Observation:
        text, _reward, _done, info = self._env.step(action)
        return self._observation(text, info)

    @staticmethod
    def _observation(text: str, info: dict[str, Any]) -> Observation:
        won = bool(info.get("tasksuccess"))
        lost = bool(info.get("taskfailure"))
        return Observation(
            text=str(text).strip(),
            actions=_unique(info.get("validActions", [])),
            score=float(info.get("score", 0.0)),
            won=won,
            done=won or lost,
        )

    def close(self) -> None:
        self._env.close()
        # TextWorldExpressEnv.__del__ closes again, writing to the dead JVM's stdin (a
        # BrokenPipeError printed at exit): once is enough.
        self._env.close = lambda: None


ENVIRONMENTS = ("twx",)


def open_environment(name: str) -> Environment:
    """The environment called ``name`` (only ``twx`` for now)."""
    if name == "twx":
        return TextWorldExpress()
    raise InputError(f"unknown environment {name!r}", hint=f"choose one of {', '.join(ENVIRONMENTS)}")
