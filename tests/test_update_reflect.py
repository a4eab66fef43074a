"""memp reflect (the paper's adjustment) with the built-in reflector, on real ALFWorld failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import FILES, memory_ids, memp, read_records

from memp_cli.build.policies import memory_id
from memp_cli.ingest import parse_record
from memp_cli.model.trajectory import Trajectory


def _build(store: Path) -> list[dict]:
    records = read_records(FILES["native"])
    good = "".join(json.dumps(r) + "\n" for r in records if r["success"] is True)
    memp("ingest", "-", input=good.encode())  # the failures come in with the memory they used
    memp("distill")  # proceduralization, builtin
    return records


def _failure_using(records: list[dict], mid: str, task_type: str) -> tuple[dict, str]:
    """A real failed run of ``task_type``, reported as having used memory ``mid``."""
    failed = next(r for r in records if r["success"] is False and r["task_type"] == task_type)
    rec = dict(failed, memories_used=[mid])
    tid = parse_record(rec).id
    memp("ingest", "-", input=(json.dumps(rec) + "\n").encode())
    return rec, tid


def _memory_of_type(records: list[dict], task_type: str) -> str:
    t = next(r for r in records if r["success"] is True and r["task_type"] == task_type)
    return memory_id("proceduralization", parse_record(t).id)


def test_reflect_adds_the_failure_as_pitfalls_and_only_there(store: Path) -> None:
    records = _build(store)
    ttype = next(r["task_type"] for r in records if r["success"] is False)
    mid = _memory_of_type(records, ttype)
    others = {m: (store / "memories" / f"{m}.toml").read_bytes() for m in memory_ids(store) if m != mid}
    before = json.loads(memp("show", mid, "--json").stdout)
    _, tid = _failure_using(records, mid, ttype)

    dry = memp("reflect", "--dry-run")
    assert f"{mid} (after reflecting on {tid})" in dry.stdout
    assert json.loads(memp("show", mid, "--json").stdout)["version"] == before["version"]

    rows = memp("reflect", "--json").jsonl()
    assert [(r["memory"], r["trajectory"], r["changed"]) for r in rows] == [(mid, tid, True)]
    after = json.loads(memp("show", mid, "--json").stdout)
    assert after["version"] == before["version"] + 1
    new_pitfalls = after["script"]["pitfalls"][len(before["script"].get("pitfalls", [])) :]
    assert new_pitfalls and new_pitfalls == rows[0]["added_pitfalls"]
    assert "did not succeed" in " ".join(new_pitfalls)
    # the failed run's concrete entities ("drawer 3") are abstracted, not copied into the procedure
    assert not re.search(r"\b(?!step\b|reward\b)[a-z]+ \d+\b", " ".join(new_pitfalls)), new_pitfalls
    # nothing else was touched, nothing deleted
    assert {
        m: (store / "memories" / f"{m}.toml").read_bytes() for m in memory_ids(store) if m != mid
    } == others
    h = memp("history", mid, "--json").jsonl()
    assert h[-1]["by"] == "memp reflect" and h[-1]["trajectory"] == tid
    # old content is one revert away
    memp("revert", mid, "--to", str(h[-2]["v"]))
    assert json.loads(memp("show", mid, "--json").stdout)["script"] == before["script"]


def test_reflect_is_idempotent(store: Path) -> None:
    records = _build(store)
    ttype = next(r["task_type"] for r in records if r["success"] is False)
    mid = _memory_of_type(records, ttype)
    _failure_using(records, mid, ttype)
    assert len(memp("reflect", "--json").jsonl()) == 1
    content = (store / "memories" / f"{mid}.toml").read_bytes()
    assert memp("reflect", "--json").jsonl() == []
    assert (store / "memories" / f"{mid}.toml").read_bytes() == content


def test_reflect_needs_the_run_and_a_script(store: Path) -> None:
    records = _build(store)
    mid = memory_ids(store)[0]
    # a failure reported for a run the store does not have: skipped, said why
    memp("feedback", mid, "--failure", "-t", "t-not-stored")
    r = memp("reflect", "--json")
    assert r.jsonl() == [] and "t-not-stored" in r.stderr and "not in the store" in r.stderr
    assert records  # the store has its runs


def test_builtin_reflection_adds_the_steps_a_success_took() -> None:
    from memp_cli.model.memory import Memory
    from memp_cli.update.reflect import builtin_reflection

    records = read_records(FILES["native"])
    ok = next(r for r in records if r["success"] is True and r["task_type"] == "heat")
    success = parse_record(ok)
    # the memory lacks the heating step the success took
    from memp_cli.build.builtin.distiller import builtin_script

    full = builtin_script(success)
    heat = [s for s in full.steps if "heat" in s]
    assert heat
    script = full.to_dict()
    script["steps"] = [s for s in full.steps if "heat" not in s]
    mem = Memory(id="mx", kind="script", task=ok["task"], script=script)
    failed = Trajectory(task=ok["task"], steps=success.steps[:2], success=False, task_type="heat")
    r = builtin_reflection(mem, failed, success)
    assert r.changed
    assert r.added_steps == heat  # exactly what was missing, nothing the memory had
    assert all(r.after["steps"].count(s) == full.steps.count(s) for s in full.steps)
    # inserted after the step it follows in the success
    succ_pos = full.steps.index(heat[0])
    prev = full.steps[succ_pos - 1]
    assert r.after["steps"].index(heat[0]) == r.after["steps"].index(prev) + 1


def test_adjustment_pairs_an_unattributed_failure_with_its_nearest_procedure(store: Path) -> None:
    records = read_records(FILES["native"])
    memp("ingest", FILES["native"])
    rep = memp("distill", "--json").jsonl()[-1]  # [update] policy = adjustment: no failure is built
    assert rep["filtered"] == sum(1 for r in records if r["success"] is False)
    types = {parse_record(r).id: r["task_type"] for r in records}
    rows = memp("reflect", "--json").jsonl()
    assert len(rows) == sum(1 for r in records if r["success"] is False)
    lines = [json.loads(x) for x in (store / "reflections.jsonl").read_text().splitlines()]
    assert {x["why"] for x in lines} == {"nearest"}
    for row in rows:  # each failure corrects a procedure of its own task type
        mem = json.loads(memp("show", row["memory"], "--json").stdout)
        assert mem["task_type"] == types[row["trajectory"]] and mem["success"] is True
    # validation keeps failures out without reflecting them
    cfg = store / "memp.toml"
    cfg.write_text(cfg.read_text().replace('policy = "adjustment"', 'policy = "validation"'))
    assert memp("reflect", "--json").jsonl() == []
