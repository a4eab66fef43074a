"""memp query / list / show / stats on a built store (40 real ALFWorld runs, hash embedder)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import DATA, FILES, memory_ids, memp, read_records

from memp_cli.errors import ExitCode
from memp_cli.retrieve.render import PROMPT_HEADER, estimate_tokens

RECORDS = read_records(FILES["native"])
HEAT = next(r["task"] for r in RECORDS if r["task_type"] == "heat")


def _ids(run) -> list[str]:
    return [h["id"] for h in run.jsonl()]


# --------------------------------------------------------------------- query


def test_query_json_finds_the_same_task_first(cli, built: Path) -> None:
    r = cli("query", HEAT, "--json")
    hits = r.jsonl()
    assert len(hits) == 3  # [retrieval] k = 3
    assert hits[0]["task"] == HEAT
    assert [h["rank"] for h in hits] == [1, 2, 3]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= h["lexical"] <= 1 and -1 <= h["similarity"] <= 1 for h in hits)
    assert set(hits[0]) >= {"id", "kind", "task", "steps", "keys", "provenance", "stats", "version"}
    assert hits[0]["steps"] and hits[0]["kind"] == "trajectory"
    assert r.stderr == ""


def test_query_default_output_is_json_when_not_a_terminal(built: Path) -> None:
    r = memp("query", HEAT)
    assert r.jsonl()[0]["task"] == HEAT


@pytest.mark.parametrize("k", [1, 5, 40, 100])
def test_query_k(built: Path, k: int) -> None:
    """k runs as ranked with --no-collapse; k different procedures (30 distinct tasks in the 40
    runs) with near-duplicates collapsed, every run counted once."""
    assert len(memp("query", HEAT, "-k", k, "--no-collapse", "--min-score", -1).jsonl()) == min(k, 40)
    hits = memp("query", HEAT, "-k", k, "--min-score", -1).jsonl()
    assert len(hits) == min(k, 30)
    runs = [i for h in hits for i in [h["id"], *(d["id"] for d in h["duplicates"])]]
    assert len(runs) == len(set(runs)) and (k < 30 or len(runs) == 40)


def test_query_min_score(built: Path) -> None:
    all_hits = memp("query", HEAT, "-k", 40, "--min-score", -1).jsonl()
    assert len(all_hits) > 5
    cut = all_hits[4]["score"] - 1e-6  # scores are printed rounded to 6 decimals
    hits = memp("query", HEAT, "-k", 40, "--min-score", cut).jsonl()
    assert len(hits) >= 5 and all(h["score"] >= cut for h in hits)
    assert len(hits) < 40
    r = memp("query", HEAT, "--min-score", "0.999")
    assert r.stdout == ""


def test_query_kind(built: Path) -> None:
    assert len(memp("query", HEAT, "--kind", "trajectory", "-k", 5).jsonl()) == 5
    assert memp("query", HEAT, "--kind", "script").stdout == ""


def test_query_weights_zero_is_pure_cosine(built: Path) -> None:
    weights = ("--lexical-weight", "0", "--procedure-weight", "0", "--family-weight", "0")
    hits = memp("query", HEAT, *weights, "-k", 5).jsonl()
    assert all(h["score"] == pytest.approx(h["similarity"], abs=1e-5) for h in hits)


def test_query_random_key_is_reproducible_with_a_seed(built: Path) -> None:
    a = _ids(memp("query", HEAT, "--key", "random", "--seed", "7", "-k", 4))
    b = _ids(memp("query", HEAT, "--key", "random", "--seed", "7", "-k", 4))
    c = _ids(memp("query", HEAT, "--key", "random", "--seed", "8", "-k", 4))
    assert a == b and len(a) == 4 and len(set(a)) == 4
    assert a != c
    r = memp("query", HEAT, "--key", "avefact-bogus", expect=ExitCode.USAGE)
    assert "'avefact-bogus' is not one of query, avefact, random" in r.stderr


@pytest.mark.parametrize("budget", [50, 120, 400, 1500, 6000])
def test_query_prompt_respects_max_tokens(built: Path, budget: int) -> None:
    r = memp("query", HEAT, "--format", "prompt", "--max-tokens", budget, "-k", 5)
    if budget == 50:  # too small for any memory: nothing, and a warning that says so
        assert r.stdout == "" and "--max-tokens 50 is too small for even one memory" in r.stderr
        return
    assert r.stdout.startswith(PROMPT_HEADER)
    assert estimate_tokens(r.stdout) <= budget
    if budget >= 400:
        assert f"## Memory 1 [trajectory, id {memp('query', HEAT, '-k', 1).jsonl()[0]['id']}" in r.stdout
        assert f": {HEAT} (" in r.stdout
    if budget == 6000:
        assert "## Memory 5 " in r.stdout
        assert "Steps taken:" in r.stdout and "  > " in r.stdout


def test_query_prompt_grows_with_the_budget(built: Path) -> None:
    sizes = [
        len(memp("query", HEAT, "--format", "prompt", "--max-tokens", b, "-k", 5).stdout)
        for b in (100, 300, 3000)
    ]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2]


def test_query_table(built: Path) -> None:
    r = memp("query", HEAT, "--format", "table", "-k", 2)
    top = memp("query", HEAT, "-k", 1).jsonl()[0]["id"]
    assert "memories for:" in r.stdout
    assert top in r.stdout
    assert "score" in r.stdout and "first steps" in r.stdout


def test_query_invalid_option_values_are_usage_errors(built: Path) -> None:
    """An invalid option value is bad usage (exit 2), like an unknown option; 3 is bad input data."""
    for args, says in (
        (["--format", "xml"], "Invalid value for '--format': 'xml' is not one of table, json, prompt"),
        (["--format", "yaml"], "'yaml' is not one of table, json, prompt"),
        (["--key", "foo"], "Invalid value for '--key': 'foo' is not one of query, avefact, random"),
        (["--kind", "scripts"], "'scripts' is not one of trajectory, script, procedure"),
    ):
        r = memp("query", HEAT, *args, expect=ExitCode.USAGE)
        assert says in r.stderr and r.stdout == "", r


@pytest.mark.parametrize("fmt", ["table", "prompt"])
def test_query_json_conflicts_with_another_format(built: Path, fmt: str) -> None:
    """`--json --format table` printed a table into a pipe; now it says the flags conflict."""
    r = memp("query", HEAT, "--json", "--format", fmt, expect=ExitCode.USAGE)
    assert f"--json and --format {fmt} conflict (--json means --format json)" in r.stderr
    assert r.stdout == ""
    assert memp("query", HEAT, "--json", "--format", "json", "-k", 1).jsonl()[0]["rank"] == 1


def test_query_batch_from_stdin(cli, built: Path) -> None:
    tasks = [r["task"] for r in RECORDS[::10]]
    lines = [
        json.dumps(tasks[0]),
        json.dumps({"task": tasks[1], "id": "q-2"}),
        "",
        json.dumps({"query": tasks[2], "task_id": 17}),
        json.dumps({"text": tasks[3], "id": None}),
    ]
    r = cli("query", "-", "-k", 2, input="\n".join(lines) + "\n")
    rows = r.jsonl()
    assert [row["query"] for row in rows] == tasks[:4]
    assert [row["id"] for row in rows] == [None, "q-2", 17, None]
    for row, task in zip(rows, tasks, strict=False):
        assert len(row["results"]) == 2
        assert row["results"][0]["task"] == task


def test_held_out_tasks_find_runs_of_the_same_type(built: Path) -> None:
    """ALFWorld valid_seen tasks against memories of train runs: mostly the same task type."""
    held_out = read_records(DATA / "alfworld_valid_seen.jsonl")
    queries = "".join(json.dumps({"task": r["task"], "id": r["task_type"]}) + "\n" for r in held_out)
    rows = memp("query", "-", "-k", 1, input=queries).jsonl()
    assert [row["id"] for row in rows] == [r["task_type"] for r in held_out]
    same = sum(row["results"][0]["task_type"] == row["id"] for row in rows)
    assert same >= 15, same  # 17 of 20 with the hash embedder and BM25


def test_query_batch_prompt(built: Path) -> None:
    r = memp(
        "query", "-", "--format", "prompt", "-k", 1, input=json.dumps(HEAT) + "\n" + json.dumps(HEAT) + "\n"
    )
    assert r.stdout.count(PROMPT_HEADER) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", 'expected a JSON string or an object with a "task"'),
        ('{"id": 3}', 'expected a JSON string or an object with a "task"'),
        ('"   "', 'expected a JSON string or an object with a "task"'),
    ],
)
def test_query_batch_bad_line(built: Path, line: str, message: str) -> None:
    r = memp("query", "-", input=json.dumps(HEAT) + "\n\n" + line + "\n", expect=ExitCode.BAD_INPUT)
    assert f"<stdin>:3: {message}" in r.stderr
    assert r.stdout == ""


def test_query_empty_store(store: Path) -> None:
    r = memp("query", HEAT)
    assert r.stdout == ""
    assert "has no memories yet" in r.stderr


def test_query_empty_batch(built: Path) -> None:
    assert memp("query", "-", input="").stdout == ""


# --------------------------------------------------------- list, show, stats


def test_list_json(cli, built: Path) -> None:
    rows = cli("list", "--json").jsonl()
    assert [row["id"] for row in rows] == memory_ids(built)
    assert {row["task"] for row in rows} == {r["task"] for r in RECORDS}
    assert sum(row["success"] is True for row in rows) == 30
    assert all(row["kind"] == "trajectory" and row["version"] == 1 for row in rows)
    assert len(memp("list", "-n", "5").jsonl()) == 5
    assert memp("list", "--kind", "script").stdout == ""


def test_show_toml_and_json(cli, built: Path) -> None:
    mid = memory_ids(built)[3]
    path = built / "memories" / f"{mid}.toml"
    r = cli("show", mid)
    assert r.stdout == path.read_text(encoding="utf-8")
    assert tomllib.loads(r.stdout)["id"] == mid
    r = cli("show", mid, "--json")
    data = json.loads(r.stdout)
    assert data == tomllib.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("bad", ["mdoesnotexist", "../../etc/passwd", "../memp", "/etc/passwd", "M1", ".."])
def test_show_missing_or_invalid_id(built: Path, bad: str) -> None:
    r = memp("show", bad, expect=ExitCode.NOT_FOUND)
    assert r.stdout == ""
    assert "root:" not in r.stdout + r.stderr
    if bad == "mdoesnotexist":
        assert f"no memory {bad!r}" in r.stderr
    else:
        assert "is not a valid memory id" in r.stderr


def test_stats_json(cli, built: Path) -> None:
    (st,) = cli("stats", "--json").jsonl()
    assert st["store"] == str(built)
    assert st["trajectories"] == 40
    assert st["outcomes"] == {"success": 30, "failure": 10}
    assert st["memories"] == 40 and st["kinds"] == {"trajectory": 40}
    assert st["broken_memory_files"] == 0
    assert st["embedder"] == "hash"
    assert st["index"] == {"indexed": 40, "fresh": True, "problem": None, "embedder": "hash", "dim": 256}
    assert st["segments"] == 1
    assert all(v > 0 for v in st["bytes"].values())


def test_stats_reports_a_damaged_index_instead_of_failing(built: Path) -> None:
    state = built / "index" / "state.json"
    state.write_bytes(state.read_bytes()[:40])
    (st,) = memp("stats", "--json").jsonl()
    assert st["memories"] == 40
    assert st["index"]["fresh"] is False and "damaged index state" in st["index"]["problem"]


def test_stats_empty_store(store: Path) -> None:
    (st,) = memp("stats", "--json").jsonl()
    assert (st["trajectories"], st["memories"], st["segments"]) == (0, 0, 0)
    assert st["index"]["indexed"] == 0 and st["index"]["fresh"] is True


# ------------------------------------------------------------ on a terminal


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI believe stdout is a terminal (it then prints tables, not JSON)."""
    from memp_cli.cli.output import Env

    monkeypatch.setattr(Env, "stdout_isatty", property(lambda self: True))


def test_terminal_output_is_tables(built: Path, tty: None) -> None:
    top = memp("query", HEAT, "--json", "-k", 1).jsonl()[0]["id"]
    r = memp("query", HEAT, "-k", 2)
    assert "memories for:" in r.stdout and top in r.stdout
    r = memp("list", "-n", "3")
    assert r.stdout.count("trajectory") == 3 and "success" in r.stdout
    r = memp("stats")
    assert "memp store" in r.stdout and "index.indexed" in r.stdout
    r = memp("query", HEAT, "--min-score", "0.999")
    assert r.stdout == "" and "no memory is a match: the best scored 0." in r.stderr
    assert "below the floor 0.999" in r.stderr and "--min-score -1" in r.stderr


def test_an_unrelated_task_gets_nothing_and_is_told_why(built: Path) -> None:
    """The default floor: a task of another domain is not served ALFWorld memories."""
    r = memp("query", "write a haiku about the autumn sea", "--json")
    assert r.stdout == "" and "no memory is a match" in r.stderr and "floor 0.15" in r.stderr
    assert memp("query", "write a haiku about the autumn sea", "--json", "--min-score", "-1").jsonl()
    assert memp("query", HEAT, "--json").jsonl()[0]["task"] == HEAT


def test_terminal_doctor_prints_findings(built: Path, tty: None) -> None:
    (built / "memories" / ".tmp-x").write_text("x")
    r = memp("doctor")
    assert "warning: " in r.stdout and "leftover temporary file" in r.stdout and "fix: " in r.stdout
