"""Machine rewrites of a memory file keep the user's comments and layout (tomlkit round trip)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.build.policies import memory_id
from memp_cli.ingest import parse_record
from memp_cli.model.memory import Memory, Provenance, memory_from_toml, write_memory_file
from memp_cli.model.tomlutil import update_toml


def _memory() -> Memory:
    return Memory(
        id="m1",
        kind="trajectory",
        task="heat some egg and put it in the fridge.",
        keys=["heat some egg and put it in the fridge."],
        keywords=["egg", "fridge"],
        success=True,
        steps=[{"action": "go to microwave 1", "observation": "a microwave\nclosed"}],
        provenance=Provenance(trajectories=["t1"], policy="trajectory", created="2026-01-01T00:00:00Z"),
    )


HAND = [
    ("# memp memory.", "# top: my note about this memory\n# memp memory."),
    ('\nkind = "trajectory"\n', '\nkind = "trajectory"   # inline: keep me\n'),
    ("[stats]\n", "[stats]\n# inside a table: keep me too\n"),
    ("[provenance]\n", "\n# before a table\n[provenance]\n"),
]


def _hand_edited(mem: Memory) -> str:
    text = mem.to_toml()
    for old, new in HAND:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def test_comments_survive_a_change_of_another_key() -> None:
    mem = _memory()
    before = _hand_edited(mem)
    mem.keywords = ["egg", "fridge", "microwave"]
    mem.stats.retrieved = 3
    mem.version = 2
    after = mem.to_toml(previous=before)
    for _, new in HAND:
        assert new in after or new.strip() in after, new
    assert memory_from_toml(after, "m1.toml") == mem
    # Only the changed lines differ (keywords grew by one line).
    a, b = before.splitlines(), after.splitlines()
    assert len(b) == len(a) + 1
    assert [x for x in b if x not in a] == ["version = 2", '    "microwave",', "retrieved = 3"]


def test_a_changed_value_keeps_its_inline_comment_and_its_place() -> None:
    mem = _memory()
    before = mem.to_toml().replace('\nkind = "trajectory"\n', '\nkind = "trajectory"  # was a script\n')
    # The user moved `keys` to the top: the order is theirs to keep.
    keys_block = '\nkeys = [\n    "heat some egg and put it in the fridge.",\n]\n'
    assert keys_block in before
    before = before.replace(keys_block, "\n").replace(
        "schema_version = 1\n", "schema_version = 1" + keys_block
    )
    mem.kind = "procedure"
    mem.script = {"title": "heat {obj}", "steps": ["go to {obj}"]}
    mem.keys = ["cool some egg and put it in the fridge."]
    after = mem.to_toml(previous=before)
    assert '\nkind = "procedure"  # was a script\n' in after
    assert after.index("keys = [") < after.index("id = ")
    assert '"cool some egg and put it in the fridge."' in after
    assert memory_from_toml(after, "m1.toml") == mem


def test_added_and_dropped_keys() -> None:
    mem = _memory()
    mem.task_type = "heat"
    before = mem.to_toml().replace('task_type = "heat"\n', 'task_type = "heat"  # the ALFWorld type\n')
    mem.task_type = ""  # dropped (not written when empty)
    mem.success = None  # dropped
    mem.keys = []  # emptied
    mem.extra = {"note": "checked"}
    after = mem.to_toml(previous=before)
    assert "task_type" not in after and "the ALFWorld type" not in after
    assert memory_from_toml(after, "m1.toml") == mem
    data = tomllib.loads(after)
    assert "success" not in data and data["keys"] == [] and data["note"] == "checked"


def test_multiline_strings_and_steps_keep_the_fresh_style() -> None:
    mem = _memory()
    before = mem.to_toml().replace("[[steps]]\n", "[[steps]]\n# the first step\n", 1)
    mem.steps = [*mem.steps, {"action": "open fridge 1", "observation": "cold\ninside"}]
    after = mem.to_toml(previous=before)
    assert memory_from_toml(after, "m1.toml") == mem
    assert '"""' in after  # a new multi-line string is rendered as the fresh file renders it
    mem.steps[0]["observation"] = "a microwave\nopen"  # same number of steps: updated in place
    again = mem.to_toml(previous=after)
    assert "# the first step" in again and memory_from_toml(again, "m1.toml") == mem
    mem.steps = mem.steps[:1]  # a step dropped
    last = mem.to_toml(previous=again)
    assert "# the first step" in last and memory_from_toml(last, "m1.toml") == mem
    assert "open fridge 1" not in last


@pytest.mark.parametrize(
    "previous",
    [
        "not toml = = =\n",
        "",
        'id = "m1"\nstats = { retrieved = 0 }\n',  # an inline table where the file has a [stats]
        "[[stats]]\nretrieved = 1\n",  # an array of tables where a table goes
    ],
)
def test_unusable_previous_text_falls_back_to_the_fresh_rendering(previous: str) -> None:
    mem = _memory()
    after = mem.to_toml(previous=previous)
    assert memory_from_toml(after, "m1.toml") == mem
    if previous.startswith("not toml"):
        assert after == mem.to_toml()


def test_a_merge_that_reads_back_wrong_gives_the_fresh_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    from memp_cli.model import tomlutil

    monkeypatch.setattr(tomlutil, "_merge", lambda old, new: None)  # a merge that changes nothing
    mem = _memory()
    before = _hand_edited(mem)
    mem.version = 2
    assert mem.to_toml(previous=before) == mem.to_toml()


def test_unchanged_content_is_byte_identical() -> None:
    mem = _memory()
    before = _hand_edited(mem)
    assert mem.to_toml(previous=before) == before


def test_types_are_compared_strictly() -> None:
    # 1 == True in Python: a file saying `success = 1` must still be rewritten as `true`.
    assert update_toml("a = 1\n", {"a": True}) == "a = true\n"
    assert update_toml("a = 1 # n\n", {"a": 1.0}) == "a = 1.0 # n\n"
    assert update_toml("a = 1 # n\n", {"a": 1}) == "a = 1 # n\n"


def test_a_file_as_memp_wrote_it_skips_the_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    from memp_cli.model import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "update_toml", lambda old, data: calls.append(old))
    mem = _memory()
    machine = mem.to_toml()
    mem.version, mem.success = 2, False
    assert mem.to_toml(previous=machine) == mem.to_toml() and calls == []
    commented = _hand_edited(mem)
    mem.to_toml(previous=commented)
    assert calls == [commented]


def test_write_memory_file_keeps_the_file_it_replaces(tmp_path: Path) -> None:
    mem = _memory()
    path = tmp_path / "m1.toml"
    write_memory_file(path, mem)
    assert path.read_text(encoding="utf-8") == mem.to_toml()
    path.write_text(_hand_edited(mem), encoding="utf-8")
    mem.version = 2
    write_memory_file(path, mem)
    text = path.read_text(encoding="utf-8")
    assert all(new.strip() in text for _, new in HAND) and "version = 2" in text
    assert [p.name for p in tmp_path.iterdir()] == ["m1.toml"]  # no temp file left behind


# ------------------------------------------------------------- a re-distill


WEB = DATA / "distill_webshop.jsonl"


def _reply(body: dict[str, Any]) -> str:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user" and "Task: " in m["content"])
    task = user.split("Task: ", 1)[1].split("\n", 1)[0]
    return json.dumps(
        {
            "title": f"general: {task}",
            "steps": ["find the {object}", "finish: " + task],
            "variables": {"object": "it"},
            "preconditions": [],
            "pitfalls": ["do not loop"],
            "keywords": ["alpha", "beta"],
        }
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve(default=_reply) as s:
        yield s


def test_a_redistill_keeps_the_hand_comments(vanilla_store: Path, server: LLMServer) -> None:
    store = vanilla_store
    memp("ingest", WEB)
    memp("distill")  # builtin: proceduralization memories, version 1
    t = parse_record(json.loads(WEB.read_text().splitlines()[-1]))
    path = store / "memories" / f"{memory_id('proceduralization', t.id)}.toml"
    text = path.read_text(encoding="utf-8")
    text = "# top: reviewed by hand\n" + text
    text = text.replace("[stats]\n", "[stats]\n# inside stats\n", 1)
    text = text.replace('\nkind = "procedure"\n', '\nkind = "procedure"  # inline kind\n', 1)
    path.write_text(text, encoding="utf-8")
    rep = memp(
        "distill", "--model", "openai/test-model", "--api-base", server.url, "--replace-edits", "--json"
    ).jsonl()[-1]
    assert rep["versioned"] == 4
    after = path.read_text(encoding="utf-8")
    for comment in ("# top: reviewed by hand", "# inside stats", "# inline kind"):
        assert comment in after, comment
    data = tomllib.loads(after)
    assert data["version"] == 2 and data["provenance"]["model"] == "openai/test-model"
    assert data["script"]["pitfalls"] == ["do not loop"]


def test_an_array_of_tables_emptied_becomes_an_empty_array() -> None:
    assert update_toml("# c\n[[a]]\nx = 1\n", {"a": []}) == "# c\na = []\n"
