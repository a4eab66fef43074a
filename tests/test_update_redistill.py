"""Re-distilling: one memory per run whatever the policy, and a hand edit is never replaced
silently."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp
from llm_server import LLMServer, serve

from memp_cli.backends import llm

SCRIPT = {
    "title": "do the {task}",
    "steps": ["find the {object}", "finish"],
    "variables": {"object": "the thing"},
    "preconditions": [],
    "pitfalls": [],
    "keywords": ["alpha"],
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve(default=lambda body: json.dumps(SCRIPT)) as s:
        yield s


def test_another_policy_makes_a_new_version_not_another_memory(store: Path) -> None:
    memp("ingest", FILES["native"])
    memp("distill", "--policy", "trajectory")
    ids = memory_ids(store)
    assert len(ids) == 30  # the successful runs ([update] policy = adjustment)
    rep = memp("distill", "--policy", "proceduralization", "--json").jsonl()[-1]
    assert (rep["written"], rep["versioned"]) == (30, 30)
    assert memory_ids(store) == ids  # 30, not 60
    shown = json.loads(memp("show", ids[0], "--json").stdout)
    assert (shown["kind"], shown["version"], shown["provenance"]["policy"]) == (
        "procedure",
        2,
        "proceduralization",
    )
    again = memp("distill", "--policy", "proceduralization", "--json").jsonl()[-1]
    assert (again["written"], again["skipped"]) == (0, 30)
    back = memp("distill", "--policy", "script", "--json").jsonl()[-1]
    assert back["versioned"] == 30 and memory_ids(store) == ids
    assert [v["v"] for v in memp("history", ids[0], "--json").jsonl()] == [1, 2, 3]


def test_a_hand_edit_is_kept_unless_asked(store: Path, server: LLMServer) -> None:
    memp("ingest", FILES["native"])
    memp("distill")  # builtin proceduralization
    mid = memory_ids(store)[0]
    path = store / "memories" / f"{mid}.toml"
    edited = path.read_text().replace("[stats]", "# I fixed step 2 by hand\n[stats]", 1)
    path.write_text(edited)
    r = memp("distill", "--model", "openai/test-model", "--api-base", server.url, "--json")
    rep = r.jsonl()[-1]
    assert rep["kept_edits"] == 1 and rep["versioned"] == 29
    assert len(server.requests) == 29  # the edited memory's run was not even sent to the model
    assert f"{mid} was edited by hand: kept" in r.stderr
    assert path.read_text() == edited  # not replaced
    # asked: replaced, and the hand edit is a version to go back to
    rep = memp(
        "distill", "--model", "openai/test-model", "--api-base", server.url, "--replace-edits", "--json"
    ).jsonl()[-1]
    assert rep["versioned"] == 1
    assert "test-model" in path.read_text()
    hist = memp("history", mid, "--json").jsonl()
    assert [v["by"] for v in hist][-2:] == ["hand edit", "memp distill"]
    memp("revert", mid, "--to", str(hist[-2]["v"]))
    assert path.read_text() == edited


def test_memp_edit_counts_as_a_hand_edit(store: Path, server: LLMServer, tmp_path: Path) -> None:
    from conftest import editor_command, write_script

    memp("ingest", FILES["native"])
    memp("distill")
    mid = memory_ids(store)[0]
    script = write_script(
        tmp_path / "ed.py",
        "import sys, pathlib\np = pathlib.Path(sys.argv[1])\np.write_text('# mine\\n' + p.read_text())\n",
    )
    import os

    os.environ["MEMP_EDITOR"] = editor_command(script)
    try:
        memp("edit", mid)
    finally:
        del os.environ["MEMP_EDITOR"]
    rep = memp("distill", "--model", "openai/test-model", "--api-base", server.url, "--json").jsonl()[-1]
    assert rep["kept_edits"] == 1
    assert (store / "memories" / f"{mid}.toml").read_text().startswith("# mine\n")
