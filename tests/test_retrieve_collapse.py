"""What `memp query` returns is worth its prompt space: near-duplicates collapse into one hit
shown by its best-rated run, a failed run is a warning or a pitfall (never a recipe), ties go to
success, and a --max-tokens too small for one memory says so.

Each behaviour is checked against `--no-collapse`, the ranking as scored, which is what memp
returned before (the "fails without the fix" half)."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, FILES, memory_ids, memp, read_records

from memp_cli.model.memory import Memory
from memp_cli.retrieve.collapse import collapse
from memp_cli.retrieve.render import PROMPT_HEADER, estimate_tokens

RECORDS = read_records(FILES["native"])
# 4 runs of this task in the built store: 3 succeeded, 1 failed
EXAMINE = "examine the alarmclock with the desklamp."
_RUNS = itertools.count()


def _ingest(records: list[dict[str, Any]]) -> None:
    memp("ingest", "-", input="".join(json.dumps(r) + "\n" for r in records))


def _copies(
    run: dict[str, Any], n: int, *, success: bool | None = True, **changes: Any
) -> list[dict[str, Any]]:
    """``n`` runs of ``run``'s task (other ids, the last step changed so each is its own run)."""
    out = []
    for _ in range(n):
        i = next(_RUNS)
        steps = [*run["steps"][:-1], dict(run["steps"][-1], action=f"look {i}")]
        out.append(dict(run, task_id=f"{run['task_id']}#copy{i}", steps=steps, success=success, **changes))
    return out


def _set(store: Path, section_key: str, value: object) -> None:
    cfg = store / "memp.toml"
    lines = cfg.read_text().splitlines()
    hits = [i for i, ln in enumerate(lines) if ln.startswith(f"{section_key} = ")]
    assert len(hits) == 1, section_key
    lines[hits[0]] = f"{section_key} = {json.dumps(value)}"
    cfg.write_text("\n".join(lines) + "\n")


def _runs_of(hits: list[dict[str, Any]]) -> list[str]:
    return [i for h in hits for i in [h["id"], *(d["id"] for d in h["duplicates"])]]


# ------------------------------------------------------------------ collapse


def test_one_run_three_times_becomes_three_procedures(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tester's case: the top 3 for a task were the same procedure three times."""
    monkeypatch.setenv("COLUMNS", "250")  # the table on one line per hit
    raw = memp("query", EXAMINE, "-k", 3, "--no-collapse").jsonl()
    assert [h["task"] for h in raw] == [EXAMINE] * 3  # before: one procedure, three places

    hits = memp("query", EXAMINE, "-k", 3).jsonl()
    assert len({h["task"] for h in hits}) == 3  # three different procedures
    top = hits[0]
    assert top["task"] == EXAMINE and top["success"] is True
    assert len(top["duplicates"]) == 3  # the other three runs of it, counted and named
    assert {d["task"] for d in top["duplicates"]} == {EXAMINE}
    assert sorted(d["success"] for d in top["duplicates"]) == [False, True, True]
    assert all(d["link"] == "same key text" for d in top["duplicates"])
    assert len(_runs_of(hits)) == len(set(_runs_of(hits)))  # every run in one place only
    # the ranks and the table say so too
    assert [h["rank"] for h in hits] == [1, 2, 3]
    table = memp("query", EXAMINE, "-k", 3, "--format", "table").stdout
    assert f"│ {EXAMINE} (+3 similar runs, 1 failed) │" in table


def test_failed_runs_never_top_1_on_held_out_tasks(built: Path) -> None:
    """valid_seen tasks against the built store (failures distilled too): with the ranking as
    scored some top-1s are failed runs (a tie with their successful twin, broken by id);
    collapsed, none is while the procedure has a run that succeeded."""
    tasks = sorted(
        {r["task"] for r in RECORDS} | {r["task"] for r in read_records(DATA / "alfworld_valid_seen.jsonl")}
    )
    queries = "".join(json.dumps(t) + "\n" for t in tasks)
    before = memp("query", "-", "-k", 1, "--no-collapse", input=queries).jsonl()
    after = memp("query", "-", "-k", 1, input=queries).jsonl()
    succeeded = {r["task"] for r in RECORDS if r["success"]}
    failed_before = [r["query"] for r in before if r["results"][0]["success"] is False]
    assert len([q for q in failed_before if q in succeeded]) >= 3, failed_before
    for b, a in zip(before, after, strict=True):
        top, was = a["results"][0], b["results"][0]
        # as relevant as before (the same procedure, or one tied with it that succeeded) ...
        assert abs(top["score"] - was["score"]) < 1e-9
        assert top["task"] == was["task"] or (top["success"] and not was["success"])
        if top["task"] in succeeded:  # ... shown by a run that succeeded when it has one
            assert top["success"] is True, (a["query"], top)
        else:  # a procedure that only failed: a warning (see test_a_lone_failure_is_a_warning...)
            assert top["success"] is False and {d["success"] for d in top["duplicates"]} <= {False}


def test_best_rated_by_outcomes_shows_the_group(store: Path) -> None:
    """Two successful runs of one task: the one whose uses succeed more shows the group."""
    _ingest(_copies(RECORDS[0], 2))
    memp("distill", "--policy", "trajectory")
    x, y = memory_ids(store)
    for mid, outcomes in ((x, "fff"), (y, "s")):
        for c in outcomes:
            memp("feedback", mid, "--success" if c == "s" else "--failure", "-t", f"r{next(_RUNS)}")
    hits = memp("query", RECORDS[0]["task"], "-k", 3).jsonl()
    assert [h["id"] for h in hits] == [y] and [d["id"] for d in hits[0]["duplicates"]] == [x]
    explained = memp("query", RECORDS[0]["task"], "--explain").jsonl()[0]["explain"]
    assert explained["collapse"] == {
        "similar": 1,
        "chosen_because": "best rated by its outcomes (success rate 0.67)",
    }
    for _ in range(4):  # x: 4 of 7, (4+1)/(7+2) = 0.56, still below y's (1+1)/(1+2) = 0.67
        memp("feedback", x, "--success", "-t", f"r{next(_RUNS)}")
    assert [h["id"] for h in memp("query", RECORDS[0]["task"]).jsonl()] == [y]
    for _ in range(6):  # x: 10 of 13, 11/15 = 0.73
        memp("feedback", x, "--success", "-t", f"r{next(_RUNS)}")
    assert [h["id"] for h in memp("query", RECORDS[0]["task"]).jsonl()] == [x]


def test_near_duplicates_by_vector_follow_prune_duplicate_similarity(store: Path) -> None:
    """Key texts that differ but whose vectors are alike collapse at [prune]
    duplicate_similarity; 0 turns the vector test off (equal key texts still collapse)."""
    run = RECORDS[0]
    task = run["task"]  # "look at alarmclock under the desklamp."
    variant = task.replace("look at", "look closely at")
    same_words = task.upper().replace(".", " !")
    _ingest([run, *_copies(run, 1, task=variant), *_copies(run, 1, task=same_words)])
    memp("distill", "--policy", "trajectory")
    _set(store, "duplicate_similarity", 0.8)
    hits = memp("query", task, "-k", 3).jsonl()
    assert len(hits) == 1
    links = sorted(d["link"] for d in hits[0]["duplicates"])
    assert links[0] == "same key text" and re.fullmatch(r"similarity 0\.(8|9)\d\d", links[1]), links
    _set(store, "duplicate_similarity", 0)
    hits = memp("query", task, "-k", 3).jsonl()
    assert [len(h["duplicates"]) for h in hits] == [1, 0]
    assert hits[1]["task"] == variant
    # a memory of another kind is another memory, not a duplicate (as for memp prune)


def test_no_collapse_is_the_ranking_as_scored(built: Path) -> None:
    raw = memp("query", EXAMINE, "-k", 40, "--no-collapse").jsonl()
    assert all(h["duplicates"] == [] for h in raw)
    hits = memp("query", EXAMINE, "-k", 40).jsonl()
    assert sorted(_runs_of(hits)) == sorted(h["id"] for h in raw)  # every run, once
    assert len(hits) == len({h["task"] for h in raw}) < len(raw)


# ------------------------------------------------------------------ failures


def _twin_store(store: Path) -> tuple[str, str]:
    """One task, two runs: one succeeded, one failed. Returns (succeeded id, failed id)."""
    ok, bad = _copies(RECORDS[0], 1, success=True) + _copies(RECORDS[0], 1, success=False)
    _ingest([ok, bad])
    memp("distill", "--policy", "trajectory", "--with-failures")
    by_success = {h["success"]: h["id"] for h in memp("query", RECORDS[0]["task"], "--no-collapse").jsonl()}
    return by_success[True], by_success[False]


def test_a_failed_twin_is_a_pitfall_of_the_success(store: Path) -> None:
    good, bad = _twin_store(store)
    out = memp("query", RECORDS[0]["task"], "--format", "prompt").stdout
    assert out.startswith(PROMPT_HEADER)
    assert re.findall(r"^## Memory \d+ \[[^]]*id (\w+)", out, re.M) == [good]
    assert "(succeeded) (+1 similar run, 1 failed)" in out
    assert f"Pitfalls:\n  - a similar run failed ({bad}): it did not succeed; it ended with " in out
    assert out.count("Steps taken:") == 1  # the success's, never the failure's


def test_a_failure_tie_goes_to_the_success(store: Path) -> None:
    """Equal scores, different procedures (another kind is never a duplicate): the run that
    succeeded comes first, whatever the ids say."""
    run = RECORDS[0]
    _ingest(_copies(run, 2, success=True))
    memp("distill", "--policy", "proceduralization")
    first, second = memory_ids(store)  # id order: the tie-break as scored
    path = store / "memories" / f"{first}.toml"
    text = path.read_text()
    assert 'kind = "procedure"' in text and "success = true" in text
    path.write_text(
        text.replace('kind = "procedure"', 'kind = "trajectory"').replace("success = true", "success = false")
    )
    raw = memp("query", run["task"], "-k", 2, "--no-collapse").jsonl()
    assert raw[0]["score"] == raw[1]["score"] and [h["id"] for h in raw] == [first, second]
    hits = memp("query", run["task"], "-k", 2).jsonl()
    assert [(h["id"], h["success"]) for h in hits] == [(second, True), (first, False)]
    assert {h["kind"] for h in hits} == {"trajectory", "procedure"}


def test_a_lone_failure_is_a_warning_not_a_recipe(store: Path) -> None:
    long_run = next(r for r in RECORDS if len(r["steps"]) >= 8)
    bad = _copies(long_run, 1, success=False)[0]
    _ingest([bad])
    memp("distill", "--policy", "proceduralization", "--with-failures")
    out = memp("query", bad["task"], "--format", "prompt").stdout
    assert "(failed)" in out and "Warning: a run of this task failed; it is not a way to do it." in out
    assert "Example run:" not in out and "Steps taken:" not in out and "Procedure:" not in out
    n = len(bad["steps"])
    assert f"Its last 3 of {n} steps, where it went wrong:\n" in out
    assert f"  > {bad['steps'][-1]['action']}\n" in out and f"  > {bad['steps'][0]['action']}\n" not in out
    table = memp("query", bad["task"], "--format", "table").stdout
    assert "│ no " in table  # the outcome column


# ------------------------------------------------------------------ budget


def test_a_budget_too_small_for_one_memory_says_which_fits(built: Path) -> None:
    r = memp("query", EXAMINE, "--format", "prompt", "--max-tokens", 60)
    assert r.code == 0 and r.stdout == ""
    m = re.search(
        r"--max-tokens 60 is too small for even one memory: nothing was written .*at least (\d+)", r.stderr
    )
    assert m, r.stderr
    need = int(m.group(1))
    fits = memp("query", EXAMINE, "--format", "prompt", "--max-tokens", need).stdout
    assert fits.startswith(PROMPT_HEADER) and "## Memory 1 " in fits and estimate_tokens(fits) <= need
    assert memp("query", EXAMINE, "--format", "prompt", "--max-tokens", need - 1).stdout == ""
    # some fit, some not: a note (not a warning), silenced by -q
    part = memp("query", EXAMINE, "--format", "prompt", "--max-tokens", need, "-k", 3)
    assert "2 of 3 memories did not fit in --max-tokens" in part.stderr
    assert memp("-q", "query", EXAMINE, "--format", "prompt", "--max-tokens", need, "-k", 3).stderr == ""


def test_batch_prompt_names_the_query_that_did_not_fit(built: Path) -> None:
    r = memp("query", "-", "--format", "prompt", "--max-tokens", 60, input=json.dumps(EXAMINE) + "\n")
    assert r.stdout == "\n" and "query 1: --max-tokens 60 is too small" in r.stderr


@pytest.mark.parametrize("fmt", ["json", "prompt"])
def test_no_hits_is_not_a_budget_problem(built: Path, fmt: str) -> None:
    r = memp("query", EXAMINE, "--format", fmt, "--min-score", 0.999, "--max-tokens", 60)
    assert r.stdout == "" and "max-tokens" not in r.stderr


# ------------------------------------------------------------------ the function itself


def _mem(mid: str, task: str, success: bool | None, kind: str = "trajectory") -> Memory:
    return Memory(id=mid, kind=kind, task=task, success=success, steps=[{"action": "a", "observation": ""}])


def _collapse(
    mems: list[Memory], scores: list[float], vecs: Sequence[Sequence[float]], k: int, **kw: Any
) -> list[Any]:
    import numpy as np

    v = np.asarray(vecs, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    read: list[int] = []

    def load(pos: int) -> Memory | None:
        read.append(pos)
        return mems[pos] if mems[pos].task != "broken" else None

    groups = collapse(
        [(i, s, s, 0.0) for i, s in enumerate(scores)],
        k,
        kinds=[m.kind for m in mems],
        vectors=v,
        threshold=kw.get("threshold", 0.95),
        read=load,
        rating=kw.get("rating", lambda mid: 0.5),
    )
    shown: list[Any] = []
    for g in groups:
        rep = g.representative
        assert rep is not None and rep.memory is not None
        shown.append((rep.memory.id, round(rep.score, 3), [d.memory.id for d in g.duplicates]))
    return [*shown, sorted(set(read))]


def test_collapse_by_vector_shows_the_success_at_its_own_score() -> None:
    """A failure and a success of one procedure (vectors alike, tasks worded apart): the success
    shows it, at its own score, and the hits stay in score order."""
    mems = [
        _mem("f", "heat an egg, put it in the bin", False),
        _mem("o", "cool a mug", True),
        _mem("s", "heat some egg and put it in garbagecan", True),
        _mem("p", "clean a pan", True),
    ]
    vecs: list[list[float]] = [[1, 0, 0, 0.1], [0, 1, 0, 0], [1, 0, 0, 0.12], [0, 0, 1, 0]]
    *hits, read = _collapse(mems, [0.9, 0.7, 0.6, 0.5], vecs, 2)
    assert hits == [("o", 0.7, []), ("s", 0.6, ["f"])]
    assert 3 not in read  # "p" is beyond the top 2 and a duplicate of nothing shown: never read
    *hits, _ = _collapse(mems, [0.9, 0.7, 0.6, 0.5], vecs, 2, threshold=0)  # vector test off
    assert hits == [("f", 0.9, []), ("o", 0.7, [])]


def test_collapse_skips_an_unreadable_run_and_fills_k() -> None:
    mems = [_mem("a", "broken", True), _mem("b", "x", True), _mem("c", "x", False), _mem("d", "y", True)]
    vecs = [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
    *hits, _ = _collapse(mems, [0.9, 0.8, 0.8, 0.7], vecs, 2)
    assert hits == [("b", 0.8, ["c"]), ("d", 0.7, [])]


def test_collapse_rates_by_outcomes_only_between_equal_outcomes() -> None:
    mems = [_mem("c", "x", None), _mem("a", "x", True), _mem("b", "x", True)]
    vecs = [[1, 0], [1, 0], [1, 0]]
    asked: list[str] = []

    def rating(mid: str) -> float:
        asked.append(mid)
        return {"a": 0.2, "b": 0.9}.get(mid, 0.5)

    *hits, _ = _collapse(mems, [0.9, 0.8, 0.8], vecs, 3, rating=rating)
    assert hits == [("b", 0.8, ["c", "a"])]  # others best-ranked first
    assert sorted(asked) == ["a", "b"]  # the unknown-outcome run is never rated against them


# ------------------------------------------------------------------ reading only the tops of files


def _full_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the memory files parsed whole from now on."""
    import memp_cli.model.memory as memory_mod

    parsed: list[str] = []
    real = memory_mod.memory_from_toml

    def spy(text: str, path: Path | str) -> Memory:
        parsed.append(Path(path).stem)
        return real(text, path)

    monkeypatch.setattr(memory_mod, "memory_from_toml", spy)
    return parsed


@pytest.mark.parametrize("fmt", ["json", "prompt"])
def test_collapse_parses_whole_only_what_it_shows(
    built: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The duplicates of a hit are read from the tops of their files (unchanged since the index
    validated them): the output is the same as when every candidate is parsed whole, and only
    the shown runs and the failed duplicates (a prompt's pitfalls) are."""
    from memp_cli.index.state import State

    memp("index", "sync")
    args = ("query", EXAMINE, "-k", 3, "--format", fmt)
    parsed = _full_parses(monkeypatch)
    fast = memp(*args).stdout
    shown_full = list(parsed)
    with monkeypatch.context() as m:
        m.setattr(State, "stamp_at", lambda self, pos: None)  # as an index before format 7
        parsed.clear()
        assert memp(*args).stdout == fast
        every = list(parsed)
    hits = memp("query", EXAMINE, "-k", 3).jsonl()
    failed = {d["id"] for h in hits for d in h["duplicates"] if d["success"] is False}
    assert failed and sum(len(h["duplicates"]) for h in hits) >= 3
    assert sorted(shown_full) == sorted([h["id"] for h in hits] + [*failed])
    assert set(every) >= set(_runs_of(hits)) and len(every) > len(shown_full)


def test_a_file_changed_since_the_sync_is_parsed_whole(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate whose file is no longer as the index read it (here: saved in place, the
    directory unchanged, as an editor writing in place would) is parsed whole: a broken one is
    then reported and left out, as before."""
    memp("index", "sync")
    hits = memp("query", EXAMINE, "-k", 3).jsonl()
    dup = next(d["id"] for d in hits[0]["duplicates"] if d["success"] is True)
    path = built / "memories" / f"{dup}.toml"
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace("[[steps]]", "[[steps]]\nbroken =", 1))
    os.utime(built / "memories", ns=(before.st_atime_ns, (built / "memories").stat().st_mtime_ns))
    monkeypatch.setattr("memp_cli.index.state.FULL_SCAN_LIMIT", 0)  # trust the directory's mtime
    r = memp("query", EXAMINE, "-k", 3)
    assert dup not in _runs_of(r.jsonl()) and f"{dup}.toml" in r.stderr


def test_read_head_agrees_with_the_full_parse(built: Path, tmp_path: Path) -> None:
    from memp_cli.model.memory import load_memory_file
    from memp_cli.retrieve.collapse import read_head

    for mid in memory_ids(built)[:5]:
        path = built / "memories" / f"{mid}.toml"
        st = path.stat()
        full, head = load_memory_file(path), read_head(path, (st.st_mtime_ns, st.st_size))
        assert head is not None
        assert (head.id, head.kind, head.task, head.success, head.key_text()) == (
            full.id,
            full.kind,
            full.task,
            full.success,
            full.key_text(),
        )
        assert read_head(path, (st.st_mtime_ns + 1, st.st_size)) is None  # changed since
    # a multi-line string holding a line that opens with "[": the top alone does not parse
    text = path.read_text()
    odd = tmp_path / f"{mid}.toml"
    odd.write_text(text.replace(f'task = "{full.task}"', f'task = """{full.task}\n[not a table]"""', 1))
    assert load_memory_file(odd).task.endswith("[not a table]")
    st = odd.stat()
    assert read_head(odd, (st.st_mtime_ns, st.st_size)) is None
