"""memp eval agent: an agent plays unseen TextWorldExpress games with and without memory.

The games are real (textworld-express 1.1.0 on Java 17, generated offline); the tests that play
them skip, saying why, when the package or Java is missing. The LLM agent is driven through
litellm to the local OpenAI-compatible server (tests/llm_server.py), never the network.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, memp
from llm_server import serve

from memp_cli.backends import llm
from memp_cli.errors import ExitCode
from memp_cli.eval.agent import BuiltinAgent, parse_action
from memp_cli.model.memory import Memory

TWX_TRAIN = REPO / "examples" / "twx" / "train.jsonl"

_missing = (
    "textworld-express is not installed (pip install 'memp[agent]')"
    if importlib.util.find_spec("textworld_express") is None
    else "Java is not installed (apt-get install openjdk-17-jre-headless)"
    if shutil.which("java") is None
    else None
)
needs_twx = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="session")
def _twx_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built once from the bundled TWX training runs (hash embedder: no model needed)."""
    root = tmp_path_factory.mktemp("twx") / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MEMP_STORE", raising=False)
        memp("--store", root, "init", "--embedder", "hash")
        memp("--store", root, "ingest", TWX_TRAIN)
        memp("--store", root, "distill")
    return root


@pytest.fixture
def twx_store(_twx_template: Path, isolated: Path) -> Path:
    dest = isolated / "twx"
    shutil.copytree(_twx_template, dest)
    return dest


def _memory(steps: list[tuple[str, str]], task: str = "do it") -> Memory:
    return Memory(
        id="m000000000001",
        kind="trajectory",
        task=task,
        steps=[{"action": a, "observation": o} for a, o in steps],
    )


# ------------------------------------------------------------------ parsing an LLM's reply
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("take coin", ("take coin", True)),
        ("Thought: the coin is here.\nAction: take coin", ("take coin", True)),
        ("Thought: hmm\n**Action:** `Take Coin.`", ("take coin", True)),
        ("Action: look\nI changed my mind.\nAction: move north", ("move north", True)),
        ("I will now move north, then see.", ("move north", True)),
        ("Action: > open the door to north", ("open the door to north", False)),
        ("Action: dance", ("dance", False)),
        ("", ("", False)),
    ],
)
def test_an_action_is_parsed_from_a_chatty_reply(reply: str, expected: tuple[str, bool]) -> None:
    assert parse_action(reply, ["take coin", "move north", "look around"]) == expected


# ------------------------------------------------------------------ the builtin agent
def test_builtin_agent_maps_remembered_steps_onto_the_new_games_objects() -> None:
    mem = _memory(
        [
            ("take math problem", "You take the math problem."),
            ("read math problem", "add 2 and 3"),
            ("take 5 apples", "You take the 5 apples."),
            ("put 5 apples in box", "You win!"),
        ]
    )
    agent = BuiltinAgent(seed=1)
    agent.start("solve it", "a room", [mem], "")
    assert agent.act("a room", ["look around", "take math problem", "take 7 pears"]) == "take math problem"
    assert agent.act("ok", ["read math problem", "take 7 pears", "inventory"]) == "read math problem"
    # No "take 5 apples" here: the same verb, filled with this game's object.
    assert agent.act("add 4 and 3", ["take 7 pears", "inventory", "look around"]) == "take 7 pears"
    assert agent.act("ok", ["put 7 pears in box", "put 7 pears in shelf", "inventory"]) in (
        "put 7 pears in box"
    )


def test_builtin_agent_does_what_the_text_says_when_its_memory_did() -> None:
    """A memory whose actions repeated what the observation said: the new game's text decides."""
    mem = _memory(
        [
            ("jump", "Simon says, 'take pear'."),
            ("take pear", "Simon says, 'smell rose'."),
            ("smell rose", "You win!"),
        ]
    )
    agent = BuiltinAgent(seed=3)
    agent.start("do what Simon says", "Simon says, 'eat plum'.", [mem], "")
    actions = ["jump", "take plum", "eat plum", "take pear", "smell rose"]
    assert agent.act("Simon says, 'eat plum'.", actions) == "eat plum"
    assert agent.act("Simon says, 'jump'.", actions) == "jump"
    assert agent.act("Simon says, 'take pear'.", actions) == "take pear"


def test_builtin_agent_without_memory_explores_at_random_by_its_seed() -> None:
    actions = ["look around", "inventory", "move north", "move south", "take coin", "open door"]

    def moves(seed: int) -> list[str]:
        agent = BuiltinAgent(seed=seed)
        agent.start("find the coin", "a room", [], "")
        return [agent.act("a room", actions) for _ in range(12)]

    assert moves(5) == moves(5)
    assert moves(5) != moves(6)
    assert not {"look around", "inventory"} & set(moves(5))  # never an action that only looks
    assert len(set(moves(5))) > 1


# ------------------------------------------------------------------ the command, on real games
def _rows(run: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["memory"], r["game"]): r for r in run.jsonl()}


@needs_twx
def test_memory_lets_the_builtin_agent_win_unseen_games(twx_store: Path, tmp_path: Path) -> None:
    episodes = tmp_path / "episodes.jsonl"
    args = ["eval", "agent", "-m", "none", "-m", twx_store, "-g", "simonsays", "-g", "peckingorder"]
    run = memp(*args, "-n", "3", "--max-steps", "15", "--json", "--episodes", episodes)
    rows = _rows(run)
    store = str(twx_store)
    assert sorted(rows) == sorted(
        (m, g) for m in ("none", store) for g in ("simonsays", "peckingorder", "all")
    )
    for (memory, _game), r in rows.items():
        assert set(r) == {
            "memory",
            "game",
            "episodes",
            "won",
            "success_rate",
            "mean_steps",
            "mean_steps_won",
            "mean_score",
            "with_memory",
        }
        assert r["with_memory"] == (0 if memory == "none" else r["episodes"])
    assert rows[("none", "all")]["episodes"] == rows[(store, "all")]["episodes"] == 6
    # Without memory the first random action loses these games; with it the agent does what
    # the game's text says, as the remembered runs did.
    assert rows[("none", "simonsays")]["won"] == 0
    assert rows[(store, "simonsays")]["success_rate"] == 1.0
    assert rows[(store, "peckingorder")]["success_rate"] == 1.0
    assert rows[(store, "all")]["mean_steps"] > rows[("none", "all")]["mean_steps"]
    assert rows[("none", "simonsays")]["mean_steps_won"] is None
    assert rows[(store, "simonsays")]["mean_steps_won"] == 5.0  # Simon gives 5 instructions

    eps = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert len(eps) == 12
    played = {
        m: [(e["task_type"], e["generation_properties"]["seed"]) for e in eps if e["memory"] == m]
        for m in ("none", store)
    }
    assert played["none"] == played[store]  # the same unseen games in both settings
    assert all(seed >= 20000 for _, seed in played["none"])  # TWX's test fold
    won = next(e for e in eps if e["memory"] == store and e["task_type"] == "simonsays")
    assert won["success"] is True and len(won["memories_used"]) == 1
    assert won["steps"][0]["action"] in won["initial_observation"]  # "Simon says, '<action>'."

    # The runs are trajectories: ingested, each outcome counts on the memory it used.
    memp("--store", twx_store, "ingest", episodes)
    stats = memp("--store", twx_store, "show", won["memories_used"][0], "--json").jsonl()[0]["stats"]
    assert stats["successes"] >= 1


@needs_twx
def test_the_same_seed_plays_the_same_games_the_same_way(twx_store: Path) -> None:
    args = ["eval", "agent", "-m", "none", "-m", twx_store, "-g", "coin", "-n", "2", "--max-steps", "10"]
    first = memp(*args, "--json", "--seed", "4")
    assert memp(*args, "--json", "--seed", "4").stdout == first.stdout
    assert "agent: coin seed " in first.stderr  # progress on stderr, data on stdout


def _simon(body: dict[str, Any]) -> str:
    """A model that does what Simon says in the latest observation, chattily."""
    prompt = body["messages"][-1]["content"]
    said = re.findall(r"Simon says, '([^']+)'", prompt)
    return f"Thought: Simon said so.\nAction: **{said[-1] if said else 'look around'}.**"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve(default=_simon) as s:
        yield s


@needs_twx
def test_an_llm_agent_plays_through_litellm_with_the_memory_in_its_prompt(
    server: Any, twx_store: Path
) -> None:
    run = memp(
        "eval", "agent", "-m", twx_store, "-g", "simonsays", "-n", "2",
        "--model", "openai/agent", "--api-base", server.url, "--json",
    )  # fmt: skip
    rows = _rows(run)
    assert rows[(str(twx_store), "simonsays")]["success_rate"] == 1.0
    assert len(server.requests) == 2 * 5  # 5 instructions per game
    first = server.requests[0]
    assert first["model"] == "agent"
    prompt = first["messages"][-1]["content"]
    assert prompt.startswith("Your task: Your task is to do exactly what Simon says.")
    assert "Procedural memory: how similar tasks were done before." in prompt  # render_prompt's block
    assert "Admissible actions: " in prompt
    later = server.requests[1]["messages"][-1]["content"]
    assert "Your actions and what followed:" in later
    assert "LLM calls" in run.stderr


@needs_twx
def test_a_model_that_cannot_be_reached_exits_8(twx_store: Path) -> None:
    run = memp(
        "eval", "agent", "-m", "none", "-g", "coin", "-n", "1",
        "--model", "openai/agent", "--api-base", "http://127.0.0.1:9/v1", "--timeout", "2",
        expect=ExitCode.LLM,
    )  # fmt: skip
    assert "error" in run.stderr


# ------------------------------------------------------------------ errors
@needs_twx
def test_an_unknown_game_is_bad_input() -> None:
    run = memp("eval", "agent", "-m", "none", "-g", "chess", expect=ExitCode.BAD_INPUT)
    assert "twx has no game 'chess'" in run.stderr and "coin" in run.stderr


def test_without_textworld_express_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "textworld_express", None)  # import fails
    run = memp("eval", "agent", "-m", "none", expect=ExitCode.NOT_FOUND)
    assert "needs the textworld-express package" in run.stderr
    assert "pip install 'memp[agent]'" in run.stderr


@needs_twx
def test_without_java_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from memp_cli.eval.agent import env

    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    run = memp("eval", "agent", "-m", "none", expect=ExitCode.NOT_FOUND)
    assert "needs Java" in run.stderr and "openjdk-17-jre-headless" in run.stderr


def test_a_memory_that_is_not_a_store_is_not_found(tmp_path: Path) -> None:
    run = memp("eval", "agent", "-m", tmp_path / "nowhere", expect=ExitCode.NOT_FOUND)
    assert "no memp store" in run.stderr
