"""A kill at every write point of ingest (and of its outcome counting): the store stays readable,
stores a whole input or nothing, and a rerun stores and counts everything exactly once."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp, read_records, stored_trajectories
from faults import Killed, kill_at

from memp_cli.ingest import read_jsonl
from memp_cli.store import Store


def _ingest(store: Path, data: bytes) -> None:
    Store.open(store).ingest(read_jsonl(iter(data.splitlines(keepends=True)), "runs.jsonl"))


def test_a_kill_at_any_write_point_of_ingest(built: Path, tmp_path: Path) -> None:
    template = tmp_path / "template"
    shutil.copytree(built, template)
    used = memory_ids(built)[:2]
    # new runs (another task id) that used two memories: ingest stores them and counts outcomes
    runs = [
        dict(r, task_id=f"{r['task_id']}#again", memories_used=used) for r in read_records(FILES["native"])
    ]
    data = "".join(json.dumps(r) + "\n" for r in runs).encode()
    before = len(stored_trajectories(template))
    for n in itertools.count(1):
        shutil.rmtree(built)
        shutil.copytree(template, built)
        with kill_at(n) as k, contextlib.suppress(Killed):
            _ingest(built, data)
        stored = len(stored_trajectories(built))
        assert stored in (before, before + len(runs)), (n, k.where)  # all of the input or none of it
        memp("list", "--json")
        assert memp("doctor", expect=None).code == 0, (n, k.where)
        _ingest(built, data)  # the rerun
        assert len(stored_trajectories(built)) == before + len(runs), (n, k.where)
        ledger = [json.loads(x) for x in (built / "outcomes.jsonl").read_text().splitlines()]
        pairs = [(x["memory"], x["trajectory"]) for x in ledger]
        assert len(pairs) == len(set(pairs)) == len(runs) * len(used), (n, k.where)
        if not k.fired:
            break
    assert n > 1  # at least one write point was hit


def test_a_kill_at_an_append_of_ingest(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The appends (journal line, outcome lines) are write points too: a kill before any of
    them leaves outcomes uncounted, and the rerun counts them once."""
    from memp_cli.store import appendlog

    template = tmp_path / "template"
    shutil.copytree(built, template)
    used = memory_ids(built)[:1]
    runs = [
        dict(r, task_id=f"{r['task_id']}#b", memories_used=used) for r in read_records(FILES["native"])[:5]
    ]
    data = "".join(json.dumps(r) + "\n" for r in runs).encode()
    real_append, real_journal = appendlog.append, Store.journal
    for n in itertools.count(1):
        shutil.rmtree(built)
        shutil.copytree(template, built)
        calls: list[str] = []

        def point(kind: str, _n: int = n, _calls: list[str] = calls) -> None:
            _calls.append(kind)
            if len(_calls) >= _n:
                raise Killed(f"append {len(_calls)}")

        def append(path: Path, payload: bytes) -> None:
            point("append")
            real_append(path, payload)

        def journal(self: Store, event: str, **fields: object) -> None:
            point("journal")
            real_journal(self, event, **fields)

        monkeypatch.setattr(appendlog, "append", append)
        monkeypatch.setattr(Store, "journal", journal)
        with contextlib.suppress(Killed):
            _ingest(built, data)
        monkeypatch.setattr(appendlog, "append", real_append)
        monkeypatch.setattr(Store, "journal", real_journal)
        assert memp("doctor", expect=None).code == 0, n
        _ingest(built, data)
        ledger = [json.loads(x) for x in (built / "outcomes.jsonl").read_text().splitlines()]
        assert sorted(x["trajectory"] for x in ledger) == sorted({x["trajectory"] for x in ledger}), n
        assert len(ledger) == len(runs), n
        if len(calls) < n:
            break
    assert n >= 3  # the journal line, the outcome lines and the outcomes journal line
