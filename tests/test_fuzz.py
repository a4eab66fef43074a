"""Hypothesis fuzzing of what memp reads from outside: JSONL lines (`memp ingest`), memory files
(`memp list/query/doctor`), `memp.toml`, and LLM replies (`memp distill`, through litellm and
tests/llm_server.py).

Every example must end with no traceback on stderr (conftest's ``memp`` checks it), an exit code
of the documented :class:`ExitCode`, and the store unchanged where the input was refused (the
other memories untouched, byte for byte). Examples are few and derandomized (the same inputs on
every run); each works on its own copy of a store built once per test.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FILES, memory_ids, memp, read_lines, stored_trajectories
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memp_cli.errors import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

CODES = {int(c) for c in ExitCode}
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# A real line of each input shape, and a real memory file: the seeds mutations start from.
SEED_LINES = [read_lines(p)[0] for p in FILES.values()]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hash store with 40 ALFWorld runs ingested and distilled (builtin): 30 memories."""
    root = tmp_path_factory.mktemp("fuzz") / ".memp"
    memp("--store", root, "init", "--embedder", "hash")
    memp("--store", root, "ingest", FILES["native"])
    memp("--store", root, "distill")
    return root


class Copy:
    """A fresh copy of the template per example (hypothesis runs many in one test)."""

    def __init__(self, template: Path) -> None:
        self.template = template

    def __call__(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(prefix="memp-fuzz-"))
        try:
            store = work / ".memp"
            shutil.copytree(self.template, store)
            yield store
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _files(store: Path, sub: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / sub).glob("*")) if p.is_file()}


def _check(run: Any) -> None:
    assert run.code in CODES, run


# ------------------------------------------------------------------------------ strategies


def _mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, cut, insert in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + insert + text[at + cut :]
    return text


_edits = st.lists(
    st.tuples(
        st.integers(0, 10_000), st.integers(0, 40), st.text(max_size=12) | st.sampled_from(FRAGMENTS := [
            '"', "'", "\\", "\\u0000", "\\ud800", "]", "[", "{", "}", ",", ":", "null", "1e999", "-0",
            "\n", "\r", "\x00", "\ufeff", "=", "[[", "]]", '"""', "true", "nan", "inf", "9" * 30,
        ])
    ),
    max_size=4,
)  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@st.composite
def jsonl_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mutated", "replaced", "value", "text"]))
    if kind == "mutated":
        return _mutate(draw(st.sampled_from(SEED_LINES)), draw(_edits))
    if kind == "replaced":  # a real record with one field set to anything
        rec = json.loads(draw(st.sampled_from(SEED_LINES)))
        key = draw(st.sampled_from([*sorted(rec), "success", "steps", "memories_used", "id"]))
        rec[key] = draw(json_values)
        return json.dumps(rec)
    if kind == "value":
        return json.dumps(draw(json_values))
    return draw(st.text(max_size=80))


# ------------------------------------------------------------------------------ the tests


@FUZZ
@given(lines=st.lists(jsonl_line(), min_size=1, max_size=4))
def test_fuzz_ingest(template: Path, lines: list[str]) -> None:
    for store in Copy(template)():
        memories = _files(store, "memories")
        before = {t["id"] for t in stored_trajectories(store)}
        data = "\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\n"
        run = memp("--store", store, "ingest", "-", "--json", input=data, expect=None)
        _check(run)
        after = [t["id"] for t in stored_trajectories(store)]
        assert len(after) == len(set(after))  # nothing stored twice
        added = set(after) - before
        if not run.stdout.strip():
            assert not added, run  # refused: nothing stored
        else:  # stored what it reports (exit 3 when bad lines were skipped: the good ones are stored)
            (report,) = run.jsonl()
            assert len(added) == report["added"], run
            assert run.code == (ExitCode.BAD_INPUT if report["bad"] else ExitCode.OK), run
        assert _files(store, "memories") == memories
        assert memp("--store", store, "doctor", expect=None).code == 0


@FUZZ
@given(
    seed=st.integers(0, 29),
    edits=_edits,
    raw=st.none() | st.binary(max_size=64),
)
def test_fuzz_memory_file(
    template: Path, seed: int, edits: list[tuple[int, int, str]], raw: bytes | None
) -> None:
    for store in Copy(template)():
        ids = memory_ids(store)
        victim = store / "memories" / f"{ids[seed]}.toml"
        data = (
            raw if raw is not None else _mutate(victim.read_text(), edits).encode("utf-8", "surrogateescape")
        )
        victim.write_bytes(data)
        others = {k: v for k, v in _files(store, "memories").items() if k != victim.name}
        listed = memp("--store", store, "list", "--json", expect=None)
        _check(listed)
        if listed.code == 0:
            assert {m["id"] for m in listed.jsonl()} >= {Path(k).stem for k in others}
        for args in (
            ["query", "put a clean mug in the cabinet", "-k", 50, "--min-score", -1, "--no-collapse"],
            ["show", ids[seed]],
            ["doctor"],
            ["stats"],
        ):
            _check(memp("--store", store, *args, expect=None))
        assert {k: v for k, v in _files(store, "memories").items() if k != victim.name} == others
        assert victim.read_bytes() == data  # a reader never rewrites a file it cannot read


@FUZZ
@given(
    edits=_edits,
    extra=st.sampled_from(
        ["", "\n[index]\nM = -1\n", "\n[embedder]\nname = 7\n", "\n[prune]\nx = 1\n", "\nmemp_version = 99\n"]
    ),
)
def test_fuzz_memp_toml(template: Path, edits: list[tuple[int, int, str]], extra: str) -> None:
    for store in Copy(template)():
        cfg = store / "memp.toml"
        text = _mutate(cfg.read_text(), edits) + extra
        cfg.write_bytes(text.encode("utf-8", "surrogateescape"))
        memories = _files(store, "memories")
        segments = _files(store, "trajectories")
        refused = memp("--store", store, "list", expect=None)
        _check(refused)
        for args in (["query", "heat an egg", "-k", 3], ["doctor"], ["ingest", FILES["memp"]], ["distill"]):
            _check(memp("--store", store, *args, expect=None))
        if refused.code != 0:  # a config memp refuses: no write went through
            assert _files(store, "trajectories") == segments and _files(store, "memories") == memories
        assert cfg.read_bytes() == text.encode("utf-8", "surrogateescape")  # never rewritten


@st.composite
def llm_reply(draw: st.DrawFn) -> str:
    good = {
        "title": "general: put a mug in the cabinet",
        "steps": ["1. find the {object}", "2. put it in the cabinet"],
        "variables": {"object": "mug"},
        "preconditions": ["the {object} exists"],
        "pitfalls": ["do not loop"],
        "keywords": ["mug", "cabinet"],
    }
    kind = draw(st.sampled_from(["field", "mutated", "value", "text", "fenced"]))
    if kind == "field":
        good[draw(st.sampled_from([*good, "extra"]))] = draw(json_values)
        return json.dumps(good, ensure_ascii=draw(st.booleans()))
    if kind == "mutated":
        return _mutate(json.dumps(good), draw(_edits))
    if kind == "value":
        return json.dumps(draw(json_values))
    if kind == "fenced":
        return "Here it is:\n```json\n" + json.dumps(good) + "\n```\n" + draw(st.text(max_size=20))
    return draw(st.text(max_size=200))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three memories edited by hand (distill keeps them), and three runs left for the LLM."""
    root = tmp_path_factory.mktemp("fuzz-llm") / ".memp"
    memp("--store", root, "init", "--embedder", "hash")
    lines = read_lines(FILES["native"])
    runs = root.parent / "runs.jsonl"
    runs.write_text("".join(line + "\n" for line in lines[:3]))
    memp("--store", root, "ingest", runs)
    memp("--store", root, "distill", "--policy", "trajectory", "--with-failures")
    for p in (root / "memories").glob("*.toml"):
        p.write_text(p.read_text() + "# mine\n")
    memp("--store", root, "index", "sync")  # the edits become versions "hand edit"
    runs.write_text("".join(line + "\n" for line in lines[3:6]))
    memp("--store", root, "ingest", runs)
    return root


@pytest.fixture(scope="module")
def llm_server() -> Iterator[Any]:
    from llm_server import serve

    with serve() as s:
        yield s


@FUZZ
@given(reply=llm_reply())
def test_fuzz_llm_reply(small: Path, llm_server: Any, reply: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_distill import KEY, MODEL

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for store in Copy(small)():
        llm_server.clear()
        llm_server.default = lambda body: reply
        memories = _files(store, "memories")
        run = memp(
            "--store", store, "distill", "--policy", "script", "--model", MODEL, "--api-base", llm_server.url,
            "--json", expect=None,
        )  # fmt: skip
        _check(run)
        assert llm_server.requests and "OPENAI_API_KEY" not in run.stderr, run  # the model answered
        assert run.code in (ExitCode.OK, ExitCode.LLM), run  # a bad reply fails its trajectory only
        now = _files(store, "memories")
        assert {k: now.get(k) for k in memories} == memories  # the memories there before: untouched
        listed = memp("--store", store, "list", "--json")
        assert len(listed.jsonl()) == len(now)  # what was written loads
        assert memp("--store", store, "doctor", expect=None).code == 0
