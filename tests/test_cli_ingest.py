"""memp init / ingest, driven through the real CLI (in-process and as a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    FILES,
    memp,
    memp_subprocess,
    read_lines,
    read_records,
    segments,
    stored_trajectories,
)

from memp_cli.errors import ExitCode
from memp_cli.ingest import parse_record

GOOD = read_lines(FILES["native"])


class Feed:
    """One input given as a file argument or on standard input (``-``)."""

    def __init__(self, how: str, workdir: Path) -> None:
        self.how = how
        self.workdir = workdir

    def __call__(self, content: bytes | str, name: str = "runs.jsonl") -> tuple[list[str], bytes | None, str]:
        """-> (arguments, stdin bytes, the name memp uses in messages)."""
        data = content.encode("utf-8") if isinstance(content, str) else content
        if self.how == "stdin":
            return ["-"], data, "<stdin>"
        path = self.workdir / name
        path.write_bytes(data)
        return [str(path)], None, str(path)


@pytest.fixture(params=["file", "stdin"])
def feed(request: pytest.FixtureRequest, isolated: Path) -> Feed:
    return Feed(request.param, isolated)


# ---------------------------------------------------------------------- init


def test_init_creates_a_store_and_refuses_twice(cli, store_dir: Path) -> None:
    r = cli("init", "--embedder", "hash")
    assert r.stdout == ""
    assert f"created store {store_dir}" in r.stderr
    assert (store_dir / "memp.toml").is_file()
    assert 'name = "hash"' in (store_dir / "memp.toml").read_text()
    r = cli("init", "--embedder", "hash", expect=ExitCode.STORE)
    assert r.stdout == ""
    assert f"{store_dir / 'memp.toml'} already exists" in r.stderr
    assert "hint:" in r.stderr


def test_init_directory_argument_and_dim(isolated: Path) -> None:
    memp("init", "--embedder", "hash", "--dim", "64", "elsewhere")
    text = (isolated / "elsewhere" / "memp.toml").read_text()
    assert 'name = "hash"' in text and "dim = 64" in text
    assert not (isolated / ".memp").exists()


def test_commands_without_a_store_exit_not_found(store_dir: Path) -> None:
    for args in (["ingest", str(FILES["native"])], ["query", "x"], ["list"], ["stats"], ["distill"]):
        r = memp(*args, expect=ExitCode.NOT_FOUND)
        assert f"no memp store at {store_dir}" in r.stderr
        assert "memp init" in r.stderr
        assert r.stdout == ""


# -------------------------------------------------------------------- ingest


@pytest.mark.parametrize("shape", list(FILES))
@pytest.mark.parametrize("forced", [False, True])
def test_ingest_each_shape(store: Path, feed: Feed, shape: str, forced: bool) -> None:
    fmt = shape.split("_")[0]
    content = FILES[shape].read_bytes()
    args, data, name = feed(content)
    extra = ["--format", fmt] if forced else []
    r = memp("ingest", *args, *extra, "--json", input=data)
    n = len(read_lines(FILES[shape]))
    (report,) = r.jsonl()
    assert report["file"] == name
    assert (report["read"], report["added"], report["duplicates"], report["bad"]) == (n, n, 0, 0)
    assert f"{name}: {n} trajectories read, {n} added, 0 already stored, 0 bad lines" in r.stderr
    stored = stored_trajectories(store)
    expected = [parse_record(rec).to_dict() for rec in read_records(FILES[shape])]
    assert stored == expected
    assert all(len(t["steps"]) >= 1 and t["task"] for t in stored)


@pytest.mark.parametrize("shape", ["native", "openai", "memp", "conversations"])
def test_ingest_forced_wrong_format_rejects_every_line(store: Path, feed: Feed, shape: str) -> None:
    wrong = {"native": "openai", "openai": "memp", "memp": "conversations", "conversations": "native"}[shape]
    args, data, name = feed(FILES[shape].read_bytes())
    r = memp("ingest", *args, "--format", wrong, input=data, expect=ExitCode.BAD_INPUT)
    n = len(read_lines(FILES[shape]))
    for line in range(1, min(n, 20) + 1):
        assert f"{name}:{line}: " in r.stderr
    assert segments(store) == []


def test_ingest_unknown_format(store: Path) -> None:
    r = memp("ingest", FILES["native"], "--format", "yaml", expect=ExitCode.USAGE)
    assert "Invalid value for '--format' / '-f': 'yaml' is not one of auto, native" in r.stderr


def test_ingest_several_files_in_one_call(cli, store: Path) -> None:
    files = [FILES["native"], FILES["openai"], FILES["conversations"]]
    r = cli("ingest", *files, "--json")
    reports = r.jsonl()
    assert [rep["file"] for rep in reports] == [str(f) for f in files]
    assert [rep["added"] for rep in reports] == [40, 5, 5]
    assert len(segments(store)) == 3
    assert len(stored_trajectories(store)) == 50


def test_ingest_file_and_stdin_together(store: Path) -> None:
    r = memp("ingest", FILES["openai"], "-", "--json", input=FILES["memp"].read_bytes())
    assert [(rep["file"], rep["added"]) for rep in r.jsonl()] == [(str(FILES["openai"]), 5), ("<stdin>", 5)]


def test_duplicates_are_stored_once(store: Path, feed: Feed) -> None:
    args, data, _ = feed(FILES["native"].read_bytes())
    memp("ingest", *args, input=data)
    r = memp("ingest", *args, "--json", input=data)
    (rep,) = r.jsonl()
    assert (rep["read"], rep["added"], rep["duplicates"], rep["segment"]) == (40, 0, 40, None)
    assert len(segments(store)) == 1

    # The same run under another task_id (and other labels) is the same run.
    rec = json.loads(GOOD[0])
    rec["task_id"] = "renamed/run/1"
    rec["source"] = "copied from somewhere else"
    args, data, _ = feed(json.dumps(rec) + "\n" + GOOD[0] + "\n", name="renamed.jsonl")
    r = memp("ingest", *args, "--json", input=data)
    (rep,) = r.jsonl()
    assert (rep["added"], rep["duplicates"]) == (0, 2)
    assert len(stored_trajectories(store)) == 40


def test_duplicate_lines_within_one_input(store: Path, feed: Feed) -> None:
    args, data, _ = feed("\n".join([GOOD[1], GOOD[1], GOOD[2], GOOD[1]]) + "\n")
    (rep,) = memp("ingest", *args, "--json", input=data).jsonl()
    assert (rep["read"], rep["added"], rep["duplicates"]) == (4, 2, 2)


def _bad_input() -> tuple[bytes, dict[int, str]]:
    """Good real lines mixed with bad ones: -> (content, {line: expected message part})."""
    no_task = json.loads(GOOD[3])
    del no_task["task"]
    wrong_types = json.loads(GOOD[4])
    wrong_types["steps"] = "go to fridge 1"
    bad_success = json.loads(GOOD[5])
    bad_success["success"] = "maybe"
    empty_steps = json.loads(GOOD[6])
    empty_steps["steps"] = []
    lines: list[bytes] = [
        GOOD[0].encode(),  # 1
        b'{"task": "heat some egg", "steps": [',  # 2: malformed JSON
        GOOD[1].encode(),  # 3
        json.dumps(no_task).encode(),  # 4
        json.dumps(wrong_types).encode(),  # 5
        b"",  # 6: blank, skipped silently
        GOOD[2].encode().replace(b"You arrive", b"\xff\xfe arrive"),  # 7: not UTF-8
        b"[" + GOOD[2].encode() + b"]",  # 8: an array, not an object
        json.dumps(bad_success).encode(),  # 9
        json.dumps(empty_steps).encode(),  # 10
        b'"just a string"',  # 11
        GOOD[2].encode(),  # 12
    ]
    expected = {
        2: "not valid JSON",
        4: '"task" is missing or empty',
        5: '"steps" must be a list',
        7: "not valid JSON",
        8: "a trajectory must be a JSON object, got list",
        9: '"success" must be true, false or null',
        10: "the trajectory has no steps",
        11: "a trajectory must be a JSON object, got str",
    }
    return b"\n".join(lines) + b"\n", expected


def test_bad_lines_are_reported_and_good_ones_kept(cli, store: Path, feed: Feed) -> None:
    content, expected = _bad_input()
    args, data, name = feed(content)
    r = cli("ingest", *args, "--json", input=data, expect=ExitCode.BAD_INPUT)
    for line, message in expected.items():
        assert f"memp: warning: skipped {name}:{line}: {message}" in r.stderr, (line, r)
    assert f"{len(expected)} bad lines skipped; the good ones are stored" in r.stderr
    (rep,) = r.jsonl()
    assert (rep["read"], rep["added"], rep["bad"]) == (3, 3, len(expected))
    tasks = [t["task"] for t in stored_trajectories(store)]
    assert tasks == [json.loads(GOOD[i])["task"] for i in (0, 1, 2)]


def test_strict_aborts_and_stores_nothing(cli, store: Path, feed: Feed) -> None:
    content, _ = _bad_input()
    args, data, name = feed(content)
    r = cli("ingest", "--strict", *args, input=data, expect=ExitCode.BAD_INPUT)
    assert f"memp: error: {name}:2: not valid JSON" in r.stderr
    assert r.stdout == ""
    assert segments(store) == []
    assert list((store / "trajectories").iterdir()) == []


def test_many_bad_lines_are_summarised(store: Path, feed: Feed) -> None:
    args, data, name = feed("\n".join(["{nope"] * 30 + [GOOD[0]]) + "\n")
    r = memp("ingest", *args, input=data, expect=ExitCode.BAD_INPUT)
    assert r.stderr.count("skipped ") == 20
    assert f"... and 10 more bad lines in {name}" in r.stderr
    assert "30 bad lines skipped" in r.stderr
    assert len(stored_trajectories(store)) == 1


def test_empty_input_stores_nothing(store: Path, feed: Feed) -> None:
    args, data, _ = feed("\n\n")
    r = memp("ingest", *args, "--json", input=data)
    (rep,) = r.jsonl()
    assert (rep["read"], rep["added"], rep["segment"]) == (0, 0, None)
    assert segments(store) == []


def test_ingest_missing_file_and_directory(store: Path, isolated: Path) -> None:
    r = memp("ingest", isolated / "nope.jsonl", expect=ExitCode.NOT_FOUND)
    assert f"{isolated / 'nope.jsonl'}: no such file" in r.stderr
    r = memp("ingest", isolated, expect=ExitCode.BAD_INPUT)
    assert f"{isolated}: is a directory" in r.stderr


def test_ingest_journal_records_each_segment(store: Path) -> None:
    memp("ingest", FILES["native"], FILES["openai"])
    events = [json.loads(line) for line in (store / "journal.jsonl").read_text().splitlines()]
    ingests = [e for e in events if e["event"] == "ingest"]
    assert [e["added"] for e in ingests] == [40, 5]
    assert {e["segment"] for e in ingests} == {p.name for p in segments(store)}


def test_no_traceback_unless_asked(store: Path) -> None:
    r = memp("show", "mnothere", expect=ExitCode.NOT_FOUND)
    assert "Traceback" not in r.stderr
    r = memp("--traceback", "show", "mnothere", expect=ExitCode.NOT_FOUND)
    assert "Traceback (most recent call last)" in r.stderr
    assert "memp: error: no memory 'mnothere'" in r.stderr


def test_usage_errors_exit_2(store: Path) -> None:
    """Regression: typer vendors click, so usage errors were reported as memp bugs (exit 1)."""
    for args in (["query", "x", "--bogus"], ["bogus-command"], ["show"], ["query", "x", "-k", "0"]):
        r = memp(*args, expect=ExitCode.USAGE)
        assert "bug in memp" not in r.stderr
        assert r.stdout == ""


def test_version() -> None:
    from memp_cli import __version__

    r = memp_subprocess("--version")
    assert r.stdout == f"memp {__version__}\n"
    assert r.stderr == ""
