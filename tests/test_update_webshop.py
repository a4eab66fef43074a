"""Update on real WebShop runs failed by a real LLM (ReAct, WebShop 100-499): the stats, reflect
and prune decisions are the ones the rules say."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DATA, memory_ids, memp, read_records

from memp_cli.build.policies import memory_id
from memp_cli.ingest import parse_record

WEB = DATA / "webshop.jsonl"  # 10 runs, 2 failed (reward 0, 14 steps each)


def test_webshop_failures_feed_the_nearest_purchase_procedure(store: Path) -> None:
    records = read_records(WEB)
    memp("ingest", WEB)
    rep = memp("distill", "--json").jsonl()[-1]
    assert (rep["written"], rep["filtered"]) == (8, 2)  # adjustment: the 2 failed runs are lessons
    rows = memp("reflect", "--json").jsonl()
    failed = {parse_record(r).id for r in records if r["success"] is False}
    assert {r["trajectory"] for r in rows} == failed
    for r in rows:
        assert r["changed"] and r["added_pitfalls"]
        # the lesson names where the run went wrong, abstracted (no product code copied)
        assert "did not succeed (reward 0)" in r["added_pitfalls"][0]
        assert "B0" not in " ".join(r["added_pitfalls"])
        mem = json.loads(memp("show", r["memory"], "--json").stdout)
        assert mem["success"] is True and mem["version"] == 2


def test_webshop_outcomes_and_the_failing_rule(store: Path) -> None:
    records = read_records(WEB)
    memp("ingest", WEB)
    memp("distill")
    ok = [r for r in records if r["success"] is True]
    a = memory_id("proceduralization", parse_record(ok[0]).id)
    b = memory_id("proceduralization", parse_record(ok[1]).id)
    # the two real failures, reported as having used memory a; a later success used b
    runs = [dict(r, memories_used=[a], task_id=f"{r['task_id']}#a") for r in records if r["success"] is False]
    runs.append(dict(ok[2], memories_used=[b], task_id="x#b"))
    memp("ingest", "-", input="".join(json.dumps(r) + "\n" for r in runs).encode())
    sa = json.loads(memp("show", a, "--json").stdout)["stats"]
    sb = json.loads(memp("show", b, "--json").stdout)["stats"]
    assert (sa["retrieved"], sa["successes"], sa["failures"]) == (2, 0, 2)
    assert (sb["retrieved"], sb["successes"], sb["failures"]) == (1, 1, 0)
    # 0 of 2 is too few uses to judge (min_uses 3): kept
    assert memp("prune", "--dry-run", "--rule", "failing", "--json").jsonl() == []
    memp("feedback", a, "--failure", "-t", "one-more")
    (d,) = memp("prune", "--rule", "failing", "--json").jsonl()
    assert (d["id"], d["uses"], d["successes"]) == (a, 3, 0)
    assert a not in memory_ids(store) and b in memory_ids(store)
