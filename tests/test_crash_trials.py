"""kill -9 trials: every writer command killed by SIGKILL at varied write points, then rerun.

The kill is real (tests/killpoint.py: the process sends itself SIGKILL just before its N-th
write, fsync, rename or unlink), so nothing of memp's own cleanup runs. After each kill the
command is run again, and the store must hold: nothing acknowledged lost (what was there before
the killed command, and a hand edit), no memory twice, every memory file loads and is named by
a journal line and is a version in its history, no temp file left by the dead writer,
`memp doctor` exits 0 and `memp query` answers. Kill points are drawn with fixed seeds from all
the write points of a clean run of the same command (counted first), plus the first and last.

The first tests here are the loose ends the next writer ties up after a kill (issue 12):
temp files of the dead writer removed, memory files it wrote without a journal line journaled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import FILES, REPO, memory_ids, memp, read_records, stored_trajectories, subprocess_env

from memp_cli.model.memory import load_memory_file
from memp_cli.store.ledger import LEDGER_NAME

KILLPOINT = REPO / "tests" / "killpoint.py"


# ----------------------------------------------------------------------------- helpers


def run_killed(store: Path, args: list[str], kill_at: int, env: dict[str, str] | None = None) -> int:
    """Run memp ARGS as a child killed at write point ``kill_at``: its exit status (-9 if killed)."""
    return run_killed_where(store, args, kill_at, env)[0]


def run_killed_where(
    store: Path, args: list[str], kill_at: int, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """:func:`run_killed`, and the write point the kill hit (``fsync memories/.tmp-...``)."""
    where = store.parent / "where.txt"
    where.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(KILLPOINT), "--store", str(store), *args],
        env={**subprocess_env(), **(env or {}), "MEMP_KILL_AT": str(kill_at), "MEMP_KILL_WHERE": str(where)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode in (0, -9), proc.stderr.decode()[-2000:]
    return proc.returncode, where.read_text() if where.exists() else "nowhere (it completed)"


def count_points(store: Path, args: list[str], env: dict[str, str] | None = None) -> int:
    """The number of write points of a clean run of memp ARGS (on ``store``, which it changes)."""
    return len(list_points(store, args, env))


def list_points(store: Path, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The write points of a clean run of memp ARGS, in order (``fsync trajectories/.tmp-...``)."""
    out = store.parent / "points.txt"
    proc = subprocess.run(
        [sys.executable, str(KILLPOINT), "--store", str(store), *args],
        env={**subprocess_env(), **(env or {}), "MEMP_KILL_COUNT": str(out)},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    points = out.read_text().splitlines()
    out.unlink()
    return points


def pick_points(total: int, k: int, seed: int) -> list[int]:
    """``k`` kill points of 1..total: the first, the last and ``k - 2`` drawn with ``seed``."""
    rng = random.Random(seed)
    inner = list(range(2, total))
    return sorted({1, total, *rng.sample(inner, min(len(inner), max(0, k - 2)))})


def temp_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob(".tmp-*") if "cache" not in p.relative_to(store).parts)


def journal(store: Path) -> list[dict[str, Any]]:
    out = []
    for line in (store / "journal.jsonl").read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def journaled_ids(store: Path) -> set[str]:
    return {mid for e in journal(store) for mid in e.get("ids", [])}


def history_shas(store: Path, mid: str) -> set[str]:
    try:
        lines = (store / "history" / f"{mid}.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return set()
    out = set()
    for line in lines:
        try:
            out.add(json.loads(line).get("sha256"))
        except json.JSONDecodeError:
            continue
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def memory_bytes(store: Path) -> dict[str, bytes]:
    return {mid: (store / "memories" / f"{mid}.toml").read_bytes() for mid in memory_ids(store)}


def assert_store_sound(store: Path, where: str) -> None:
    """What must hold after a killed command was rerun (or after the next writer ran)."""
    ids = memory_ids(store)
    for mid in ids:  # every memory file loads
        load_memory_file(store / "memories" / f"{mid}.toml")
    listed = memp("--store", store, "list", "--json").jsonl()
    assert sorted(m["id"] for m in listed) == ids, where
    # every memory on disk is named by a journal line and is a version in its history
    assert not set(ids) - journaled_ids(store), (where, sorted(set(ids) - journaled_ids(store)))
    for mid in ids:
        assert sha((store / "memories" / f"{mid}.toml").read_bytes()) in history_shas(store, mid), (
            where,
            mid,
        )
    assert temp_files(store) == [], (where, temp_files(store))
    doctor = memp("--store", store, "doctor", expect=None)
    assert doctor.code == 0, (where, doctor)
    assert "temporary file" not in doctor.stdout, (where, doctor)
    hits = memp(
        "--store", store, "query", "put a clean mug in the cabinet", "-k", 500, "--min-score", -1,
        "--no-collapse", "--json", expect=None,
    )  # fmt: skip
    assert hits.code == 0, (where, hits)
    assert sorted(h["id"] for h in hits.jsonl()) == ids, where


def distilled_store(root: Path, *, distill: bool = True) -> Path:
    memp("--store", root, "init", "--embedder", "hash")
    memp("--store", root, "ingest", FILES["native"])
    if distill:
        memp("--store", root, "distill")
    return root


# ------------------------------------------------------------------- the next writer cleans up


def _kill_until(
    store: Path, template: Path, args: list[str], found: Any, at: Callable[[str], bool], after: bool = False
) -> int:
    """Kill memp ARGS at the first write point ``at`` accepts (``fsync trajectories/.tmp-...``),
    else the next ones, on a fresh copy of ``template`` each time, until ``found(store)`` holds
    after the kill: the write point it took."""
    clean = store.parent / "count"
    shutil.copytree(template, clean)
    points = list_points(clean, args)
    shutil.rmtree(clean)
    for n in [i + after for i, p in enumerate(points, 1) if at(p)][:5]:  # after: once it is done
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(template, store)
        if run_killed(store, args, n) == 0:
            break
        if found(store):
            return n
    pytest.fail(f"no kill of memp {' '.join(args)} left what the test needs")


def test_the_next_writer_removes_the_temp_segment_of_a_killed_ingest(tmp_path: Path) -> None:
    template = distilled_store(tmp_path / "template", distill=False)
    store = tmp_path / "s"
    runs = [dict(r, task=r["task"] + " (again)") for r in read_records(FILES["native"])]
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in runs))

    def left_a_segment(s: Path) -> bool:
        return any(p.parent.name == "trajectories" and p.stat().st_size for p in temp_files(s))

    _kill_until(
        store,
        template,
        ["ingest", str(data)],
        left_a_segment,
        lambda p: p.startswith("fsync trajectories/.tmp-"),
    )
    (tmp,) = temp_files(store)
    assert tmp.stat().st_size > data.stat().st_size / 2  # the segment, about as large as the input
    before = len(stored_trajectories(store))
    # a link named as memp names its temp files is not memp's: left alone, never followed
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    link = store / "trajectories" / ".tmp-0123456789ab"
    link.symlink_to(outside)
    foreign = store / "trajectories" / ".tmp-notes.txt"  # not a name memp gives its temp files
    foreign.write_text("someone's")
    r = memp("--store", store, "index", "sync")  # any writer
    assert temp_files(store) == sorted([link, foreign]) and outside.read_text() == "keep me"
    assert "killed" in r.stderr and "1 temporary file" in r.stderr, r
    link.unlink()
    foreign.unlink()
    assert len(stored_trajectories(store)) == before  # nothing else touched
    assert memp("--store", store, "doctor").stdout == ""


def test_the_next_writer_journals_the_memories_a_killed_distill_wrote(tmp_path: Path) -> None:
    template = distilled_store(tmp_path / "template", distill=False)
    store = tmp_path / "s"

    def unjournaled(s: Path) -> bool:
        return bool(set(memory_ids(s)) - journaled_ids(s))

    # just after a memory file is put in place (a new file: replace; an old one: exchange, then unlink)
    swapped = re.compile(r"^(replace memories/m\w+\.toml|unlink memories/\.tmp-swap-)")
    _kill_until(store, template, ["distill"], unjournaled, lambda p: bool(swapped.match(p)), after=True)
    missing = set(memory_ids(store)) - journaled_ids(store)
    doctor = memp("--store", store, "doctor", expect=None)
    assert doctor.code == 0, doctor  # a reader changes nothing
    assert set(memory_ids(store)) - journaled_ids(store) == missing
    r = memp("--store", store, "index", "sync")  # the next writer
    assert f"{len(missing)} memor" in r.stderr and "killed" in r.stderr, r
    (rec,) = [e for e in journal(store) if e["event"] == "recovered"]
    assert set(rec["ids"]) == missing and rec["interrupted"] == "distill.write"
    for mid in memory_ids(store):
        assert sha((store / "memories" / f"{mid}.toml").read_bytes()) in history_shas(store, mid), mid
    # the rerun finishes the work once: no memory journaled twice by distill and recovery together
    memp("--store", store, "distill")
    assert_store_sound(store, "after the rerun")
    written = [m for e in journal(store) if e["event"] in ("distill.write", "recovered") for m in e["ids"]]
    assert len(written) == len(set(written))


def test_a_rerun_with_nothing_left_to_write_still_journals_what_the_killed_one_wrote(tmp_path: Path) -> None:
    """Killed after its last memory file was in place, before the journal line: the rerun finds
    every memory built and has nothing to write, yet it ties up (a user reruns the command that
    was killed, not some other writer)."""
    template = distilled_store(tmp_path / "template", distill=False)
    store = tmp_path / "s"
    clean = tmp_path / "reference"
    shutil.copytree(template, clean)
    memp("--store", clean, "distill")

    def all_written_some_unjournaled(s: Path) -> bool:
        return set(memory_ids(s)) == set(memory_ids(clean)) and bool(set(memory_ids(s)) - journaled_ids(s))

    def journal_line(p: str) -> bool:  # distill's own line, written once its memories are in place
        return p.startswith("write ") and p.endswith("/journal.jsonl")

    _kill_until(store, template, ["distill"], all_written_some_unjournaled, journal_line)
    missing = set(memory_ids(store)) - journaled_ids(store)
    r = memp("--store", store, "distill", "--json")
    assert r.jsonl()[-1]["written"] == 0, r  # nothing left to build
    (rec,) = [e for e in journal(store) if e["event"] == "recovered"]
    assert set(rec["ids"]) == missing, r
    assert_store_sound(store, "after a rerun with nothing to write")


def test_an_earlier_batch_line_of_the_killed_process_is_not_taken_for_the_killed_batchs(
    tmp_path: Path,
) -> None:
    """A distill writes batches; journal times are to the second. Killed in a batch that started
    the second its previous batch was journaled: that line (same pid, same event) names other
    memories, so the killed batch's are still journaled by the next writer (found by the LLM
    distill trials, where replies come in batches)."""
    from memp_cli.store import Store
    from memp_cli.update.history import History

    store = distilled_store(tmp_path / "s")
    ids = memory_ids(store)
    earlier, killed = ids[:2], ids[2:4]
    started = History(Store.open(store)).versions(killed[0])[-1].time
    pid = 4242
    kept = [e for e in journal(store) if e["event"] != "distill.write"]
    kept.append({"time": started, "event": "distill.write", "command": "distill", "pid": pid, "ids": earlier})
    (store / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    pending = {"pid": pid, "command": "distill", "event": "distill.write", "started": started, "ids": killed}
    (store / ".pending").write_text(json.dumps(pending))
    (store / ".lock").write_text(f"pid {pid}")
    r = memp("--store", store, "index", "sync")
    (rec,) = [e for e in journal(store) if e["event"] == "recovered"]
    assert rec["ids"] == killed and rec["killed_pid"] == pid, r


def test_a_kill_after_the_journal_line_journals_nothing_twice(tmp_path: Path) -> None:
    template = distilled_store(tmp_path / "template", distill=False)
    store = tmp_path / "s"

    def journaled_but_pending(s: Path) -> bool:
        ids = set(memory_ids(s))
        return bool(ids) and (s / ".pending").exists() and not ids - journaled_ids(s)

    _kill_until(
        store,
        template,
        ["distill"],
        journaled_but_pending,
        lambda p: p.startswith("unlink ") and p.endswith("/.pending"),
    )
    r = memp("--store", store, "index", "sync")
    assert not (store / ".pending").exists()
    assert not [e for e in journal(store) if e["event"] == "recovered"], r
    assert "journaled" not in r.stderr


# ------------------------------------------------------------------------------ the trials


def _without_stamps(data: bytes) -> str:
    """A memory file without its timestamps (a rerun writes them at another time)."""
    return "\n".join(
        ln for ln in data.decode().splitlines() if not ln.startswith(("created = ", "updated = "))
    )


@dataclass
class Scenario:
    """A writer command, the store it starts from (``template``) and what it must leave."""

    args: list[str]
    template: Path
    check: Callable[[Path, dict[str, bytes], dict[str, bytes], str], None]  # store, before, reference
    env: dict[str, str] = field(default_factory=dict)


def run_trials(
    name: str, sc: Scenario, work: Path, kills: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Kill ``sc.args`` at ``kills`` write points (seeded), rerun it after each, check the store."""
    clean = work / "clean" / ".memp"
    shutil.copytree(sc.template, clean)
    total = count_points(clean, sc.args, sc.env)
    reference = memory_bytes(clean)
    for k, v in sc.env.items():
        monkeypatch.setenv(k, v)
    log = []
    for n in pick_points(total, kills, seed):
        store = work / f"k{n}" / ".memp"
        shutil.copytree(sc.template, store)
        before = memory_bytes(store)
        rc, point = run_killed_where(store, sc.args, n, sc.env)
        where = f"memp {' '.join(sc.args)} killed at write point {n} of {total} ({point})"
        # as the kill left it: every memory lists, doctor finds nothing worse than a warning
        memp("--store", store, "list", "--json")
        doctor = memp("--store", store, "doctor", expect=None)
        assert doctor.code == 0, (where, doctor)
        rerun = memp("--store", store, *sc.args, expect=None)
        assert rerun.code == 0, (where, rerun)
        if temp_files(store):  # only if the rerun had nothing to write: then the next writer tidies
            assert rc and (store / ".lock").read_text().startswith("pid "), (where, rerun)
            memp("--store", store, "index", "sync")
        assert_store_sound(store, where)
        sc.check(store, before, reference, where)
        log.append(f"{name}: {n}/{total} {point}: {'killed' if rc else 'completed'}, rerun ok, store sound")
        shutil.rmtree(store.parent)
    print("\n".join(log))
    return log


def _same_memories(store: Path, reference: dict[str, bytes], where: str) -> None:
    got = {k: _without_stamps(v) for k, v in memory_bytes(store).items()}
    assert got == {k: _without_stamps(v) for k, v in reference.items()}, where


def _kept(
    store: Path, before: dict[str, bytes], where: str, *, but: frozenset[str] | set[str] = frozenset()
) -> None:
    """Every memory file there before is there, byte for byte (but ``but``)."""
    now = memory_bytes(store)
    for mid, data in before.items():
        if mid not in but:
            assert now.get(mid) == data, (where, mid)


def _journal_once(store: Path, where: str, *events: str) -> None:
    written = [m for e in journal(store) if e["event"] in (*events, "recovered") for m in e["ids"]]
    assert len(written) == len(set(written)), (where, "a memory journaled twice")


def _ingest_scenario(work: Path) -> Scenario:
    template = distilled_store(work / "t" / ".memp")
    used = memory_ids(template)[:2]
    runs = [dict(r, task=r["task"] + " (again)", memories_used=used) for r in read_records(FILES["native"])]
    data = work / "runs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in runs))
    n_before = len(stored_trajectories(template))

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _kept(store, before, where)
        stored = [t["id"] for t in stored_trajectories(store)]
        assert len(stored) == len(set(stored)) == n_before + len(runs), where
        ledger = [json.loads(x) for x in (store / "outcomes.jsonl").read_text().splitlines()]
        pairs = [(x["memory"], x["trajectory"]) for x in ledger]
        assert len(pairs) == len(set(pairs)) == len(runs) * len(used), where

    return Scenario(["ingest", str(data)], template, check)


def _distill_scenario(
    work: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Scenario:
    template = distilled_store(work / "t" / ".memp", distill=False)

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _same_memories(store, reference, where)
        _journal_once(store, where, "distill.write")

    return Scenario(["distill", *(args or [])], template, check, env or {})


def _index_scenario(work: Path, how: str) -> Scenario:
    template = distilled_store(work / "t" / ".memp")
    if how == "rebuild":
        shutil.rmtree(template / "index")
        (template / "index").mkdir()
    else:  # a sync with work of every kind: two memories deleted by hand, one edited by hand
        ids = memory_ids(template)
        for mid in ids[:2]:
            (template / "memories" / f"{mid}.toml").unlink()
        p = template / "memories" / f"{ids[3]}.toml"
        p.write_text(p.read_text().replace('task = "', 'task = "by hand: ', 1))

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _kept(store, before, where)
        assert memory_bytes(store) == before, where

    return Scenario(["index", how], template, check)


EDITOR = """import sys
p = sys.argv[1]
s = open(p, encoding="utf-8").read()
open(p, "w", encoding="utf-8").write(s.replace('task = "', 'task = "edited: ', 1))
"""


def _edit_scenario(work: Path) -> Scenario:
    template = distilled_store(work / "t" / ".memp")
    mid = memory_ids(template)[4]
    path = template / "memories" / f"{mid}.toml"
    hand = path.read_bytes() + b"# a hand edit saved before memp edit ran\n"
    path.write_bytes(hand)  # acknowledged: it is on disk, memp has not seen it yet
    script = work / "editor.py"
    script.write_text(EDITOR)

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _kept(store, before, where, but={mid})
        now = (store / "memories" / f"{mid}.toml").read_bytes()
        assert b'task = "edited: ' in now, where
        assert sha(hand) in history_shas(store, mid), (where, "the hand edit was lost")

    return Scenario(["edit", mid], template, check, {"MEMP_EDITOR": f"{sys.executable} {script}"})


def _reflect_scenario(work: Path) -> Scenario:
    from memp_cli.build.policies import memory_id
    from memp_cli.ingest import parse_record

    root = work / "t" / ".memp"
    memp("--store", root, "init", "--embedder", "hash")
    records = read_records(FILES["native"])
    good = "".join(json.dumps(r) + "\n" for r in records if r["success"] is True)
    memp("--store", root, "ingest", "-", input=good.encode())
    memp("--store", root, "distill")
    targets = set()
    failures = []
    for r in [r for r in records if r["success"] is False][:3]:
        ok = next(x for x in records if x["success"] is True and x["task_type"] == r["task_type"])
        mid = memory_id("proceduralization", parse_record(ok).id)
        targets.add(mid)
        failures.append(json.dumps(dict(r, memories_used=[mid])) + "\n")
    memp("--store", root, "ingest", "-", input="".join(failures).encode())

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _kept(store, before, where, but=targets)
        _same_memories(store, reference, where)
        reflected = [(e["ids"][0], e["trajectory"]) for e in journal(store) if e["event"] == "reflect"]
        assert len(reflected) == len(set(reflected)), (where, "a run reflected on twice")

    return Scenario(["reflect"], root, check)


def _prune_scenario(work: Path) -> Scenario:
    template = distilled_store(work / "t" / ".memp")
    doomed = set(memory_ids(template)[:2])
    for i, mid in enumerate(sorted(doomed)):
        for j in range(3):
            memp("--store", template, "feedback", mid, "--failure", "-t", f"run-{i}-{j}")

    def check(store: Path, before: dict[str, bytes], reference: dict[str, bytes], where: str) -> None:
        _kept(store, before, where, but=doomed)
        assert not doomed & set(memory_ids(store)), where
        assert set(memory_bytes(store)) == set(reference), where
        for mid in doomed:
            assert (store / "trash" / f"{mid}.toml").read_bytes() == before[mid], where

    return Scenario(["prune", "--rule", "failing"], template, check)


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.parametrize(
    ("name", "kills"),
    [
        ("ingest", 6),
        ("distill", 8),
        ("distill-llm", 6),
        ("index-rebuild", 5),
        ("index-sync", 5),
        ("edit", 5),
        ("reflect", 5),
        ("prune", 5),
    ],
)
def test_kill_9_trials(name: str, kills: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = sum(map(ord, name))  # fixed per command: the same kill points on every run
    if name == "distill-llm":
        from llm_server import serve
        from test_distill import KEY, MODEL, script_reply

        with serve(default=script_reply) as server:
            server.delay = 0.02  # a slow model: kills land between replies, too
            args = ["--policy", "script", "--model", MODEL, "--api-base", server.url, "--concurrency", "2"]
            sc = _distill_scenario(tmp_path, env={"OPENAI_API_KEY": KEY}, args=args)
            run_trials(name, sc, tmp_path, kills, seed, monkeypatch)
            assert server.requests  # the model was asked
        return
    sc = {
        "ingest": _ingest_scenario,
        "distill": _distill_scenario,
        "index-rebuild": lambda w: _index_scenario(w, "rebuild"),
        "index-sync": lambda w: _index_scenario(w, "sync"),
        "edit": _edit_scenario,
        "reflect": _reflect_scenario,
        "prune": _prune_scenario,
    }[name](tmp_path)
    run_trials(name, sc, tmp_path, kills, seed, monkeypatch)


@pytest.mark.parametrize("command", ["stats", "distill"])
def test_the_temp_file_of_a_killed_ledger_save_is_reported_and_removed(tmp_path: Path, command: str) -> None:
    """``memp stats`` saves the trajectory ledger without the store lock, distill under it: a
    kill before the rename leaves its temp file in cache/. Doctor reports it; the next ledger
    save (a killed stats) or the next writer (a killed distill) removes it, and no other."""
    template = distilled_store(tmp_path / "template", distill=False)
    store = tmp_path / "s"
    cache = store / "cache"

    def left_a_ledger_temp(s: Path) -> bool:
        return any((s / "cache").glob(".tmp-ledger-*"))

    _kill_until(store, template, [command], left_a_ledger_temp, lambda p: p == f"replace cache/{LEDGER_NAME}")
    (tmp,) = cache.glob(".tmp-ledger-*")
    assert not (cache / LEDGER_NAME).exists()
    r = memp("--store", store, "doctor")
    assert f"{tmp}: leftover temporary file from an interrupted write" in r.stdout + r.stderr
    live = cache / f".tmp-ledger-{os.getpid()}-0123456789ab"  # a save in progress: left alone
    live.write_bytes(b"{}")
    r = memp(
        "--store",
        store,
        "stats" if command == "stats" else "index",
        *([] if command == "stats" else ["sync"]),
    )
    assert not tmp.exists() and live.exists()
    assert ("removed 1 temporary file" in r.stderr) == (command == "distill"), r.stderr
    live.unlink()
    memp("--store", store, "stats")
    assert (cache / LEDGER_NAME).is_file() and list(cache.glob(".tmp-*")) == []
    assert memp("--store", store, "doctor").stdout == ""
