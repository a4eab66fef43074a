"""Update, first floor: outcomes (ledger, feedback), history/diff/revert, forget/restore/trash.

Everything runs the real CLI over a store built from real ALFWorld runs (the ``built``
fixture: 40 train runs, trajectory policy, hash embedder).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from conftest import FILES, memory_ids, memp, read_records

from memp_cli.errors import ExitCode


def _runs() -> list[dict]:
    return read_records(FILES["native"])


def _with_used(records: list[dict], used: list[str], success: bool) -> bytes:
    out = []
    for r in records:
        r = dict(r, memories_used=used, success=success)
        out.append(json.dumps(r))
    return ("\n".join(out) + "\n").encode()


def _stats(mid: str) -> dict:
    return json.loads(memp("show", mid, "--json").stdout)["stats"]


# ----------------------------------------------------------------------- outcomes


def test_ingest_counts_outcomes_once(built: Path) -> None:
    ids = memory_ids(built)
    a, b = ids[0], ids[1]
    # Two new runs (another task text so they are new trajectories) that used a and b.
    runs = [dict(r, task=r["task"] + " (again)") for r in _runs()[:2]]
    data = _with_used(runs[:1], [a, b], True) + _with_used(runs[1:], [a], False)
    r = memp("ingest", "-", "--json", input=data)
    assert r.jsonl()[0]["outcomes"] == 3
    ledger = [orjson.loads(x) for x in (built / "outcomes.jsonl").read_bytes().splitlines()]
    assert sorted((x["memory"], x["outcome"]) for x in ledger) == sorted(
        [(a, "success"), (b, "success"), (a, "failure")]
    )
    # The same runs again: stored once, counted once.
    r = memp("ingest", "-", "--json", input=data)
    assert r.jsonl()[0]["outcomes"] == 0
    assert len((built / "outcomes.jsonl").read_bytes().splitlines()) == 3
    assert _stats(a) | {"last_used": ""} == {"retrieved": 2, "successes": 1, "failures": 1, "last_used": ""}
    assert _stats(b)["successes"] == 1


def test_outcome_counting_never_rewrites_memory_files(built: Path) -> None:
    ids = memory_ids(built)
    before = {m: (built / "memories" / f"{m}.toml").read_bytes() for m in ids}
    runs = [dict(r, task=r["task"] + " (b)") for r in _runs()[:3]]
    memp("ingest", "-", input=_with_used(runs, ids[:3], False))
    memp("feedback", ids[3], "--success")
    assert {m: (built / "memories" / f"{m}.toml").read_bytes() for m in ids} == before


def test_unknown_memory_is_a_warning(built: Path) -> None:
    runs = [dict(_runs()[0], task="look at the mug (new)")]
    r = memp("ingest", "-", "--json", input=_with_used(runs, ["mnope00000000"], True))
    assert "mnope00000000" in r.stderr and "warning" in r.stderr
    assert r.jsonl()[0]["unknown_memories"] == ["mnope00000000"]
    assert not (built / "outcomes.jsonl").exists()


def test_feedback_with_trajectory_is_idempotent(built: Path) -> None:
    mid = memory_ids(built)[0]
    memp("feedback", mid, "--failure", "--trajectory", "run-1")
    memp("feedback", mid, "--failure", "--trajectory", "run-1")
    memp("feedback", mid, "--success", "--trajectory", "run-2")
    memp("feedback", mid, "--success")  # no run id: counted every time
    st = _stats(mid)
    assert (st["retrieved"], st["successes"], st["failures"]) == (3, 2, 1)


def test_feedback_needs_an_outcome_and_a_known_id(built: Path) -> None:
    mid = memory_ids(built)[0]
    memp("feedback", mid, expect=ExitCode.BAD_INPUT)
    r = memp("feedback", "mzzzzzzzzzzzz", "--success", expect=ExitCode.NOT_FOUND)
    assert "mzzzzzzzzzzzz" in r.stderr


def test_torn_ledger_line_is_skipped_and_repaired(built: Path) -> None:
    a, b = memory_ids(built)[:2]
    memp("feedback", a, "--success", "-t", "r1")
    with open(built / "outcomes.jsonl", "ab") as f:
        f.write(b'{"time": "2026-11-30T00:00:00Z", "memory": "')  # a killed writer
    memp("feedback", b, "--failure", "-t", "r2")
    assert _stats(a)["successes"] == 1
    assert _stats(b)["failures"] == 1


# ------------------------------------------------------------------------ history


def _edit_in_place(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_history_records_hand_edits_and_revert_is_byte_for_byte(built: Path) -> None:
    mid = memory_ids(built)[0]
    path = built / "memories" / f"{mid}.toml"
    original = path.read_bytes()
    _edit_in_place(path, "[stats]", "# my note about this memory\n[stats]")
    edited = path.read_bytes()
    h = memp("history", mid, "--json").jsonl()
    assert [v["by"] for v in h] == ["memp distill", "hand edit"]
    assert [v["v"] for v in h] == [1, 2]

    d = memp("diff", mid)
    assert "+# my note about this memory" in d.stdout

    memp("revert", mid, "--to", "1")
    assert path.read_bytes() == original
    h = memp("history", mid, "--json").jsonl()
    assert [v["by"] for v in h] == ["memp distill", "hand edit", "memp revert"]
    assert h[-1]["why"] == "revert to version 1" and h[-1]["sha256"] == h[0]["sha256"]
    # and back again to the edit: nothing is ever lost
    memp("revert", mid, "--to", "2")
    assert path.read_bytes() == edited


def test_revert_dry_run_changes_nothing(built: Path) -> None:
    mid = memory_ids(built)[0]
    path = built / "memories" / f"{mid}.toml"
    _edit_in_place(path, "[stats]", "# x\n[stats]")
    before = path.read_bytes()
    r = memp("revert", mid, "--to", "1", "--dry-run")
    assert "-# x" in r.stdout
    assert path.read_bytes() == before


def test_revert_to_unknown_version(built: Path) -> None:
    mid = memory_ids(built)[0]
    r = memp("revert", mid, "--to", "9", expect=ExitCode.NOT_FOUND)
    assert "no version 9" in r.stderr


def test_edit_command_writes_a_version(built: Path, tmp_path: Path) -> None:
    from conftest import editor_command, write_script

    mid = memory_ids(built)[0]
    script = write_script(
        tmp_path / "ed.py",
        "import sys, pathlib\np = pathlib.Path(sys.argv[1])\n"
        "p.write_text(p.read_text().replace('keywords = [', 'keywords = [\"lamp\", ', 1))\n",
    )
    import os

    os.environ["MEMP_EDITOR"] = editor_command(script)
    try:
        memp("edit", mid)
    finally:
        del os.environ["MEMP_EDITOR"]
    h = memp("history", mid, "--json").jsonl()
    assert [v["by"] for v in h] == ["memp distill", "memp edit"]


# ------------------------------------------------------------------ forget, trash


def test_forget_removes_from_every_index_and_restore_brings_it_back(built: Path) -> None:
    task = _runs()[0]["task"]
    top = memp("query", task, "--json", "-k", "1").jsonl()[0]["id"]
    path = built / "memories" / f"{top}.toml"
    content = path.read_bytes()
    memp("forget", top, "-m", "wrong recipe")
    assert not path.exists()
    for key in ("query", "avefact"):
        hits = [h["id"] for h in memp("query", task, "--json", "-k", "40", "--key", key).jsonl()]
        assert top not in hits, key
    listed = memp("trash", "list", "--json").jsonl()
    assert [(e["id"], e["why"], e["by"]) for e in listed] == [(top, "wrong recipe", "memp forget")]
    assert top not in [m["id"] for m in memp("list", "--json").jsonl()]

    memp("restore", top)
    assert path.read_bytes() == content
    assert memp("query", task, "--json", "-k", "1").jsonl()[0]["id"] == top
    assert memp("trash", "list", "--json").jsonl() == []


def test_distill_never_rebuilds_a_forgotten_memory(store: Path) -> None:
    memp("ingest", FILES["native"])
    memp("distill", "--policy", "trajectory")
    mid = memory_ids(store)[0]
    memp("forget", mid)
    memp("distill", "--policy", "trajectory")
    assert mid not in memory_ids(store)


def test_a_hand_delete_is_noticed_as_a_tombstone(store: Path) -> None:
    memp("ingest", FILES["native"])
    memp("distill", "--policy", "trajectory")
    mid = memory_ids(store)[0]
    content = (store / "memories" / f"{mid}.toml").read_bytes()
    (store / "memories" / f"{mid}.toml").unlink()
    r = memp("distill", "--policy", "trajectory")
    assert mid not in memory_ids(store), r.stderr
    assert [e["id"] for e in memp("trash", "list", "--json").jsonl()] == [mid]
    memp("restore", mid)
    assert (store / "memories" / f"{mid}.toml").read_bytes() == content


def test_trash_empty_is_explicit(built: Path) -> None:
    a, b = memory_ids(built)[:2]
    memp("forget", a, b)
    r = memp("trash", "empty", expect=ExitCode.BAD_INPUT)  # no terminal, no --yes
    assert "--yes" in r.stderr
    assert len(memp("trash", "list", "--json").jsonl()) == 2
    memp("trash", "empty", a, "--yes")
    assert [e["id"] for e in memp("trash", "list", "--json").jsonl()] == [b]
    # its history survives: it can still be brought back by hand from a version
    assert memp("history", a, "--json").jsonl()[-1]["sha256"] is None


def test_forget_unknown_changes_nothing(built: Path) -> None:
    a = memory_ids(built)[0]
    memp("forget", a, "mnothere00000", expect=ExitCode.NOT_FOUND)
    assert a in memory_ids(built)


def test_a_hand_edit_between_commands_becomes_a_version_at_the_next_query(built: Path) -> None:
    mid = memory_ids(built)[0]
    path = built / "memories" / f"{mid}.toml"
    memp("history", mid)  # v1 recorded
    _edit_in_place(path, "[stats]", "# first edit\n[stats]")
    memp("query", "anything at all", "-k", "1")  # the index notices the edit
    _edit_in_place(path, "# first edit", "# second edit")
    h = memp("history", mid, "--json").jsonl()
    assert [v["by"] for v in h] == ["memp distill", "hand edit", "hand edit"]
    first = memp("diff", mid, "1", "2").stdout
    assert "+# first edit" in first
