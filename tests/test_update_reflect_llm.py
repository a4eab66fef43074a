"""memp reflect --model: through litellm to a local OpenAI-compatible server (no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FILES, memp, read_records
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.build.policies import memory_id
from memp_cli.errors import ExitCode
from memp_cli.ingest import parse_record

MODEL = "openai/reflector"

REVISED = {
    "title": "heat a {object} and put it in/on a {receptacle}",
    "steps": [
        "go to where the {object} is likely to be",
        "take the {object}",
        "go to the microwave and heat the {object} with it",
        "put the {object} in/on the {receptacle}",
    ],
    "variables": {"object": "the thing to heat", "receptacle": "where it goes"},
    "preconditions": ["a microwave is in the room"],
    "pitfalls": ["the run never heated the {object}: heat it before putting it down"],
    "keywords": ["heat", "put"],
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve() as s:
        yield s


def _setup(store: Path) -> tuple[str, str]:
    """A store of successful procedures and one real failure that used one of them (and no
    other failure, which adjustment would pair with its nearest procedure)."""
    records = read_records(FILES["native"])
    good = "".join(json.dumps(r) + "\n" for r in records if r["success"] is True)
    memp("ingest", "-", input=good.encode())  # no unattributed failure in the store
    memp("distill")
    failed = next(r for r in records if r["success"] is False)
    ok = next(r for r in records if r["success"] is True and r["task_type"] == failed["task_type"])
    mid = memory_id("proceduralization", parse_record(ok).id)
    rec = dict(failed, memories_used=[mid])
    memp("ingest", "-", input=(json.dumps(rec) + "\n").encode())
    return mid, parse_record(rec).id


def _reflect(server: LLMServer, *args: str, expect: int = 0) -> object:
    return memp("reflect", "--model", MODEL, "--api-base", server.url, *args, expect=expect)


def _show(mid: str) -> dict:
    return json.loads(memp("show", mid, "--json").stdout)


def test_a_model_revises_the_script(store: Path, server: LLMServer) -> None:
    mid, tid = _setup(store)
    server.script([json.dumps({"diagnosis": "it never heated the object", "script": REVISED})])
    before = _show(mid)
    rows = _reflect(server, "--json").jsonl()  # type: ignore[attr-defined]
    assert [(r["memory"], r["trajectory"], r["changed"]) for r in rows] == [(mid, tid, True)]
    after = _show(mid)
    assert after["version"] == before["version"] + 1
    assert after["script"]["steps"] == REVISED["steps"]
    assert after["script"]["generator"] == f"{MODEL} (LLM reflection)"
    h = memp("history", mid, "--json").jsonl()[-1]
    assert (h["by"], h["why"], h["trajectory"]) == ("memp reflect", "it never heated the object", tid)
    # what the model was sent: the script, the failed run, a JSON schema to follow
    body = server.requests[-1]
    prompt = "\n".join(m["content"] for m in body["messages"])
    assert before["script"]["title"] in prompt and "Outcome: failure" in prompt
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["diagnosis", "script"]
    # handled once: a second run sends nothing
    n = len(server.requests)
    assert _reflect(server, "--json").jsonl() == []  # type: ignore[attr-defined]
    assert len(server.requests) == n


@pytest.mark.parametrize(
    "reply",
    [
        "I think the agent should heat it.",  # not JSON
        json.dumps({"diagnosis": "", "script": REVISED}),  # no diagnosis
        json.dumps({"diagnosis": "x", "script": {"title": "t", "steps": []}}),  # no steps
        json.dumps({"diagnosis": "x", "memory": "m000000000000", "script": REVISED}),  # another memory
        json.dumps({"diagnosis": "heat \ud800 it", "script": REVISED}),  # a lone surrogate (issue 12)
        json.dumps({"diagnosis": "x", "script": {**REVISED, "steps": ["\udc00"]}}),
    ],
)
def test_a_bad_reply_changes_nothing(store: Path, server: LLMServer, reply: str) -> None:
    mid, _ = _setup(store)
    content = (store / "memories" / f"{mid}.toml").read_bytes()
    server.script([reply, reply])  # the reply, then the same after the repair request
    r = _reflect(server)
    assert "nothing changed" in r.stderr  # type: ignore[attr-defined]
    assert (store / "memories" / f"{mid}.toml").read_bytes() == content
    assert len(server.requests) == 2  # one repair attempt, no more
    # not marked as handled: a later run with a working model tries again
    server.script([json.dumps({"diagnosis": "heat first", "script": REVISED})])
    rows = _reflect(server, "--json").jsonl()  # type: ignore[attr-defined]
    assert [r["changed"] for r in rows] == [True]


def test_a_missing_key_stops_the_run(store: Path, server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    mid, _ = _setup(store)
    monkeypatch.delenv("OPENAI_API_KEY")
    server.script([("status", 401)])
    content = (store / "memories" / f"{mid}.toml").read_bytes()
    r = memp("reflect", "--model", "openai/gpt-4o-mini", "--api-base", server.url, expect=ExitCode.LLM)
    assert "OPENAI_API_KEY" in r.stderr
    assert (store / "memories" / f"{mid}.toml").read_bytes() == content
