"""memp distill --policy trajectory: one memory per stored run, idempotent, resumable."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp, read_records

from memp_cli.build.policies import memory_id
from memp_cli.errors import ExitCode
from memp_cli.ingest import parse_record

DISTILL = ("distill", "--policy", "trajectory")


@pytest.fixture
def store(vanilla_store: Path) -> Path:
    """These tests count a memory for every run, failed ones too: [update] policy = vanilla."""
    return vanilla_store


def _ingest(*files: Path) -> None:
    memp("ingest", *files)


def test_distill_writes_one_memory_per_run_then_nothing(cli, store: Path) -> None:
    _ingest(FILES["native"])
    r = cli(*DISTILL, "--json")
    (rep,) = r.jsonl()
    assert (rep["read"], rep["written"], rep["skipped"], rep["filtered"]) == (40, 40, 0, 0)
    assert "wrote 40 memories" in r.stderr
    assert "index: 40 embedded (hash)" in r.stderr
    assert len(memory_ids(store)) == 40
    assert (store / "index" / "state.json").is_file()

    r = cli(*DISTILL, "--json")
    (rep,) = r.jsonl()
    assert (rep["read"], rep["written"], rep["skipped"]) == (0, 0, 40)
    assert "embedded" not in r.stderr


def test_memory_content_comes_from_the_run(store: Path) -> None:
    _ingest(FILES["native"])
    memp(*DISTILL)
    for rec in read_records(FILES["native"])[:10]:
        t = parse_record(rec)
        mid = memory_id("trajectory", t.id)
        data = tomllib.loads((store / "memories" / f"{mid}.toml").read_text())
        assert data["id"] == mid and data["kind"] == "trajectory" and data["version"] == 1
        assert data["task"] == rec["task"] and data["keys"] == [rec["task"]]
        assert data["task_type"] == rec["task_type"]
        assert data["success"] is rec["success"]
        assert data["provenance"]["trajectories"] == [t.id]
        assert data["provenance"]["policy"] == "trajectory"
        assert [s["action"] for s in data["steps"]] == [s["action"] for s in rec["steps"]]
        for s, src in zip(data["steps"], rec["steps"], strict=True):
            obs = src["observation"].strip()
            assert s["observation"] == (obs if len(obs) <= 300 else obs[:299].rstrip() + "…")


def test_long_runs_are_trimmed_by_the_store_settings(store: Path) -> None:
    cfg = store / "memp.toml"
    cfg.write_text(cfg.read_text().replace("max_steps = 40", "max_steps = 5"))
    _ingest(FILES["conversations"])  # runs of 7 to 34 steps
    memp(*DISTILL)
    rec = read_records(FILES["conversations"])[1]
    t = parse_record(rec)
    data = tomllib.loads((store / "memories" / f"{memory_id('trajectory', t.id)}.toml").read_text())
    actions = [s["action"] for s in data["steps"]]
    assert len(actions) == 5
    assert actions[:2] == [s.action for s in t.steps[:2]]
    assert actions[2] == f"[... {len(t.steps) - 4} steps omitted ...]"
    assert actions[3:] == [s.action for s in t.steps[-2:]]


def test_only_success(store: Path) -> None:
    _ingest(FILES["native"])
    (rep,) = memp(*DISTILL, "--only-success", "--json").jsonl()
    assert (rep["written"], rep["filtered"]) == (30, 10)
    assert "10 failed runs not built" in memp(*DISTILL, "--only-success").stderr
    for mid in memory_ids(store):
        assert "success = true" in (store / "memories" / f"{mid}.toml").read_text()
    # Without the filter, the failures are built too (the successes are skipped).
    (rep,) = memp(*DISTILL, "--json").jsonl()
    assert (rep["written"], rep["skipped"]) == (10, 30)


def test_dry_run_writes_nothing(store: Path) -> None:
    _ingest(FILES["native"])
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    journal = (store / "journal.jsonl").read_bytes()
    r = memp(*DISTILL, "--dry-run", "--json")
    rows = r.jsonl()
    would = [row["id"] for row in rows if row.get("would_write")]
    assert len(would) == 40 and len(set(would)) == 40
    assert rows[-1]["written"] == 0 and rows[-1]["read"] == 40
    assert "would write 40 memories" in r.stderr
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert (store / "journal.jsonl").read_bytes() == journal
    memp(*DISTILL)
    assert sorted(would) == memory_ids(store)


def test_limit_and_resume(store: Path) -> None:
    _ingest(FILES["native"])
    (rep,) = memp(*DISTILL, "--limit", "7", "--json").jsonl()
    assert rep["written"] == 7 and len(memory_ids(store)) == 7
    (rep,) = memp(*DISTILL, "--json").jsonl()
    assert (rep["written"], rep["skipped"]) == (33, 7)


def test_distill_empty_store(store: Path) -> None:
    (rep,) = memp(*DISTILL, "--json").jsonl()
    assert rep["written"] == 0
    assert not (store / "index" / "state.json").exists()


def test_unknown_policy(store: Path) -> None:
    _ingest(FILES["native"])
    r = memp("distill", "--policy", "bogus", expect=ExitCode.BAD_INPUT)
    assert "unknown policy 'bogus'" in r.stderr
    assert memory_ids(store) == []


def test_distill_journal(store: Path) -> None:
    _ingest(FILES["openai"])
    memp(*DISTILL)
    events = [json.loads(line) for line in (store / "journal.jsonl").read_text().splitlines()]
    (ev,) = [e for e in events if e["event"] == "distill"]
    assert ev["count"] == 5 and sorted(ev["ids"]) == memory_ids(store)
    assert any(e["event"] == "index.sync" for e in events)


def test_every_policy_keeps_the_same_steps_with_one_marker(store: Path) -> None:
    """One trimmer: the trajectory and proceduralization policies keep the same steps."""
    cfg = store / "memp.toml"
    text = cfg.read_text().replace("max_steps = 40", "max_steps = 5")
    cfg.write_text(text.replace("max_observation_chars = 300", "max_observation_chars = 40"))
    _ingest(FILES["conversations"])  # runs of 7 to 34 steps, observations with spaces at the cut
    runs = list(map(parse_record, read_records(FILES["conversations"])))

    def steps_now() -> dict[str, list[dict[str, str]]]:
        # one memory per run: the proceduralization rebuilds it as a new version, same id
        return {
            t.id: tomllib.loads((store / "memories" / f"{memory_id('trajectory', t.id)}.toml").read_text())[
                "steps"
            ]
            for t in runs
        }

    memp(*DISTILL)
    as_trajectory = steps_now()
    memp("distill", "--policy", "proceduralization", "--model", "builtin")
    as_procedure = steps_now()
    trimmed = 0
    for t in runs:
        by_policy = [as_trajectory[t.id], as_procedure[t.id]]
        assert by_policy[0] == by_policy[1]
        steps = by_policy[0]
        observations = [s["observation"] for s in steps]
        assert all(len(o) <= 40 for o in observations)
        assert any(len(o) == 40 and o.endswith("…") for o in observations) or all(
            len(s.observation.strip()) <= 40 for s in t.steps
        )
        if len(t.steps) > 5:
            trimmed += 1
            assert len(steps) == 5
            assert steps[2] == {"action": f"[... {len(t.steps) - 4} steps omitted ...]", "observation": ""}
    assert trimmed > 0


# Two memory files written by memp before the step trimmers became one: the trajectory
# policy's marker (the one kept) and the proceduralization policy's ("…", "[N steps omitted]").
OLD_TRAJECTORY_MEMORY = """\
# memp memory. Edit freely: the next memp command re-checks it and re-embeds
# it when `keys` change. `memp doctor` validates every memory file.
schema_version = 1
id = "me45ae23697fe"
kind = "trajectory"
version = 1
task = "heat some egg and put it in garbagecan."
success = true
keys = [
    "heat some egg and put it in garbagecan.",
]
keywords = [
    "heat",
    "egg",
    "garbagecan",
]

[stats]
retrieved = 0
successes = 0
failures = 0
last_used = ""

[provenance]
trajectories = [
    "tfb133915cdce02e",
]
policy = "trajectory"
model = ""
prompt_version = ""
created = "2026-11-30T03:28:55Z"
updated = "2026-11-30T03:28:55Z"

[[steps]]
action = "go to countertop 1"
observation = "On the countertop 1, you see a egg 1, a…"

[[steps]]
action = "take egg 1 from countertop 1"
observation = "You pick up the egg 1 from the countert…"

[[steps]]
action = "[... 3 steps omitted ...]"
observation = ""

[[steps]]
action = "put egg 1 in/on garbagecan 1"
observation = "You put the egg 1 in/on the garbagecan …"

[[steps]]
action = "look"
observation = "You are facing the garbagecan 1. Next t…"
"""

OLD_PROCEDURE_MEMORY = """\
# memp memory. Edit freely: the next memp command re-checks it and re-embeds
# it when `keys` change. `memp doctor` validates every memory file.
schema_version = 1
id = "m2105f0bd55fe"
kind = "procedure"
version = 1
task = "heat some egg and put it in garbagecan."
success = true
keys = [
    "heat some egg and put it in garbagecan.",
]
keywords = [
    "heat",
    "egg",
    "garbagecan",
]

[stats]
retrieved = 0
successes = 0
failures = 0
last_used = ""

[provenance]
trajectories = [
    "tfb133915cdce02e",
]
policy = "proceduralization"
model = "builtin"
prompt_version = "builtin-v1"
created = "2026-11-30T03:28:56Z"
updated = "2026-11-30T03:28:56Z"

[script]
title = "heat some {object} and put it in {receptacle}"
steps = [
    "go to {location}",
    "take {object} from {location}",
    "go to microwave",
    "heat {object} with microwave",
    "go to {receptacle}",
    "put {object} in/on {receptacle}",
    "look",
]
preconditions = [
    "a microwave is available to heat the {object}",
]
pitfalls = []
keywords = [
    "heat",
    "egg",
    "garbagecan",
]
generator = "builtin (rule-based, not an LLM)"

[script.variables]
object = "egg"
receptacle = "garbagecan 1"
location = "countertop 1"

[[steps]]
action = "go to countertop 1"
observation = "On the countertop 1, you see a egg 1, a…"

[[steps]]
action = "take egg 1 from countertop 1"
observation = "You pick up the egg 1 from the countert…"

[[steps]]
action = "…"
observation = "[3 steps omitted]"

[[steps]]
action = "put egg 1 in/on garbagecan 1"
observation = "You put the egg 1 in/on the garbagecan…"

[[steps]]
action = "look"
observation = "You are facing the garbagecan 1. Next t…"
"""


def test_memory_files_with_either_old_marker_keep_loading(store: Path) -> None:
    files = {"me45ae23697fe": OLD_TRAJECTORY_MEMORY, "m2105f0bd55fe": OLD_PROCEDURE_MEMORY}
    for mid, text in files.items():
        (store / "memories" / f"{mid}.toml").write_text(text)
    before = {mid: (store / "memories" / f"{mid}.toml").read_bytes() for mid in files}
    for mid in files:
        shown = json.loads(memp("show", mid, "--json").stdout)  # one line or pretty, either way
        assert len(shown["steps"]) == 5
    prompt = memp("query", "heat an egg", "--format", "prompt", "--no-collapse", "--min-score", -1).stdout
    # both markers read the same to an agent, and neither is shown as an action taken
    assert prompt.count("  [... 3 steps omitted ...]\n") == 2
    assert "> …" not in prompt and "> [..." not in prompt
    memp("doctor")
    # reading them never rewrites them
    assert {mid: (store / "memories" / f"{mid}.toml").read_bytes() for mid in files} == before


def test_a_rerun_indexes_memories_a_killed_distill_left_unindexed(store: Path) -> None:
    _ingest(FILES["openai"])
    memp(*DISTILL)
    shutil.rmtree(store / "index")  # as a distill killed between its memory files and the index
    warned = memp("doctor", "--json").jsonl()  # no index: a warning (any query builds it)
    assert [f["level"] for f in warned] == ["warning"] and "no index" in warned[0]["what"]
    r = memp(*DISTILL)
    assert "index: 5 embedded" in r.stderr
    assert memp("doctor", "--json").jsonl() == []


def _count_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every full stat of the memory files (Store.memory_stamps), by its count of files."""
    from memp_cli.store import Store

    calls: list[int] = []
    real = Store.memory_stamps

    def counted(self: Store) -> dict[str, tuple[int, int]]:
        out = real(self)
        calls.append(len(out))
        return out

    monkeypatch.setattr(Store, "memory_stamps", counted)
    return calls


def _index_matches_the_files(store: Path) -> None:
    from memp_cli import index as index_mod
    from memp_cli.index.state import file_stamps
    from memp_cli.store import Store

    st = Store.open(store)
    state = index_mod.read_state(st)
    assert state is not None
    assert file_stamps(st, state) == st.memory_stamps()
    assert len(state.ids) == len(memory_ids(store))
    assert memp("doctor", "--json").jsonl() == []


def test_the_sync_after_a_distill_takes_its_planning_scan_instead_of_statting_every_file(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(FILES["native"])
    memp(*DISTILL)  # an index: the plan scans the memory files (none before it)
    _ingest(FILES["openai"])
    with monkeypatch.context() as m:
        calls = _count_scans(m)
        r = memp(*DISTILL, "--json")
    assert r.jsonl()[0]["written"] == 5 and "index: 5 embedded" in r.stderr
    assert calls == [40]  # the plan's; the sync took it over, statting the 5 it wrote
    _index_matches_the_files(store)


def test_a_memory_saved_by_someone_else_between_the_plan_and_the_write_is_indexed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memp_cli.build.writing import Writer
    from memp_cli.model.memory import load_memory_file
    from memp_cli.store import Store

    _ingest(FILES["native"])
    memp(*DISTILL)
    _ingest(FILES["openai"])
    real = Writer.write
    other = load_memory_file(next((store / "memories").glob("*.toml")))
    other.id, other.task = "mhand-saved", "a task saved by another writer while distill planned"

    def write_after_another(self: Writer, batch: list) -> None:  # type: ignore[type-arg]
        if batch and other.id not in memory_ids(store):
            st = Store.open(store)
            with st.lock:
                st.save_memories([other], event="test")
        real(self, batch)

    with monkeypatch.context() as m:
        calls = _count_scans(m)
        m.setattr(Writer, "write", write_after_another)
        memp(*DISTILL)
    assert calls == [40, 46]  # the folder changed under the plan's scan: the sync statted anew
    _index_matches_the_files(store)  # the other writer's memory among them
