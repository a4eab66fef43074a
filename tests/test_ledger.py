"""The trajectory ledger (cache/trajectories.json): distill's plan from it is the plan from the
segments, exactly (jobs, counts, warnings), whatever happened to the store since it was written.

Each case builds a store, writes the ledger (as `memp stats` or a distill does), changes the
store, then plans twice on the same state: the reference on a copy of the store with the ledger
switched off (every run parsed, none passed over, as before the ledger and its settled runs), and the plan on the store itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp, set_update_policy

from memp_cli.build import runner
from memp_cli.build.policies import BUILTIN_MODEL, BUILTIN_VERSION, POLICIES, memory_id
from memp_cli.model.trajectory import Trajectory
from memp_cli.store import Store, ledger
from memp_cli.store.ledger import LEDGER_NAME

ALF = DATA / "distill_alfworld.jsonl"  # 18 runs, 10 successful
WEB = DATA / "distill_webshop.jsonl"  # 4 runs, 1 successful
MISC = DATA / "distill_misc.jsonl"


def _unlabeled(tmp: Path) -> Path:
    """distill_misc's runs, half of them with no outcome."""
    out = tmp / "unlabeled.jsonl"
    lines = []
    for i, line in enumerate(MISC.read_text().splitlines()):
        rec = json.loads(line)
        if i % 2:
            rec.pop("success", None)
            rec.pop("reward", None)
        lines.append(json.dumps(rec))
    out.write_text("\n".join(lines) + "\n")
    return out


def _setup(store_dir: Path, tmp: Path, policy: str, *only: str) -> None:
    """Two segments distilled with ``policy`` (builtin; ``only``: "--only-success"), the ledger
    written, then a new batch."""
    memp("init", "--embedder", "hash")
    set_update_policy(store_dir, "vanilla")
    memp("ingest", ALF)
    memp("ingest", _unlabeled(tmp))
    memp("distill", "--policy", policy, *only)
    assert (store_dir / "cache" / LEDGER_NAME).is_file()  # the distill wrote it
    memp("ingest", WEB)
    memp("stats")  # enters the new segment too


def _trajectory_mids(store_dir: Path) -> list[str]:
    return sorted(p.stem for p in (store_dir / "memories").glob("*.toml"))


def _segments(store_dir: Path) -> list[Path]:
    return Store.open(store_dir).segments()


Plan = tuple[list[dict[str, Any]], dict[str, Any], list[str]]


def _plan(store_dir: Path, *, reference: bool, **kw: Any) -> Plan:
    """``runner._plan`` on the store: jobs (with their full trajectories), counts, warnings."""
    store = Store.open(store_dir)
    args = {"policy": "trajectory", "model": "", "prompt_version": "", "only_success": False, "limit": None}
    args.update(kw)
    replace_edits = args.pop("replace_edits", False)
    report = runner.DistillReport(policy=args["policy"], dry_run=args.pop("dry_run", True))
    if reference:
        original = Store.iter_trajectories

        def no_ledger(self: Store, skip: Any = None, **_: Any) -> Iterator[Trajectory]:
            return original(self)  # every run parsed, none skipped: the plan's code alone decides

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Store, "iter_trajectories", no_ledger)
            jobs = runner._plan(store, **args, report=report, replace_edits=replace_edits)
    else:
        jobs = runner._plan(store, **args, report=report, replace_edits=replace_edits)
    rows = [{"mid": j.mid, "version": j.version, **j.t.to_dict()} for j in jobs]
    counts = report.to_dict()
    del counts["seconds"], counts["dry_run"]
    return rows, counts, [w.replace(str(store_dir), "STORE") for w in report.warnings]


def _both(store_dir: Path, tmp: Path, **kw: Any) -> tuple[Plan, Plan, int]:
    """(reference plan on a copy, ledger plan on the store, segments the ledger plan parsed)."""
    ref_dir = tmp / "reference" / store_dir.name
    shutil.rmtree(ref_dir.parent, ignore_errors=True)
    shutil.copytree(store_dir, ref_dir, symlinks=True)
    ref = _plan(ref_dir, reference=True, **kw)
    ref = (ref[0], {**ref[1]}, [w.replace(str(ref_dir), str(store_dir)) for w in ref[2]])
    read: list[Path] = []
    original = ledger.Ledger.read

    def spy(self: ledger.Ledger, seg: Path, skip: Any = None, **kw: Any) -> Iterator[Trajectory]:
        read.append(seg)
        return original(self, seg, skip, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ledger.Ledger, "read", spy)
        got = _plan(store_dir, reference=False, **kw)
    return ref, got, len(read)


def _same(ref: Plan, got: Plan) -> None:
    rows = ref[0]
    assert [r["id"] for r in got[0]] == [r["id"] for r in rows]
    assert got[0] == rows  # the jobs carry the whole trajectory, never an outline
    assert got[1] == ref[1]
    assert got[2] == ref[2]


def _alf_segment(store_dir: Path, src: Path = ALF) -> Path:
    """The segment of ALF (segments are named by the second they were written, then at random)."""
    first = json.loads(src.read_text().splitlines()[0])["task"]
    return next(p for p in _segments(store_dir) if first in p.read_text().splitlines()[0])


def _first_memory(store_dir: Path) -> str:
    """The memory of ALF's first run (its segment is otherwise settled)."""
    tid = json.loads(_alf_segment(store_dir).read_text().splitlines()[0])["id"]
    mids = [memory_id(p, tid) for p in ("trajectory", "script")]
    return next(m for m in mids if (store_dir / "memories" / f"{m}.toml").exists())


def _delete(store_dir: Path) -> dict[str, Any]:
    (store_dir / "memories" / f"{_first_memory(store_dir)}.toml").unlink()
    return {}


def _edit(store_dir: Path) -> dict[str, Any]:
    p = store_dir / "memories" / f"{_first_memory(store_dir)}.toml"
    p.write_text(p.read_text() + "\n# edited by hand\n")
    return {}


def _edit_provenance(store_dir: Path) -> dict[str, Any]:
    """A hand edit that says another policy built it: it is kept, not skipped."""
    p = store_dir / "memories" / f"{_first_memory(store_dir)}.toml"
    text = p.read_text()
    other = 'policy = "proceduralization"'
    new = re.sub(r'^policy = "[a-z]+"', other, text, count=1, flags=re.M)
    assert new != text and other in new
    p.write_text(new)
    return {}


def _edit_provenance_replace(store_dir: Path) -> dict[str, Any]:
    return {**_edit_provenance(store_dir), "replace_edits": True}


def _edit_then_other_policy(store_dir: Path) -> dict[str, Any]:
    _edit(store_dir)
    return {"policy": "proceduralization", "model": BUILTIN_MODEL, "prompt_version": BUILTIN_VERSION}


def _break(store_dir: Path) -> dict[str, Any]:
    (store_dir / "memories" / f"{_first_memory(store_dir)}.toml").write_text("this is [[ not toml\n")
    return {}


def _forget(store_dir: Path) -> dict[str, Any]:
    memp("forget", _first_memory(store_dir))
    return {}


def _failed_runs_memories(store_dir: Path) -> dict[str, Any]:
    """Failed runs' memories, planned with failed runs left out: one forgotten, one edited by
    hand and, where the failed runs were not built, one under another policy (as an older store
    may hold) broken: forgotten, kept, warned about, never merely filtered."""
    runs = map(json.loads, _alf_segment(store_dir).read_text().splitlines())
    failed = [r["id"] for r in runs if r.get("success") is False]
    mids = [
        m
        for tid in failed
        for m in (memory_id(p, tid) for p in POLICIES)
        if (store_dir / "memories" / f"{m}.toml").exists()
    ]
    if mids:
        memp("forget", mids[0])
        p = store_dir / "memories" / f"{mids[1]}.toml"
        p.write_text(p.read_text() + "\n# edited by hand\n")
    else:
        (store_dir / "memories" / f"{memory_id('script', failed[0])}.toml").write_text(
            "this is [[ not toml\n"
        )
    return {"only_success": True}


def _remove_segment(store_dir: Path) -> dict[str, Any]:
    _alf_segment(store_dir).unlink()
    return {}


def _rewrite_segment(store_dir: Path) -> dict[str, Any]:
    """As scrub does: a new file, atomically, in place of the old (an outcome changed)."""
    seg = _alf_segment(store_dir)
    text = seg.read_text().replace('"success":true', '"success":false', 1)
    tmp = seg.with_name(".tmp-x")
    tmp.write_text(text)
    os.replace(tmp, seg)
    return {"only_success": True}


def _rewrite_in_place(store_dir: Path) -> dict[str, Any]:
    """The same size and inode, written in place (a new mtime)."""
    seg = _alf_segment(store_dir)
    st = seg.stat()
    data = seg.read_bytes()
    assert b'"success":false' in data
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000))  # as if written a while ago
    with open(seg, "r+b") as f:  # a failed run (unbuilt under --only-success) of unknown outcome
        f.write(data.replace(b'"success":false', b'"success":null ', 1))
    assert (seg.stat().st_size, seg.stat().st_ino) == (st.st_size, st.st_ino)
    return {"only_success": True}


def _hard_linked(store_dir: Path) -> dict[str, Any]:
    """A backup by hard links (cp -al) changes the segments' ctime, not what they hold."""
    for seg in _segments(store_dir):
        os.link(seg, store_dir.parent / f"backup-{seg.name}")
    return {}


def _odd_outcome(store_dir: Path) -> dict[str, Any]:
    """A run written by hand with an outcome that is none of true, false, null: its segment is
    never entered (its runs are parsed every time, as they were)."""
    seg = _alf_segment(store_dir)
    rec = json.loads(seg.read_text().splitlines()[0])
    rec.update(id="t0dd0dd0dd0dd0d", success=1)
    seg.write_text(seg.read_text() + json.dumps(rec) + "\n")
    return {"only_success": True}


def _corrupt(content: bytes) -> Callable[[Path], dict[str, Any]]:
    def change(store_dir: Path) -> dict[str, Any]:
        (store_dir / "cache" / LEDGER_NAME).write_bytes(content)
        return {}

    return change


def _ledger_is_a_link(store_dir: Path) -> dict[str, Any]:
    p = store_dir / "cache" / LEDGER_NAME
    target = store_dir.parent / "elsewhere.json"
    target.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(target)
    return {}


def _no_ledger(store_dir: Path) -> dict[str, Any]:
    (store_dir / "cache" / LEDGER_NAME).unlink()
    return {}


def _nothing(store_dir: Path) -> dict[str, Any]:
    return {}


def _only_success(store_dir: Path) -> dict[str, Any]:
    return {"only_success": True}


def _limit(store_dir: Path) -> dict[str, Any]:
    return {"limit": 1}


def _other_policy(store_dir: Path) -> dict[str, Any]:
    return {"policy": "proceduralization", "model": BUILTIN_MODEL, "prompt_version": BUILTIN_VERSION}


def _llm_model(store_dir: Path) -> dict[str, Any]:
    return {"policy": "script", "model": "openai/test-model", "prompt_version": "script-v1"}


def _other_prompt(store_dir: Path) -> dict[str, Any]:
    return {"policy": "script", "model": BUILTIN_MODEL, "prompt_version": "builtin-v999"}


CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "nothing": _nothing,
    "only_success": _only_success,
    "limit": _limit,
    "other_policy": _other_policy,
    "llm_model": _llm_model,
    "other_prompt": _other_prompt,
    "hand_delete": _delete,
    "hand_edit": _edit,
    "hand_edit_provenance": _edit_provenance,
    "hand_edit_provenance_replace": _edit_provenance_replace,
    "hand_edit_then_other_policy": _edit_then_other_policy,
    "broken_memory": _break,
    "forget": _forget,
    "failed_runs_memories": _failed_runs_memories,
    "segment_removed": _remove_segment,
    "segment_rewritten": _rewrite_segment,
    "segment_rewritten_in_place": _rewrite_in_place,
    "segments_hard_linked": _hard_linked,
    "odd_outcome": _odd_outcome,
    "no_ledger": _no_ledger,
    "ledger_garbage": _corrupt(b"\x00garbage{"),
    "ledger_truncated": _corrupt(b'{"ledger_version":1,"segments":{"a.jsonl":[[1,2,3'),
    "ledger_other_version": _corrupt(b'{"ledger_version":99,"segments":{}}'),
    "ledger_bad_types": _corrupt(b'{"ledger_version":1,"segments":{"x.jsonl":[[1,2,3],[5],"s"]}}'),
    "ledger_a_link": _ledger_is_a_link,
}


@pytest.mark.parametrize("setup", ["trajectory", "script", "trajectory --only-success"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_ledger_plan_is_the_plan_from_the_segments(
    store_dir: Path, tmp_path: Path, setup: str, case: str
) -> None:
    policy, *only = setup.split()
    _setup(store_dir, tmp_path, policy, *only)
    built = {"model": BUILTIN_MODEL, "prompt_version": BUILTIN_VERSION} if policy == "script" else {}
    kw = {"policy": policy, **built, **CASES[case](store_dir)}
    ref, got, parsed = _both(store_dir, tmp_path, **kw)
    _same(ref, got)
    if case == "only_success" or (
        not only and case in ("nothing", "forget", "hand_delete", "segments_hard_linked")
    ):
        # Only the new batch (WEB) is parsed; the distilled segments come from the ledger.
        assert parsed == 1
    # A second plan (the ledger written again, where the first found it wanting) agrees too.
    ref2, got2, _ = _both(store_dir, tmp_path, **kw, dry_run=False)
    _same(ref2, got2)
    assert got2 == got or case == "hand_delete"  # the first plan put the deleted one in the trash
    # And a third, from the ledger the second wrote.
    ref3, got3, parsed3 = _both(store_dir, tmp_path, **kw)
    _same(ref3, got3)
    if not only and case.startswith(("ledger_", "no_ledger")):  # rebuilt by the plan that wrote it
        assert got3 == got and parsed3 == 1


def test_a_distill_after_the_ledger_writes_what_a_distill_without_it_writes(
    store_dir: Path, tmp_path: Path
) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    ref_dir = tmp_path / "ref" / ".memp"
    shutil.copytree(store_dir, ref_dir, symlinks=True)
    (ref_dir / "cache" / LEDGER_NAME).unlink()
    a = memp("--store", ref_dir, "distill", "--policy", "trajectory", "--json").jsonl()[-1]
    b = memp("--store", store_dir, "distill", "--policy", "trajectory", "--json").jsonl()[-1]
    for d in (a, b):
        d.pop("seconds")
    assert a == b and b["written"] == 4
    assert _trajectory_mids(ref_dir) == _trajectory_mids(store_dir)


def test_a_settled_segment_is_not_parsed(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    memp("distill")
    parsed: list[str] = []
    original = Trajectory.from_stored

    def count(d: dict[str, Any]) -> Trajectory:
        parsed.append(d["id"])
        return original(d)

    monkeypatch.setattr(Trajectory, "from_stored", staticmethod(count))
    r = memp("distill", "--dry-run", "--json").jsonl()[-1]
    assert r["total"] == 18 + 14 + 4 and r["read"] == 0 and parsed == []


def test_the_ledger_holds_ids_and_outcomes_only(store_dir: Path, tmp_path: Path) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    d = json.loads((store_dir / "cache" / LEDGER_NAME).read_bytes())
    assert d["ledger_version"] == 1
    entries = d["segments"]
    assert sorted(entries) == [p.name for p in _segments(store_dir)]
    ids = [json.loads(line)["id"] for p in _segments(store_dir) for line in p.read_text().splitlines()]
    assert [i for e in entries.values() for i in e[1]] == ids
    codes = "".join(e[2] for e in entries.values())
    assert sorted(set(codes)) == ["f", "s", "u"] and len(codes) == len(ids)


def test_a_damaged_segment_is_never_entered_and_fails_as_before(store_dir: Path, tmp_path: Path) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    seg = _alf_segment(store_dir, WEB)
    seg.write_bytes(seg.read_bytes() + b'{"id":"tbad", "task": 5\n')
    r = memp("distill", "--dry-run", expect=5)
    assert f"{seg}:5: damaged trajectory record" in r.stderr
    r = memp("stats", expect=5)
    assert f"{seg}:5: damaged trajectory record" in r.stderr
    assert ledger.Ledger(Store.open(store_dir)).entry(seg) is None  # its old entry is not used


def test_a_dry_run_writes_no_ledger(store_dir: Path) -> None:
    memp("init", "--embedder", "hash")
    memp("ingest", ALF)
    memp("distill", "--dry-run")
    assert not (store_dir / "cache" / LEDGER_NAME).exists()
    memp("distill")
    assert (store_dir / "cache" / LEDGER_NAME).is_file()


def test_a_ledger_that_is_a_link_is_neither_read_nor_written_through(store_dir: Path, tmp_path: Path) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    p = store_dir / "cache" / LEDGER_NAME
    target = tmp_path / "elsewhere.json"
    target.write_bytes(b'{"ledger_version":1,"segments":{}}')
    p.unlink()
    p.symlink_to(target)
    before = memp("stats", "--json").stdout
    assert target.read_bytes() == b'{"ledger_version":1,"segments":{}}'
    assert not p.is_symlink() and p.is_file()  # replaced by a ledger of its own
    assert memp("stats", "--json").stdout == before


def test_after_scrub_rewrites_a_segment(store_dir: Path, tmp_path: Path) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    rec = json.loads(WEB.read_text().splitlines()[0])
    rec["task"] += " with key sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 3
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps(rec) + "\n")
    memp("ingest", "--no-redact", secret)
    memp("stats")
    before = {p.name: p.stat().st_ino for p in _segments(store_dir)}
    memp("scrub")
    after = {p.name: p.stat().st_ino for p in _segments(store_dir)}
    assert before.keys() == after.keys() and sum(before[n] != after[n] for n in before) == 1
    ref, got, _ = _both(store_dir, tmp_path)
    _same(ref, got)
    assert "sk-proj" not in (store_dir / "cache" / LEDGER_NAME).read_text()


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs distill's plan hashes into memory ids from now on."""
    from memp_cli.build import settled

    hashed: list[str] = []
    original = settled.memory_id

    def count(policy: str, tid: str) -> str:
        hashed.append(tid)
        return original(policy, tid)

    monkeypatch.setattr(settled, "memory_id", count)
    return hashed


def test_the_ledger_keeps_each_segments_memory_ids_so_a_settled_run_is_not_hashed_again(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    memp("distill", "--policy", "trajectory")  # builds the new batch (its segment parsed)
    memp("distill", "--policy", "trajectory")  # every segment settled: their memory ids kept
    d = json.loads((store_dir / "cache" / LEDGER_NAME).read_bytes())
    for _, ids, _, mids in d["segments"].values():
        assert mids["trajectory"] == "".join(memory_id("trajectory", t)[1:] for t in ids)
    hashed = _count_hashes(monkeypatch)
    r = memp("distill", "--policy", "trajectory", "--json").jsonl()[-1]
    assert r["total"] == 18 + 14 + 4 and r["skipped"] == 36 and r["read"] == 0 and hashed == []


def test_the_ledger_keeps_the_other_policies_memory_ids_for_the_failed_runs_of_only_success(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed run left out by --only-success is checked for a memory of it under any policy:
    # two more ids per failed run, kept by the ledger like this policy's (not hashed again).
    _setup(store_dir, tmp_path, "trajectory", "--only-success")
    memp("distill", "--policy", "trajectory", "--only-success")
    memp("distill", "--policy", "trajectory", "--only-success")
    d = json.loads((store_dir / "cache" / LEDGER_NAME).read_bytes())
    for _, ids, codes, mids in d["segments"].values():
        if codes.strip("s"):
            assert set(mids) == {"trajectory", "script", "proceduralization"}
            assert mids["script"] == "".join(memory_id("script", t)[1:] for t in ids)
    hashed = _count_hashes(monkeypatch)
    r = memp("distill", "--policy", "trajectory", "--only-success", "--json").jsonl()[-1]
    assert r["filtered"] > 0 and r["read"] == 0 and hashed == []


def test_the_plan_that_enters_a_segment_keeps_its_memory_ids_under_every_policy(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The distill that parses a new segment enters it with its runs' memory ids under each
    # policy, so the next plan settles it unhashed: a store's first distill leaves a complete
    # ledger, and the second does not hash every stored run (1.16M runs: ~3.5 s at 1M memories).
    memp("init", "--embedder", "hash")
    memp("ingest", ALF)
    memp("ingest", _unlabeled(tmp_path))
    memp("distill", "--policy", "trajectory", "--only-success")
    d = json.loads((store_dir / "cache" / LEDGER_NAME).read_bytes())
    assert len(d["segments"]) == 2
    for _, ids, _, mids in d["segments"].values():
        assert mids == {p: "".join(memory_id(p, t)[1:] for t in ids) for p in POLICIES}
    hashed = _count_hashes(monkeypatch)
    r = memp("distill", "--policy", "trajectory", "--only-success", "--json").jsonl()[-1]
    assert r["read"] == 0 and r["skipped"] > 0 and r["filtered"] > 0 and hashed == []
    # a segment entered by what has no policy to hash for (memp stats) is hashed by the next plan
    memp("ingest", WEB)
    memp("stats")
    memp("distill", "--policy", "trajectory", "--only-success")
    d = json.loads((store_dir / "cache" / LEDGER_NAME).read_bytes())
    assert all(len(e) == 4 and "trajectory" in e[3] for e in d["segments"].values())


@pytest.mark.parametrize("damage", ["not_hex", "short", "not_a_string", "not_a_dict"])
def test_a_ledger_with_damaged_memory_ids_is_rebuilt_and_plans_as_without_it(
    store_dir: Path, tmp_path: Path, damage: str
) -> None:
    _setup(store_dir, tmp_path, "trajectory")
    memp("distill", "--policy", "trajectory")
    memp("distill", "--policy", "trajectory")
    path = store_dir / "cache" / LEDGER_NAME
    d = json.loads(path.read_bytes())
    entry = next(iter(d["segments"].values()))
    n = len(entry[1])
    entry[3] = {
        "not_hex": {"trajectory": "z" * 12 * n},
        "short": {"trajectory": "a" * (12 * n - 1)},
        "not_a_string": {"trajectory": 5},
        "not_a_dict": ["a" * 12 * n],
    }[damage]
    path.write_text(json.dumps(d))
    assert ledger.Ledger(Store.open(store_dir)).entries == {}  # damaged: ignored, written again
    ref, got, _ = _both(store_dir, tmp_path, policy="trajectory")
    _same(ref, got)
