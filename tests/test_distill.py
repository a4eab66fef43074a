"""memp distill with the script and proceduralization policies: builtin, litellm's mock, real HTTP.

The HTTP tests run the real CLI against ``llm_server.py`` on 127.0.0.1 (``--model
openai/test-model --api-base <server>``); nothing touches the network. The trajectories are
the ALFWorld and WebShop slices in tests/data/distill_*.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memory_ids, memp, set_update_policy, subprocess_env
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.build import runner
from memp_cli.build.builtin.keywords import extract_keywords
from memp_cli.build.policies import BUILTIN_GENERATOR, memory_id
from memp_cli.build.runner import distill
from memp_cli.errors import ExitCode
from memp_cli.ingest import parse_record
from memp_cli.store import Store, fsutil
from memp_cli.store.fsutil import TMP_PREFIX, StoreLock
from memp_cli.update import history as history_mod

KEY = "sk-test-0123456789abcdef"
MODEL = "openai/test-model"
ALF = DATA / "distill_alfworld.jsonl"  # 18 runs, 10 successful
WEB = DATA / "distill_webshop.jsonl"  # 4 runs, 1 successful


@pytest.fixture
def store(vanilla_store: Path) -> Path:
    """These tests count a memory for every run, failed ones too: [update] policy = vanilla."""
    return vanilla_store


def _records(*files: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


RECORDS = _records(ALF, WEB)
TRAJ = [parse_record(r) for r in RECORDS]
BY_TASK = {t.task: t for t in TRAJ}


def task_of(body: dict[str, Any]) -> str:
    user = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "user" else ""
    for m in body["messages"]:
        if m["role"] == "user" and "Task: " in m["content"]:
            user = m["content"]
            break
    return user.split("Task: ", 1)[1].split("\n", 1)[0]


def script_reply(body: dict[str, Any]) -> str:
    """A valid script for the task in the request (numbered steps, as models often write)."""
    task = task_of(body)
    return json.dumps(
        {
            "title": f"general: {task}",
            "steps": ["1. find the {object}", "2. finish: " + task],
            "variables": {"object": task.split()[-1].strip(".")},
            "preconditions": ["the {object} exists"],
            "pitfalls": ["do not loop"],
            "keywords": ["alpha " + task.split()[0], "beta"],
        }
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with serve(default=script_reply) as s:
        yield s


@pytest.fixture
def srv(server: LLMServer) -> Iterator[LLMServer]:
    server.clear()
    server.delay = 0.0
    yield server
    server.clear()


@pytest.fixture(autouse=True)
def _fast_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for var in ("MEMP_MODEL", "MEMP_API_BASE", "MEMP_CONCURRENCY", "MEMP_LLM_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)


def _ingest(*files: Path) -> None:
    memp("ingest", *files)


def _llm(srv: LLMServer, *args: Any, expect: int | None = 0) -> Any:
    return memp("distill", "--model", MODEL, "--api-base", srv.url, *args, expect=expect)


def _load(store: Path, mid: str) -> dict[str, Any]:
    return tomllib.loads((store / "memories" / f"{mid}.toml").read_text())


def _summary(run: Any) -> dict[str, Any]:
    return run.jsonl()[-1]


def _events(store: Path, name: str) -> list[dict[str, Any]]:
    lines = (store / "journal.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- builtin (the default)


def test_builtin_proceduralization_is_the_default(store: Path) -> None:
    _ingest(ALF, WEB)
    r = memp("distill", "--json")
    rep = _summary(r)
    assert (rep["policy"], rep["model"], rep["prompt_version"]) == (
        "proceduralization",
        "builtin",
        "builtin-v1",
    )
    assert (rep["read"], rep["written"], rep["failed"], rep["calls"]) == (22, 22, 0, 0)
    assert "rule-based, not an LLM" in r.stderr
    assert len(memory_ids(store)) == 22
    for t in TRAJ:
        data = _load(store, memory_id("proceduralization", t.id))
        assert data["kind"] == "procedure" and data["version"] == 1
        assert data["keys"] == [t.task]
        assert data["provenance"]["model"] == "builtin"
        assert data["provenance"]["policy"] == "proceduralization"
        assert data["provenance"]["trajectories"] == [t.id]
        assert data["script"]["generator"] == BUILTIN_GENERATOR
        assert data["script"]["title"] and data["script"]["steps"]
        assert data["keywords"] == data["script"]["keywords"] == extract_keywords(t.task)
        assert data["steps"][0]["action"] == t.steps[0].action
    (ev,) = _events(store, "distill")
    assert ev["written"] == 22 and ev["model"] == "builtin" and ev["count"] == 22
    # Idempotent: nothing to do the second time.
    rep = _summary(memp("distill", "--json"))
    assert (rep["read"], rep["written"], rep["skipped"]) == (0, 0, 22)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fsynced paths from /proc")
def test_distill_fsyncs_what_it_writes_and_never_syncs_the_machine(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.sync() flushes every file system on the machine: distill fsyncs its own files."""
    _ingest(ALF, WEB)

    def no_sync() -> None:
        raise AssertionError("os.sync() called: it flushes every file system on the machine")

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "sync", no_sync)
    monkeypatch.setattr(os, "fsync", fsync)
    rep = _summary(memp("distill", "--json"))
    assert rep["written"] == 22
    mem_dir = str((store / "memories").resolve())
    # each memory file before its rename (under its temporary name), then the directory
    temps = [p for p in synced if os.path.dirname(p) == mem_dir and os.path.basename(p).startswith(".tmp-")]
    assert len(temps) == 22
    assert mem_dir in synced


def test_a_failed_memory_write_fails_the_batch_and_is_not_journalled(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk full at one memory file: the run fails before any file of the batch is renamed
    into place (every temp file is written first), leaves no temp file, and the journal names
    no memory; the rerun writes them all."""
    _ingest(WEB)
    real = history_mod.write_temp
    calls = []
    memories = (store / "memories").resolve()

    def disk_full_at_the_second(directory: Path, data: bytes, **kw: Any) -> Any:
        if Path(directory).resolve() == memories:  # a memory file (not its history object)
            calls.append(directory)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        return real(directory, data, **kw)

    with monkeypatch.context() as mp, pytest.raises(OSError, match="No space left"):
        mp.setattr(history_mod, "write_temp", disk_full_at_the_second)
        distill(Store.open(store), "proceduralization", model="builtin")
    assert len(calls) == 2
    assert memory_ids(store) == []
    assert not [p for p in memories.iterdir() if p.name.startswith(".tmp-")]
    assert _events(store, "distill.write") == []  # the journal names no memory that is not there
    rep = _summary(memp("distill", "--json"))
    assert (rep["written"], rep["skipped"]) == (4, 0)


def test_distill_summary_comes_after_the_index_update(store: Path) -> None:
    """The last line says the run is done only once the new memories are embedded too."""
    _ingest(ALF, WEB)
    lines = memp("distill").stderr.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("memp: index: 22 embedded"))
    summary = next(i for i, line in enumerate(lines) if line.startswith("memp: distill (proceduralization"))
    assert index < summary
    assert lines[-1].startswith("memp: done in ")


def test_builtin_script_policy_and_trajectory_keywords(store: Path) -> None:
    _ingest(WEB)
    memp("distill", "--policy", "script", "--model", "builtin")
    scripts = {t.id: _load(store, memory_id("script", t.id)) for t in TRAJ[-4:]}
    memp("distill", "--policy", "trajectory")  # the same memories, as new versions
    for t in TRAJ[-4:]:
        script = scripts[t.id]
        assert script["kind"] == "script" and "steps" not in script
        assert script["provenance"]["model"] == "builtin"
        traj = _load(store, memory_id("script", t.id))
        assert (traj["kind"], traj["version"]) == ("trajectory", 2)
        assert traj["keywords"] == extract_keywords(t.task)
        assert traj["provenance"]["model"] == ""


def test_store_config_picks_policy_and_model(store: Path, srv: LLMServer) -> None:
    cfg = store / "memp.toml"
    text = cfg.read_text()
    text = text.replace('policy = "proceduralization"', 'policy = "script"')
    text = text.replace('model = "builtin"\napi_base = ""', f'model = "{MODEL}"\napi_base = "{srv.url}"')
    cfg.write_text(text)
    _ingest(WEB)
    rep = _summary(memp("distill", "--json"))
    assert (rep["policy"], rep["model"], rep["written"]) == ("script", MODEL, 4)
    assert len(srv.requests) == 4


def test_llm_rebuilds_builtin_memories_but_not_the_reverse(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    memp("distill")
    mid = memory_id("proceduralization", TRAJ[-1].id)
    assert _load(store, mid)["provenance"]["model"] == "builtin"
    rep = _summary(_llm(srv, "--json"))
    assert (rep["written"], rep["versioned"]) == (4, 4)
    data = _load(store, mid)
    assert (data["version"], data["provenance"]["model"]) == (2, MODEL)
    rep = _summary(memp("distill", "--json"))  # the default model again: keeps the LLM's memories
    assert (rep["read"], rep["skipped"]) == (0, 4)
    assert _load(store, mid)["provenance"]["model"] == MODEL


def test_progress_bar_on_a_terminal(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from memp_cli.cli import output

    _ingest(ALF, WEB)
    buf = io.StringIO()
    monkeypatch.setattr(output, "stderr_console", lambda: Console(file=buf, force_terminal=True, width=100))
    monkeypatch.setattr(type(output.env), "stderr_isatty", property(lambda self: True))
    memp("distill")
    assert "memp: distill" in buf.getvalue() and "22/22" in buf.getvalue()
    buf.truncate(0)
    memp("-q", "distill", "--policy", "script")  # --quiet: no bar
    assert buf.getvalue() == ""


# --------------------------------------------------------------------------- litellm's own mock


def _store(path: Path) -> Store:
    memp("--store", path, "init", "--embedder", "hash")
    set_update_policy(path, "vanilla")
    memp("--store", path, "ingest", WEB)
    return Store.open(path)


def test_mock_response_script_and_cost(tmp_path: Path) -> None:
    s = _store(tmp_path / "s")
    reply = script_reply({"messages": [{"role": "user", "content": "Task: buy a lamp\n"}]})
    rep = distill(s, "proceduralization", model="openai/gpt-4o-mini", mock_response=reply)
    assert (rep.read, rep.written, rep.failed, rep.calls) == (4, 4, 0, 4)
    assert rep.tokens_in > 0 and rep.tokens_out > 0
    assert rep.cost_usd is not None and rep.cost_usd > 0  # litellm knows gpt-4o-mini's price
    for m in s.iter_memories():
        assert not isinstance(m, Exception)
        assert m.kind == "procedure" and m.steps
        assert m.script["steps"] == ["find the {object}", "finish: buy a lamp"]
        assert m.script["generator"] == "openai/gpt-4o-mini (LLM)"
        assert m.keywords == ["alpha buy", "beta"]
        assert m.provenance.prompt_version == "script-v1"
    # The same requests from another store with this cache: all served by the cache. (Deleting
    # the memory files would not do: a memory deleted by hand is a tombstone, never rebuilt.)
    s2 = _store(tmp_path / "s2")
    shutil.copytree(s.cache_dir, s2.cache_dir)
    rep = distill(s2, "proceduralization", model="openai/gpt-4o-mini", mock_response=reply)
    assert (rep.written, rep.calls, rep.cached_calls, rep.tokens_in) == (4, 0, 4, 0)


def test_mock_response_that_is_not_json_fails_every_trajectory(tmp_path: Path) -> None:
    s = _store(tmp_path / "s")
    failures: list[Any] = []
    rep = distill(
        s, "script", model="openai/gpt-4o-mini", mock_response="Sure! Here it is.", on_failure=failures.append
    )
    assert (rep.written, rep.failed, rep.pending, rep.calls) == (0, 4, 4, 8)  # one repair attempt each
    assert s.memory_ids() == []
    assert len(failures) == 4 and "no JSON object" in failures[0].reason
    assert rep.error is None  # a bad reply is per trajectory: the run went on
    assert not list((s.cache_dir / "llm").rglob("*.json"))  # invalid replies are never cached


# --------------------------------------------------------------------------- real HTTP


def test_script_policy_over_http(store: Path, srv: LLMServer) -> None:
    _ingest(ALF, WEB)
    r = _llm(srv, "--policy", "script", "--json")
    rep = _summary(r)
    assert (rep["read"], rep["written"], rep["failed"], rep["calls"]) == (22, 22, 0, 22)
    assert rep["tokens_in"] > 0 and rep["tokens_out"] > 0 and rep["cost_usd"] is None
    assert "tokens" in r.stderr and "cost unknown" in r.stderr
    assert len(srv.requests) == 22
    assert sorted(task_of(b) for b in srv.requests) == sorted(t.task for t in TRAJ)
    assert srv.headers[0]["authorization"] == f"Bearer {KEY}"
    for t in TRAJ:
        data = _load(store, memory_id("script", t.id))
        assert data["kind"] == "script" and data["keys"] == [t.task]
        assert data["script"]["title"] == f"general: {t.task}"
        assert data["script"]["steps"][0] == "find the {object}"  # numbering stripped
        assert data["keywords"] == ["alpha " + t.task.split()[0].lower(), "beta"]
        assert data["provenance"]["model"] == MODEL
        assert data["provenance"]["prompt_version"] == "script-v1"
    (ev,) = _events(store, "distill")
    assert ev["tokens_in"] == rep["tokens_in"] and ev["written"] == 22 and ev["model"] == MODEL
    # The key is never written anywhere in the store.
    for p in store.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    # Same policy, model and prompt version: skipped, no request.
    srv.clear()
    rep = _summary(_llm(srv, "--policy", "script", "--json"))
    assert (rep["written"], rep["skipped"]) == (0, 22) and srv.requests == []
    # Proceduralization asks the same prompt: every reply comes from the cache.
    rep = _summary(_llm(srv, "--policy", "proceduralization", "--json"))
    assert (rep["written"], rep["cached_calls"], rep["calls"]) == (22, 22, 0) and srv.requests == []
    assert rep["versioned"] == 22  # one memory per run: the script memories, as procedures now
    data = _load(store, memory_id("script", TRAJ[0].id))
    assert data["kind"] == "procedure" and data["script"]["title"] and data["steps"]


def test_rate_limit_and_server_errors_are_retried(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    srv.script([("status", 429), ("status", 500), ("status", 503)])
    rep = _summary(_llm(srv, "--policy", "script", "--json"))
    assert (rep["written"], rep["failed"]) == (4, 0)
    assert len(srv.requests) == 7


def test_slow_reply_past_timeout_is_retried(
    store: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(WEB)
    t = TRAJ[-1]
    slow = script_reply({"messages": [{"role": "user", "content": f"Task: {t.task}\n"}]})
    srv.script([("sleep", 2.0, slow)])
    monkeypatch.setenv("MEMP_LLM_TIMEOUT", "0.4")  # the env var; --timeout is the same option
    rep = _summary(_llm(srv, "--policy", "script", "--concurrency", "1", "--json"))
    assert (rep["written"], rep["failed"]) == (4, 0)
    assert len(srv.requests) == 5  # the slow one was asked again
    # --timeout overrides: every attempt times out -> failed, pending, exit 8.
    shutil.rmtree(store / "cache" / "llm")
    srv.clear()
    srv.script([("sleep", 1.0, slow)] * 5)
    r = _llm(
        srv,
        "--policy",
        "proceduralization",
        "--limit",
        "1",
        "--timeout",
        "0.2",
        "--concurrency",
        "1",
        expect=ExitCode.LLM,
    )
    assert "failed after 5 attempts" in r.stderr and "Timeout" in r.stderr


def test_malformed_json_twice_fails_that_trajectory_only(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    srv.script(["here you go: {not json", '```json\n{"title": "x"}\n```'])  # the reply, then the repair
    r = _llm(srv, "--policy", "script", "--concurrency", "1", "--json", expect=ExitCode.LLM)
    rep = _summary(r)
    assert (rep["read"], rep["written"], rep["failed"], rep["pending"]) == (4, 3, 1, 1)
    (failure,) = rep["failures"]
    bad = BY_TASK[task_of(srv.requests[0])]
    assert failure["trajectory"] == bad.id and failure["memory"] == memory_id("script", bad.id)
    assert f"trajectory {bad.id} failed, left pending" in r.stderr
    assert '"steps" is missing' in failure["reason"]
    assert "1 trajectory failed and stays pending" in r.stderr
    assert not (store / "memories" / f"{failure['memory']}.toml").exists()
    assert len(memory_ids(store)) == 3
    repair = srv.requests[1]["messages"]
    assert repair[-2]["role"] == "assistant" and "not valid" in repair[-1]["content"]
    # A rerun against a good server finishes the job with one request.
    srv.clear()
    rep = _summary(_llm(srv, "--policy", "script", "--json"))
    assert (rep["read"], rep["written"], rep["skipped"]) == (1, 1, 3)
    assert [task_of(b) for b in srv.requests] == [bad.task]


def test_prompt_override_with_a_new_version_redistills(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    _llm(srv, "--policy", "proceduralization")
    mid = memory_id("proceduralization", TRAJ[-1].id)
    path = store / "memories" / f"{mid}.toml"
    path.write_text(path.read_text().replace("retrieved = 0", "retrieved = 7"))
    created = _load(store, mid)["provenance"]["created"]
    # Same content, same version: nothing happens.
    prompts = store / "prompts"
    prompts.mkdir()
    builtin = (Path(llm.__file__).parents[2] / "build" / "prompts" / "script.md").read_text()
    srv.clear()
    rep = _summary(_llm(srv, "--json"))
    assert (rep["written"], rep["skipped"]) == (0, 4)
    (prompts / "script.md").write_text(
        builtin.replace("version: script-v1", "version: script-v2").replace(
            "Reply with the JSON script only.", "JSON only, please."
        )
    )
    # the stats edit above is a hand edit: kept unless --replace-edits (which keeps the stats)
    r = _llm(srv, "--dry-run", "--json")
    assert len(r.jsonl()[:-1]) == 3
    r = _llm(srv, "--dry-run", "--replace-edits", "--json")
    rows = r.jsonl()[:-1]
    assert {row["version"] for row in rows} == {2} and {row["prompt_version"] for row in rows} == {
        "script-v2"
    }
    rep = _summary(_llm(srv, "--replace-edits", "--json"))
    assert (rep["read"], rep["written"], rep["versioned"], rep["prompt_version"]) == (4, 4, 4, "script-v2")
    assert len(srv.requests) == 4 and "JSON only, please." in srv.requests[0]["messages"][-1]["content"]
    data = _load(store, mid)
    assert data["version"] == 2 and data["provenance"]["prompt_version"] == "script-v2"
    assert data["stats"]["retrieved"] == 7 and data["provenance"]["created"] == created
    # A broken override stops the run before any call (exit 5, the file named).
    (prompts / "script.md").write_text("no header\n")
    r = _llm(srv, "--json", expect=ExitCode.STORE)
    assert "broken prompt override" in r.stderr and "script.md" in r.stderr


def test_dry_run_sends_nothing_and_writes_nothing(store: Path, srv: LLMServer) -> None:
    _ingest(ALF, WEB)
    before = _snapshot(store)
    r = _llm(srv, "--policy", "script", "--dry-run", "--json")
    rows = r.jsonl()
    plan, rep = rows[:-1], rows[-1]
    assert srv.requests == [] and _snapshot(store) == before
    assert len(plan) == 22 and rep["read"] == 22 and rep["written"] == 0
    assert {(p["trajectory"], p["id"]) for p in plan} == {(t.id, memory_id("script", t.id)) for t in TRAJ}
    assert all(p["model"] == MODEL and p["prompt_version"] == "script-v1" for p in plan)
    assert all(p["estimated_tokens"] > 100 and p["cached"] is False for p in plan)
    assert rep["estimated_tokens"] == sum(p["estimated_tokens"] for p in plan)
    assert "would write 22 memories" in r.stderr and "prompt tokens to send" in r.stderr
    # After a run, the cache is visible to a dry run of another policy with the same prompt.
    _llm(srv, "--policy", "script", "--limit", "5")
    plan = _llm(srv, "--policy", "proceduralization", "--dry-run", "--json").jsonl()[:-1]
    assert sum(p["cached"] for p in plan) == 5


def test_only_success(store: Path, srv: LLMServer) -> None:
    _ingest(ALF, WEB)
    rep = _summary(_llm(srv, "--policy", "script", "--only-success", "--json"))
    assert (rep["written"], rep["filtered"]) == (11, 11)
    assert len(srv.requests) == 11
    assert all("Outcome: success" in b["messages"][-1]["content"] for b in srv.requests)


def test_no_wait_while_locked_exits_6(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    with StoreLock(store / ".lock"):
        r = memp("--no-wait", "distill", "--model", MODEL, "--api-base", srv.url, expect=ExitCode.LOCKED)
    assert "locked" in r.stderr
    (store / "cache").mkdir(exist_ok=True)
    with StoreLock(store / "cache" / "distill.lock"):  # another distill is running
        memp("--no-wait", "distill", expect=ExitCode.LOCKED)
    assert srv.requests == [] and memory_ids(store) == []
    memp("--no-wait", "distill")
    assert len(memory_ids(store)) == 4


def test_missing_key_stops_the_run_at_once(
    store: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(ALF, WEB)
    monkeypatch.delenv("OPENAI_API_KEY")
    r = _llm(srv, "--policy", "script", "--concurrency", "2", "--json", expect=ExitCode.LLM)
    rep = _summary(r)
    assert (rep["written"], rep["failed"], rep["pending"]) == (0, 0, 22) and rep["stopped"]
    assert r.stderr.count("OPENAI_API_KEY") == 2  # the error once, with its hint
    assert "hint: set OPENAI_API_KEY" in r.stderr and srv.requests == []


def test_unknown_provider_and_unreachable_server(store: Path, srv: LLMServer) -> None:
    _ingest(ALF, WEB)
    r = memp("distill", "--model", "no-such-provider-model-xyz", "--json", expect=ExitCode.LLM)
    rep = _summary(r)
    assert (rep["failed"], rep["pending"]) == (0, 22) and "provider prefix" in r.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = memp(
        "distill",
        "--model",
        MODEL,
        "--api-base",
        f"http://127.0.0.1:{port}/v1",
        "--concurrency",
        "1",
        "--json",
        expect=ExitCode.LLM,
    )
    rep = _summary(r)
    assert 0 < rep["failed"] < 22 and rep["pending"] == 22 and "unreachable" in rep["stopped"]


def test_bad_options(store: Path) -> None:
    memp("distill", "--concurrency", "0", expect=ExitCode.USAGE)
    memp("distill", "--policy", "nope", expect=ExitCode.BAD_INPUT)


# --------------------------------------------------------------------------- kill -9 and resume


def test_killed_run_resumes_without_repeating_finished_calls(store: Path, srv: LLMServer) -> None:
    _ingest(ALF, WEB)
    srv.delay = 0.25
    env = subprocess_env()
    env.update(OPENAI_API_KEY=KEY, MEMP_STORE=str(store))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memp_cli", "distill", "--policy", "script", "--model", MODEL,
         "--api-base", srv.url, "--concurrency", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    try:
        while len(memory_ids(store)) < 6 and proc.poll() is None:
            assert time.monotonic() < deadline, "the distill wrote nothing in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    first = len(srv.requests)
    done = memory_ids(store)
    assert 6 <= len(done) < 22
    for mid in done:  # every file there is whole
        assert _load(store, mid)["kind"] == "script"
    srv.delay = 0.0
    first_tasks = [task_of(b) for b in srv.requests]
    srv.clear()
    rep = _summary(_llm(srv, "--policy", "script", "--json"))
    assert rep["written"] == 22 - len(done) and rep["skipped"] == len(done)
    assert len(memory_ids(store)) == 22
    second_tasks = [task_of(b) for b in srv.requests]
    # Only the calls in flight at the kill (at most --concurrency) are asked again.
    assert len(set(first_tasks) & set(second_tasks)) <= 2
    assert first + len(second_tasks) <= 22 + 2


# --------------------------------------------------------------------------- a kill at every write point


class Killed(BaseException):
    """The process died here (a BaseException, as a kill: no handler in memp may swallow it)."""


class Faults:
    """Kill the writer at its ``kill_at``-th write; every write after that fails too (it is dead).

    Write points: memp's atomic writers (``atomic_write``, ``atomic_output``, wherever a module
    imported them), the LLM response cache's writer and the journal. The write killed leaves
    half a temporary file beside its target, as a kill in the middle of it would.
    """

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.count = 0
        self.dead = False
        self._lock = threading.Lock()

    def hit(self, path: Path | None, data: bytes = b"") -> None:
        with self._lock:
            if not self.dead:
                self.count += 1
                self.dead = self.count == self.kill_at
                if not self.dead:
                    return
                if path is not None:
                    (path.parent / f"{TMP_PREFIX}killed-{self.count}").write_bytes(data[: len(data) // 2])
        raise Killed(f"killed at write {self.kill_at}")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write, real_output = fsutil.atomic_write, fsutil.atomic_output

        def atomic_write(path: Path, data: bytes | str, **kw: Any) -> None:
            self.hit(path, data.encode() if isinstance(data, str) else data)
            real_write(path, data, **kw)

        @contextlib.contextmanager
        def atomic_output(path: Path) -> Iterator[Path]:
            self.hit(path, b"partial")
            with real_output(path) as tmp:
                yield tmp

        for mod in [m for name, m in sys.modules.items() if name.startswith("memp_cli")]:
            if getattr(mod, "atomic_write", None) is real_write:
                monkeypatch.setattr(mod, "atomic_write", atomic_write)
            if getattr(mod, "atomic_output", None) is real_output:
                monkeypatch.setattr(mod, "atomic_output", atomic_output)
        if hasattr(llm, "_atomic_write"):  # the response cache's own writer, while it has one
            real_cache_write = llm._atomic_write

            def cache_write(path: Path, data: bytes) -> None:
                self.hit(path, data)
                real_cache_write(path, data)

            monkeypatch.setattr(llm, "_atomic_write", cache_write)
        real_journal = Store.journal

        def journal(store: Store, event: str, **fields: Any) -> None:
            self.hit(None)
            real_journal(store, event, **fields)

        monkeypatch.setattr(Store, "journal", journal)


def _memory_files(store: Path) -> dict[str, str]:
    """Memory files without their timestamps (a rerun writes them at another time)."""
    out = {}
    for p in sorted((store / "memories").glob("*.toml")):
        if not p.name.startswith(TMP_PREFIX):
            lines = p.read_text().splitlines()
            out[p.stem] = "\n".join(ln for ln in lines if not ln.startswith(("created = ", "updated = ")))
    return out


def _wait_for_distill_threads() -> None:
    for t in threading.enumerate():
        if t.name.startswith("memp-distill-"):
            t.join(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["builtin", "llm"])  # the trajectory policy writes as builtin does
def test_a_kill_at_any_write_point_of_distill(
    how: str, store: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Kill distill at its 1st, 2nd, ... write: a rerun completes, no memory lost or doubled.

    Write points: memory files, journal lines, the LLM response cache, the index update.
    """
    monkeypatch.setattr(runner, "BATCH", 2)  # several batches: write points between them
    _ingest(WEB)  # 4 runs
    args = {
        "builtin": ["--policy", "proceduralization", "--model", "builtin"],
        "llm": ["--policy", "script", "--model", MODEL, "--api-base", srv.url, "--concurrency", "2"],
    }[how]
    template = tmp_path / "template"
    shutil.copytree(store, template)
    memp("distill", *args)
    reference = _memory_files(store)
    assert len(reference) == 4
    kill_at = 0
    while True:
        kill_at += 1
        shutil.rmtree(store)
        shutil.copytree(template, store)
        faults = Faults(kill_at)
        with monkeypatch.context() as mp:
            faults.install(mp)
            try:
                memp("distill", *args, expect=None)
            except Killed:
                pass
            _wait_for_distill_threads()
        if not faults.dead:
            break  # the run made fewer writes than kill_at: every write point is done
        where = f"killed at write {kill_at}"
        # the store is readable as it was left
        listed = [row["id"] for row in memp("list", "--json").jsonl()]
        assert sorted(listed) == sorted(_memory_files(store)), where
        # a rerun completes: every memory there once, whole, as a run without a kill wrote it
        rerun = memp("distill", *args, "--json", expect=None)
        assert rerun.code == 0, (where, rerun)
        assert _memory_files(store) == reference, where
        written = [mid for e in _events(store, "distill.write") for mid in e["ids"]]
        assert len(written) == len(set(written)), (where, "a memory written twice")
        assert memp("doctor", expect=None).code == 0, where
        assert memp("query", "a pair of shoes", "--json", expect=None).code == 0, where
    assert kill_at > 8  # the runs had write points: memories, journal, index (and cache)


def _bad_text_reply(body: dict[str, Any], bad: str) -> str:
    """The valid script for the request, with ``bad`` in its title and a step (JSON-escaped,
    as a model or a proxy may send it: ``"\\ud800"`` is valid JSON but not UTF-8 text)."""
    obj = json.loads(script_reply(body))
    obj["title"] += bad
    obj["steps"][0] += bad
    return json.dumps(obj)  # ensure_ascii: the lone surrogate travels as the escape \ud800


def test_a_reply_with_a_lone_surrogate_costs_its_trajectory_only_and_is_not_cached(
    store: Path, srv: LLMServer
) -> None:
    """Issue 12: a lone surrogate in a reply made distill exit 1 with UnicodeEncodeError, the
    batch unwritten, and the reply cached so every rerun failed the same way."""
    _ingest(WEB)
    first = '{"title": "x \\ud800 secret-ish", "steps": ["a"]}'  # the escape as text, twice
    srv.script([first, first])  # the reply, then the repair: both bad
    r = _llm(srv, "--policy", "script", "--concurrency", "1", "--json", expect=ExitCode.LLM)
    rep = _summary(r)
    assert (rep["read"], rep["written"], rep["failed"], rep["pending"]) == (4, 3, 1, 1)
    (failure,) = rep["failures"]
    bad = BY_TASK[task_of(srv.requests[0])]
    assert failure["trajectory"] == bad.id
    assert "lone surrogate" in failure["reason"] and '"title"' in failure["reason"]
    assert f"trajectory {bad.id} failed, left pending" in r.stderr
    assert not (store / "memories" / f"{failure['memory']}.toml").exists()
    assert len(memory_ids(store)) == 3
    for p in (store / "memories").glob("*.toml"):
        p.read_bytes().decode("utf-8")  # every written file is UTF-8
    assert not list((store / "memories").glob(f"{TMP_PREFIX}*"))
    # Not cached: a rerun asks again (here a good reply) and finishes the job.
    srv.clear()
    rep = _summary(_llm(srv, "--policy", "script", "--json"))
    assert (rep["read"], rep["written"], rep["skipped"], rep["calls"]) == (1, 1, 3, 1)
    assert [task_of(b) for b in srv.requests] == [bad.task]


def test_a_lone_surrogate_repaired_by_the_model_is_written(store: Path, srv: LLMServer) -> None:
    _ingest(WEB)
    srv.script(['{"title": "x \\udfff", "steps": ["a"]}'])  # then the default (good) reply
    rep = _summary(_llm(srv, "--policy", "script", "--concurrency", "1", "--json"))
    assert (rep["written"], rep["failed"], rep["calls"]) == (4, 0, 5)
    assert "lone surrogate" in srv.requests[1]["messages"][-1]["content"]


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x7f", "\x9b", "\ud800"])
def test_bad_text_in_one_reply_of_a_batch(store: Path, srv: LLMServer, bad: str) -> None:
    """NUL, ESC (terminal escapes), DEL and C1 controls are dropped from the script: TOML could
    hold them escaped, but a memory is read by people and shown in terminals. A lone surrogate
    cannot be written as UTF-8 at all: that reply is rejected (and repaired, here in vain)."""
    _ingest(WEB)
    body = {"messages": [{"role": "user", "content": "Task: buy a {thing}\n"}]}
    srv.script([_bad_text_reply(body, bad)] * 2)
    expect = ExitCode.LLM if bad == "\ud800" else 0
    rep = _summary(_llm(srv, "--policy", "script", "--concurrency", "1", "--json", expect=expect))
    assert (rep["written"], rep["failed"]) == ((3, 1) if expect else (4, 0))
    mid = memory_id("script", BY_TASK[task_of(srv.requests[0])].id)
    if expect:
        assert not (store / "memories" / f"{mid}.toml").exists()
        return
    script = _load(store, mid)["script"]
    assert script["title"] == "general: buy a {thing}" + ("[31m" if bad == "\x1b[31m" else "")
    assert script["steps"][0] == "find the {object}" + ("[31m" if bad == "\x1b[31m" else "")
    raw = (store / "memories" / f"{mid}.toml").read_text()
    assert not any(c in raw for c in "\x00\x1b\x7f\x9b") and "\\u00" not in raw


def test_a_memory_that_cannot_be_encoded_fails_its_trajectory_only(
    store: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write path's own guard (whatever let the text through): one unencodable memory is
    one failed trajectory; the rest of the batch is written, and no partial file is left."""
    _ingest(WEB)
    real = runner.script_memory
    victim = TRAJ[-1]

    def poisoned(t: Any, *args: Any, **kw: Any) -> Any:
        mem = real(t, *args, **kw)
        if t.id == victim.id:
            mem.task += "\ud800"
        return mem

    monkeypatch.setattr(runner, "script_memory", poisoned)
    failures: list[runner.Failure] = []
    rep = distill(Store.open(store), "script", model=MODEL, api_base=srv.url, on_failure=failures.append)
    assert (rep.read, rep.written, rep.failed, rep.pending) == (4, 3, 1, 1)
    assert [f.trajectory for f in failures] == [victim.id]
    assert "cannot be written as a TOML file" in failures[0].reason
    assert "surrogates not allowed" in failures[0].reason
    assert not (store / "memories" / f"{failures[0].memory}.toml").exists()
    assert not [p for p in store.rglob(f"{TMP_PREFIX}*")]


def test_save_memories_writes_nothing_when_one_memory_cannot_be_encoded(store: Path) -> None:
    from memp_cli.errors import MemoryFileError
    from memp_cli.model.memory import Memory

    s = Store.open(store)
    good = Memory(id="good-one", kind="script", task="t", script={"title": "x", "steps": ["a"]})
    bad = Memory(id="bad-one", kind="script", task="t\udc80", script={"title": "x", "steps": ["a"]})
    with s.lock, pytest.raises(MemoryFileError, match="bad-one cannot be written"):
        s.save_memories([good, bad], event="test")
    assert memory_ids(store) == []
    assert not [p for p in store.rglob(f"{TMP_PREFIX}*")]
