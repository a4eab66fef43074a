"""Record shapes -> Trajectory, on real records (tests/data) and on the edge cases."""

from __future__ import annotations

import json

import orjson
import pytest
from conftest import FILES, read_lines, read_records

from memp_cli.ingest import detect_format, parse_record, read_jsonl
from memp_cli.model.trajectory import RecordError, Step, Trajectory, trajectory_id

# ----------------------------------------------------------------- detection


@pytest.mark.parametrize(("shape", "expected"), [(k, k.split("_")[0]) for k in FILES])
def test_detect_format_on_real_files(shape: str, expected: str) -> None:
    for rec in read_records(FILES[shape]):
        assert detect_format(rec) == expected


def test_detect_format_unrecognised() -> None:
    with pytest.raises(RecordError, match="unrecognised record"):
        detect_format({"foo": 1})


# A record with keys of two shapes is read as the shape that has all its keys;
# a lone "task" or "steps" falls back to native. Each line pins one ambiguity.
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("task", "messages"), "openai"),
        (("steps", "messages"), "openai"),
        (("task", "conversations"), "conversations"),
        (("steps", "conversations"), "conversations"),
        (("task", "query", "trajectory"), "memp"),
        (("steps", "query", "trajectory"), "memp"),
        (("task", "steps", "messages"), "native"),
        (("task", "steps", "query", "trajectory"), "native"),
        (("messages", "conversations"), "openai"),
        (("conversations", "query", "trajectory"), "conversations"),
        (("query", "steps"), "native"),
        (("trajectory", "task"), "native"),
        (("query", "messages"), "openai"),
        (("task",), "native"),
        (("steps",), "native"),
    ],
)
def test_detect_format_of_ambiguous_records(keys: tuple[str, ...], expected: str) -> None:
    assert detect_format(dict.fromkeys(keys, "x")) == expected


@pytest.mark.parametrize("extra", ["task", "id", "success"])
def test_messages_record_with_native_labels_is_read_as_openai(extra: str) -> None:
    rec = read_records(FILES["openai"])[0]
    t = parse_record({**rec, extra: "go to the kitchen" if extra == "task" else rec.get(extra, True)})
    assert t.task == parse_record(rec).task
    assert len(t.steps) == len(parse_record(rec).steps) > 0


def test_query_trajectory_record_with_a_task_key_is_read_as_memp() -> None:
    rec = {"query": "heat an egg", "task": "ignored label", "trajectory": "Action: go to fridge 1\nObs: ok"}
    t = parse_record(rec)
    assert t.task == "heat an egg" and [s.action for s in t.steps] == ["go to fridge 1"]


# -------------------------------------------------------------------- native


def test_native_keeps_every_field_of_real_alfworld_records() -> None:
    for rec in read_records(FILES["native"]):
        t = parse_record(rec)
        assert t.task == rec["task"]
        assert t.task_id == rec["task_id"]
        assert t.task_type == rec["task_type"]
        assert t.initial_observation == rec["initial_observation"]
        assert [(s.action, s.observation) for s in t.steps] == [
            (s["action"], s["observation"]) for s in rec["steps"]
        ]
        assert t.success is rec["success"]
        assert t.reward == rec["reward"]
        assert t.extra == {"policy": rec["policy"], "split": rec["split"]}
        # The stored form round-trips.
        assert Trajectory.from_stored(orjson.loads(orjson.dumps(t.to_dict()))) == t


def test_native_webshop_outcomes() -> None:
    recs = read_records(FILES["native_webshop"])
    ts = [parse_record(r) for r in recs]
    assert [t.success for t in ts].count(False) == 2
    for r, t in zip(recs, ts, strict=True):
        assert t.success is r["success"] and t.reward == r["reward"]
        assert [s.action for s in t.steps] == [s["action"] for s in r["steps"]]


def test_trajectory_id_ignores_labels_but_not_content() -> None:
    rec = read_records(FILES["native"])[0]
    t = parse_record(rec)
    relabelled = parse_record({**rec, "task_id": "another/id", "source": "elsewhere", "policy": "x"})
    assert relabelled.id == t.id
    assert t.id.startswith("t") and len(t.id) == 16
    changed = json.loads(json.dumps(rec))
    changed["steps"][0]["observation"] += " (changed)"
    assert parse_record(changed).id != t.id
    assert parse_record({**rec, "success": False}).id != t.id
    assert trajectory_id(t) == t.id


def test_trajectory_id_covers_every_part_of_a_step() -> None:
    base = Trajectory(task="t", steps=[Step("open fridge 1", "a fridge", "find the egg")])
    for step in (
        Step("open fridge 1", "a fridge", "find the milk"),  # only the thought differs
        Step("open fridge 1", "a closed fridge", "find the egg"),
        Step("open fridge 2", "a fridge", "find the egg"),
        Step("open fridge 1", "a fridge", ""),
    ):
        assert Trajectory(task="t", steps=[step]).id != base.id, step
    assert Trajectory(task="t", steps=[Step("open fridge 1", "a fridge", "find the egg")]).id == base.id


@pytest.mark.parametrize(
    ("extra", "success", "reward"),
    [
        ({"success": True, "reward": 1.0}, True, 1.0),
        ({"success": 0}, False, None),
        ({"success": 1}, True, None),
        ({"reward": 1}, True, 1.0),
        ({"reward": 0.5}, False, 0.5),
        ({"success": None, "reward": 1.0}, None, 1.0),
        ({}, None, None),
    ],
)
def test_outcome_rules(extra: dict, success: bool | None, reward: float | None) -> None:
    t = parse_record({"task": "t", "steps": [{"action": "a"}], **extra})
    assert t.success is success
    assert t.reward == reward


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"task": "t", "steps": [], "success": True}, "no steps"),
        ({"task": "t", "steps": "go"}, '"steps" must be a list'),
        ({"task": 5, "steps": [{"action": "a"}]}, None),  # numbers are accepted as text
        ({"task": "  ", "steps": [{"action": "a"}]}, '"task" is missing or empty'),
        ({"steps": [{"action": "a"}]}, '"task" is missing or empty'),
        ({"task": "t", "steps": [{"action": "a"}], "success": "yes"}, '"success" must be'),
        ({"task": "t", "steps": [{"action": "a"}], "reward": "high"}, '"reward" must be a number'),
        ({"task": "t", "steps": [{"action": "a"}], "reward": True}, '"reward" must be a number'),
        ({"task": "t", "steps": [{"action": "a"}], "reward": float("nan")}, "NaN"),
        ({"task": "t", "steps": [7]}, "step 1 must be an object"),
        ({"task": "t", "steps": [{"observation": "x"}]}, 'step 1 has no "action"'),
        ({"task": "t", "steps": [{"action": ["a"]}]}, 'step 1 "action" must be a string'),
        ({"task": "t", "steps": [{"action": "a"}], "memories_used": "m1"}, '"memories_used" must be'),
        ({"task": ["t"], "steps": [{"action": "a"}]}, '"task" must be a string'),
    ],
)
def test_native_errors(record: dict, message: str | None) -> None:
    if message is None:
        assert parse_record(record).task == "5"
        return
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace('"', '"')):
        parse_record(record)


def test_non_object_records() -> None:
    for obj in ([1, 2], "text", 3, None):
        with pytest.raises(RecordError, match="must be a JSON object"):
            parse_record(obj)


def test_steps_as_strings_and_thoughts() -> None:
    t = parse_record({"task": "t", "steps": ["look", {"thought": "plan first", "action": ""}]})
    assert [s.action for s in t.steps] == ["look", ""]
    assert t.steps[1].thought == "plan first"


# -------------------------------------------------------------------- openai


def test_openai_matches_the_source_webshop_runs() -> None:
    for rec in read_records(FILES["openai"]):
        t = parse_record(rec)
        msgs = rec["messages"]
        assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert [s.action for s in t.steps] == [a.strip() for a in assistants]
        # Each observation is the user turn after the action.
        users_after = [msgs[i + 1]["content"].strip() for i, m in enumerate(msgs) if m["role"] == "assistant"]
        assert [s.observation for s in t.steps] == users_after
        # The task comes from the "Instruction:" line of the first user turn.
        instruction = msgs[1]["content"].split("Instruction:")[1].strip().splitlines()[0]
        assert t.task == instruction.strip()
        assert "price lower than" in t.task
        assert t.initial_observation == "Webshop"
        assert t.task_id == rec["task_id"]
        assert t.success is rec["success"]


def test_openai_tool_calls_and_content_parts() -> None:
    t = parse_record(
        {
            "messages": [
                {"role": "system", "content": "be helpful"},
                {"role": "user", "content": [{"type": "text", "text": "Task: book a flight"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "search", "arguments": '{"q": "flights"}'}}],
                },
                {"role": "tool", "content": "3 flights found"},
                {"role": "assistant", "content": "Thought: pick the cheapest\nAction: book[F1]"},
            ]
        }
    )
    assert t.task == "book a flight"
    assert t.steps[0].action == 'search({"q": "flights"})'
    assert t.steps[0].observation == "3 flights found"
    assert t.steps[1].action == "book[F1]"
    assert t.steps[1].thought == "pick the cheapest"


def test_openai_text_wins_over_tool_calls_and_the_last_task_marker_wins() -> None:
    t = parse_record(
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Example. Your task is to: heat an egg.\n> go to fridge 1\n"
                    "Now yours.\nYour task is to: put a mug in desk.",
                },
                {
                    "role": "assistant",
                    "content": "search the shelf",
                    "tool_calls": [{"function": {"name": "search", "arguments": "{}"}}],
                },
            ]
        }
    )
    assert t.task == "put a mug in desk."
    assert t.initial_observation == "Example. Your task is to: heat an egg.\n> go to fridge 1\nNow yours."
    assert [s.action for s in t.steps] == ["search the shelf"]


def test_memp_react_text_with_act_and_obs_lines() -> None:
    t = parse_record({"query": "find a mug", "trajectory": "Act: go to desk 1\nObs: a mug\nAct: take mug 1"})
    assert [(s.action, s.observation) for s in t.steps] == [("go to desk 1", "a mug"), ("take mug 1", "")]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"content": "x"}]}, 'message 1 must be an object with "role"'),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "assistant", "content": "go"}]}, "no user turn"),
        ({"messages": [{"role": "user", "content": 5}]}, "message content must be text"),
        ({"messages": [{"role": "user", "content": "Task: x"}]}, "no steps"),
    ],
)
def test_openai_errors(record: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_record(record)


# --------------------------------------------------------------------- Mem^p


def test_memp_react_text_matches_the_source_runs() -> None:
    """Each "Action:" line is a step; the "Observation:" line after it is its observation."""
    for rec in read_records(FILES["memp"]):
        t = parse_record(rec)
        assert t.task == rec["query"]
        expected: list[list[str]] = []
        for line in rec["trajectory"].splitlines():
            if line.startswith("Action: "):
                expected.append([line.removeprefix("Action: "), ""])
            else:
                assert line.startswith("Observation: ")
                expected[-1][1] = line.removeprefix("Observation: ")
        assert [[s.action, s.observation] for s in t.steps] == expected
        assert len(t.steps) >= 3
        assert t.success is True and t.reward == 1.0


def test_memp_steps_list_and_thoughts() -> None:
    t = parse_record(
        {
            "query": "heat some egg and put it in garbagecan.",
            "trajectory": "Thought: find an egg\nAction: go to fridge 1\nObservation: The fridge 1 is closed.\n"
            "> open fridge 1\nYou open the fridge 1.\nmore text",
            "reward": 0,
        }
    )
    assert [s.action for s in t.steps] == ["go to fridge 1", "open fridge 1"]
    assert t.steps[0].thought == "find an egg"
    assert t.steps[1].observation == "You open the fridge 1.\nmore text"
    assert t.success is False
    t2 = parse_record({"query": "q", "trajectory": [{"action": "a", "observation": "o"}]})
    assert t2.steps[0].observation == "o"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"query": "q", "trajectory": 5}, "must be a list of steps or a ReAct-style text"),
        ({"query": "q", "trajectory": "no actions here"}, 'holds no "Action:" lines'),
        ({"query": "", "trajectory": "Action: a"}, '"query" is missing or empty'),
    ],
)
def test_memp_errors(record: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_record(record, "memp")


# ------------------------------------------------------------- conversations


def test_conversations_match_the_source_runs() -> None:
    corpus = read_records(FILES["conversations"])
    for rec in corpus:
        t = parse_record(rec)
        conv = rec["conversations"]
        actions = [c["value"].removeprefix("Action: ") for c in conv[3:] if c["from"] == "gpt"]
        observations = [
            c["value"].removeprefix("Observation: ").strip() for c in conv[4:] if c["from"] == "human"
        ]
        assert [s.action for s in t.steps] == actions
        assert [s.observation for s in t.steps] == observations
        assert t.task_id == rec["id"]
        assert t.success is True


def test_conversations_task_from_the_task_turn_not_the_preamble() -> None:
    rec = read_records(FILES["conversations"])[0]
    t = parse_record(rec)
    assert t.task == "find two laptop and put them in bed."
    assert t.initial_observation.startswith("Here is your task. You are in the middle of a room.")


def test_conversations_observation_repeating_the_task_is_not_the_task_turn() -> None:
    """TextWorldExpress's `task` command answers "Your task is to ...": a later turn, not the task.

    Regression: the parser took the *last* user turn naming a task, so the run lost its
    first steps and its start.
    """
    rec = read_records(FILES["conversations"])[-1]
    assert rec["id"] == "twx/mapreader/train/seed0"
    t = parse_record(rec)
    assert t.steps[0].action == "look around"
    assert t.steps[1].action == "task"
    assert t.steps[1].observation.startswith("Your task is to take the coin")
    assert len(t.steps) == sum(1 for c in rec["conversations"][3:] if c["from"] == "gpt")
    assert t.task.startswith("take the coin that is located in the chamber")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"conversations": "x"}, "non-empty list"),
        ({"conversations": [{"value": "x"}]}, 'turn 1 must be an object with "from"'),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker 'alien'"),
        ({"conversations": [{"from": "human", "value": 3.5}, {"from": "gpt", "value": "a"}]}, None),
        ({"conversations": [{"from": "human", "value": ["x"]}]}, 'turn 1 "value" must be a string'),
    ],
)
def test_conversations_errors(record: dict, message: str | None) -> None:
    if message is None:
        assert parse_record(record).task == "3.5"
        return
    with pytest.raises(RecordError, match=message):
        parse_record(record)


def test_forced_format_mismatch() -> None:
    rec = read_records(FILES["native"])[0]
    with pytest.raises(RecordError, match='"messages" must be a non-empty list'):
        parse_record(rec, "openai")
    with pytest.raises(RecordError, match="unknown format 'yaml'"):
        parse_record(rec, "yaml")


# ---------------------------------------------------------------- read_jsonl


def test_read_jsonl_names_file_and_line() -> None:
    good = read_lines(FILES["native"])[0].encode()
    lines = [good + b"\n", b"\n", b"{not json\n", b"   \n", b'{"task": "t", "steps": 1}\n', b"\xff\xfe\n"]
    results = list(read_jsonl(lines, "runs.jsonl"))
    assert [r.line for r in results] == [1, 3, 5, 6]
    assert results[0].trajectory is not None
    msgs = [str(r.error) for r in results[1:]]
    assert msgs[0].startswith("runs.jsonl:3: not valid JSON")
    assert msgs[1].startswith('runs.jsonl:5: "steps" must be a list')
    assert msgs[2].startswith("runs.jsonl:6: not valid JSON")
    assert all(r.error.line == r.line and r.error.path == "runs.jsonl" for r in results[1:])


def test_read_jsonl_accepts_crlf_and_a_byte_order_mark() -> None:
    good = read_lines(FILES["openai"])[:2]
    lines = [b"\xef\xbb\xbf" + good[0].encode() + b"\r\n", good[1].encode() + b"\r\n"]
    results = list(read_jsonl(lines, "win.jsonl"))
    assert [r.error for r in results] == [None, None]
    assert [r.trajectory.task_id for r in results] == [json.loads(g)["task_id"] for g in good]
    # A BOM anywhere but at the start of the input is an error.
    (late,) = list(read_jsonl([b"\n", b"\xef\xbb\xbf" + good[0].encode()], "x.jsonl"))
    assert str(late.error).startswith("x.jsonl:2: not valid JSON")
