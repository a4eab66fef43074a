"""A cycle and a hand edit at once lose nothing: a hand edit is the current file or a version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FILES, memory_ids, memp, read_records, subprocess_env

from memp_cli.build.policies import memory_id
from memp_cli.ingest import parse_record
from memp_cli.store import Store
from memp_cli.update.history import History, swap_in


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_swap_in_returns_the_replaced_bytes(tmp_path: Path) -> None:
    p = tmp_path / "m.toml"
    assert swap_in(p, b"one") is None
    assert swap_in(p, b"two") == b"one"
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.toml"]  # no temp file left


def test_a_hand_edit_landing_after_the_notice_is_kept(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mid = memory_ids(built)[0]
    path = built / "memories" / f"{mid}.toml"
    store = Store.open(built)
    h = History(store)
    with store.lock:
        h.notice(mid)
    edit = path.read_bytes() + b"# an edit saved at the worst moment\n"
    path.write_bytes(edit)
    monkeypatch.setattr(History, "notice", lambda self, memory_id: None)  # the edit lands after it
    with store.lock:
        h.write(mid, path.read_bytes().replace(b"# an edit", b"# replaced"), by="memp test")
    shas = [v.sha256 for v in h.versions(mid)]
    assert _sha(edit) in shas and h.versions(mid)[-2].by == "hand edit"


@pytest.mark.slow
def test_cycle_and_hand_edits_at_once(store: Path) -> None:
    records = read_records(FILES["native"])
    memp("ingest", FILES["native"])
    memp("distill", "--only-success")
    # failed runs that used memories: the cycle's reflect rewrites exactly those memories
    targets: list[str] = []
    lines = []
    for n, r in enumerate(x for x in records if x["success"] is False):
        ok = next(s for s in records if s["success"] is True and s["task_type"] == r["task_type"])
        mid = memory_id("proceduralization", parse_record(ok).id)
        targets.append(mid)
        lines.append(json.dumps(dict(r, memories_used=[mid], task_id=f"again-{n}")))
    failing = store.parent / "failing.jsonl"
    failing.write_text("\n".join(lines) + "\n")
    targets = sorted(set(targets))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memp_cli", "cycle", str(failing), "--json"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    last: dict[str, bytes] = {}
    n = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        for mid in targets:
            path = store / "memories" / f"{mid}.toml"
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                continue
            n += 1
            data = text + f"# hand edit {n}\n".encode()
            if n % 2:  # in place, as some editors save
                with open(path, "r+b") as f:
                    f.write(data)
                    f.truncate()
            else:  # by rename, as most editors save
                tmp = path.with_name(f".edit-{mid}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            last[mid] = data
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["reflect"]["written"] > 0, summary  # the cycle did rewrite memories
    s = Store.open(store)
    h = History(s)
    with s.lock:
        for mid in targets:
            h.notice(mid)
    lost = []
    for mid, data in last.items():
        where = store / "memories" / f"{mid}.toml"
        if not where.exists():  # pruned by the cycle: the trash holds it
            where = store / "trash" / f"{mid}.toml"
        current = where.read_bytes()
        if current != data and _sha(data) not in {v.sha256 for v in h.versions(mid)}:
            lost.append(mid)
    assert n > len(targets), (n, summary)
    assert not lost, {m: [v.by for v in h.versions(m)] for m in lost}
