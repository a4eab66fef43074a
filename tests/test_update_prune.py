"""memp prune: each rule decides what its settings say, the trash keeps it, restore undoes it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp, read_records

from memp_cli.update.outcomes import Usage
from memp_cli.update.prune import PruneRules, z_of


def _set_prune(store: Path, **values: object) -> None:
    cfg = store / "memp.toml"
    text = cfg.read_text()
    for k, v in values.items():
        lines = [ln for ln in text.splitlines() if ln.startswith(f"{k} = ")]
        assert len(lines) == 1, k
        text = text.replace(lines[0], f"{k} = {json.dumps(v)}")
    cfg.write_text(text)


_RUNS = iter(range(1_000_000))


def _feedback(mid: str, outcomes: str) -> None:
    """One reported run per letter (s: success, f: failure), each with its own run id."""
    for c in outcomes:
        memp("feedback", mid, "--success" if c == "s" else "--failure", "-t", f"run-{next(_RUNS)}")


def test_wilson_bound_spares_one_unlucky_run() -> None:
    z = z_of(PruneRules().confidence)
    assert Usage(uses=3, failures=3).upper_bound(z) < 0.5  # 0 of 3: goes
    assert Usage(uses=3, successes=1, failures=2).upper_bound(z) > 0.5  # 1 of 3: stays
    assert Usage(uses=6, successes=1, failures=5).upper_bound(z) < 0.5  # 1 of 6: goes
    assert Usage().upper_bound(z) == 1.0
    # the prior keeps an unused memory in the middle
    assert Usage().success_rate() == 0.5


def test_failing_rule_and_dry_run(built: Path) -> None:
    a, b, c = memory_ids(built)[:3]
    _feedback(a, "fff")  # 0 of 3
    _feedback(b, "sff")  # 1 of 3
    _feedback(c, "ff")  # too few uses to judge
    before = sorted(p.name for p in (built / "memories").iterdir())
    dry = memp("prune", "--dry-run", "--rule", "failing", "--json").jsonl()
    assert [(d["id"], d["rule"], d["uses"], d["successes"]) for d in dry] == [(a, "failing", 3, 0)]
    assert "0 of 3 uses succeeded" in dry[0]["reason"]
    assert sorted(p.name for p in (built / "memories").iterdir()) == before
    done = memp("prune", "--rule", "failing", "--json").jsonl()
    assert [d["id"] for d in done] == [a]
    assert a not in memory_ids(built) and b in memory_ids(built) and c in memory_ids(built)
    entry = memp("trash", "list", "--json").jsonl()[0]
    assert (entry["id"], entry["by"], entry["rule"]) == (a, "memp prune", "failing")


def _same_task_twice(store: Path) -> tuple[str, str]:
    """Two runs of one task (the second with a changed last step): two memories, same keys."""
    run = read_records(FILES["native"])[0]
    twin = dict(run, steps=[*run["steps"][:-1], dict(run["steps"][-1], action="look")])
    data = (json.dumps(run) + "\n" + json.dumps(twin) + "\n").encode()
    memp("ingest", "-", input=data)
    memp("distill", "--policy", "trajectory")
    ids = memory_ids(store)
    assert len(ids) == 2
    return ids[0], ids[1]


def test_duplicates_merge_into_the_better_rated(store: Path) -> None:
    x, y = _same_task_twice(store)
    _feedback(y, "ss")
    _feedback(x, "f")
    done = memp("prune", "--json").jsonl()
    assert [(d["id"], d["rule"], d["merged_into"]) for d in done] == [(x, "duplicate", y)]
    assert memory_ids(store) == [y]
    kept = json.loads(memp("show", y, "--json").stdout)
    # the loser's outcome and run now count for the keeper
    assert (kept["stats"]["successes"], kept["stats"]["failures"]) == (2, 1)
    assert len(kept["provenance"]["trajectories"]) == 2
    assert memp("history", y, "--json").jsonl()[-1]["by"] == "memp prune"
    # restore brings the duplicate back whole
    memp("restore", x)
    assert memory_ids(store) == sorted([x, y])


def test_pruned_memory_leaves_every_index(store: Path) -> None:
    x, y = _same_task_twice(store)
    task = read_records(FILES["native"])[0]["task"]
    _feedback(x, "fff")
    memp("prune", "--rule", "failing")
    for key in ("query", "avefact"):
        assert [h["id"] for h in memp("query", task, "--json", "-k", "5", "--key", key).jsonl()] == [y]
    memp("restore", x)
    assert sorted(
        h["id"] for h in memp("query", task, "--json", "-k", "5", "--no-collapse").jsonl()
    ) == sorted([x, y])


def test_capacity_drops_lowest_utility(built: Path) -> None:
    ids = memory_ids(built)
    _set_prune(built, max_memories=len(ids) - 2, duplicate_similarity=0)
    _feedback(ids[5], "ff")
    _feedback(ids[9], "f")
    for mid in ids[:5]:
        _feedback(mid, "s")
    done = memp("prune", "--json").jsonl()
    assert sorted(d["id"] for d in done) == sorted([ids[5], ids[9]])
    assert {d["rule"] for d in done} == {"capacity"}


def test_stale_rule(built: Path) -> None:
    ids = memory_ids(built)
    _set_prune(built, stale_days=30, duplicate_similarity=0)
    old = (datetime.now(UTC) - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = built / "memories" / f"{ids[0]}.toml"
    text = path.read_text()
    created = next(ln for ln in text.splitlines() if ln.startswith("created = "))
    path.write_text(text.replace(created, f'created = "{old}"'))
    _feedback(ids[1], "s")  # recently used: stays even if old
    path1 = built / "memories" / f"{ids[1]}.toml"
    t1 = path1.read_text()
    path1.write_text(
        t1.replace(next(ln for ln in t1.splitlines() if ln.startswith("created = ")), f'created = "{old}"')
    )
    done = memp("prune", "--rule", "stale", "--json").jsonl()
    assert [(d["id"], d["rule"]) for d in done] == [(ids[0], "stale")]
    assert "never used" in done[0]["reason"]


def test_unknown_rule_is_a_usage_error(built: Path) -> None:
    r = memp("prune", "--rule", "bogus", expect=2)
    assert "bogus" in r.stderr


@pytest.mark.parametrize("value", [-1, 2])
def test_prune_settings_are_validated(built: Path, value: int) -> None:
    _set_prune(built, min_success_rate=value)
    r = memp("prune", "--dry-run", expect=5)
    assert "min_success_rate" in r.stderr


def test_utility_term_ranks_the_succeeding_twin_first(store: Path) -> None:
    x, y = _same_task_twice(store)
    task = read_records(FILES["native"])[0]["task"]
    _feedback(x, "s")
    _feedback(y, "fff")
    raw = ("--no-collapse",)  # the twins each in its place (collapsed, the better-rated shows both)
    plain = memp("query", task, "--json", "-k", "2", "--utility-weight", "0", *raw).jsonl()
    assert plain[0]["score"] == plain[1]["score"]  # twins: only the outcome can tell them apart
    ranked = memp("query", task, "--json", "-k", "2", "--utility-weight", "0.2", *raw).jsonl()
    assert [h["id"] for h in ranked] == [x, y]
    assert ranked[0]["score"] > ranked[1]["score"]
    # the flip: y now succeeds more often (8 of 11: 0.69 with the prior, against 2/3 for x)
    _feedback(y, "ssssssss")
    ranked = memp("query", task, "--json", "-k", "2", "--utility-weight", "0.2", *raw).jsonl()
    assert [h["id"] for h in ranked] == [y, x]


def test_explain_shows_every_part(store: Path) -> None:
    x, _ = _same_task_twice(store)
    task = read_records(FILES["native"])[0]["task"]
    _feedback(x, "sf")
    hits = memp("query", task, "--json", "-k", "2", "--explain").jsonl()
    ex = {h["id"]: h["explain"] for h in hits}[x]
    assert set(ex) >= {"lexical", "cosine", "utility", "matched_terms", "uses", "successes", "failures"}
    assert (ex["uses"], ex["successes"], ex["failures"], ex["utility"]) == (2, 1, 1, 0.5)
    assert ex["matched_terms"] and all(t in task.lower() for t in ex["matched_terms"][0].split())
    table = memp("query", task, "-k", "2", "--explain", "--format", "table")
    assert "utility" in table.stdout and x in table.stdout


MERGED = {
    "title": "look at a {object} under the {lamp}",
    "steps": ["find the {object}", "take it", "turn on the {lamp}"],
    "variables": {"object": "what to look at", "lamp": "the light"},
    "preconditions": [],
    "pitfalls": ["a merged pitfall"],
    "keywords": ["look"],
}


def _llm_twins(store: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    from memp_cli.backends import llm

    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    run = read_records(FILES["native"])[0]
    twin = dict(run, steps=[*run["steps"][:-1], dict(run["steps"][-1], action="look")])
    memp("ingest", "-", input=(json.dumps(run) + "\n" + json.dumps(twin) + "\n").encode())
    memp("distill")  # proceduralization: both have scripts
    x, y = memory_ids(store)
    _feedback(y, "s")  # y is the better rated: the keeper
    return x, y


def test_an_llm_merges_duplicate_scripts(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_server import serve

    x, y = _llm_twins(store, monkeypatch)
    with serve(default=lambda body: json.dumps(MERGED)) as srv:
        done = memp("prune", "--model", "openai/merger", "--api-base", srv.url, "--json").jsonl()
        body = srv.requests[0]
    assert [(d["id"], d["merged_into"]) for d in done] == [(x, y)]
    kept = json.loads(memp("show", y, "--json").stdout)
    assert kept["script"]["steps"] == MERGED["steps"]
    assert kept["script"]["generator"] == "openai/merger (LLM merge)"
    assert body["response_format"]["type"] == "json_schema"
    assert memp("history", y, "--json").jsonl()[-1]["why"].endswith("(scripts merged by openai/merger)")


def test_a_bad_merge_reply_keeps_the_best_rated_text(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_server import serve

    x, y = _llm_twins(store, monkeypatch)
    before = json.loads(memp("show", y, "--json").stdout)["script"]
    with serve(default=lambda body: "no JSON here") as srv:
        r = memp("prune", "--model", "openai/merger", "--api-base", srv.url, "--json")
        assert len(srv.requests) == 2  # the call and one repair
    assert "kept the best-rated text" in r.stderr
    assert [d["id"] for d in r.jsonl()] == [x]  # the duplicate still goes (outcomes merged)
    assert json.loads(memp("show", y, "--json").stdout)["script"] == before
