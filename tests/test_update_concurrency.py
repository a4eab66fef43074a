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
from conftest import DATA, FILES, memory_ids, memp, read_records, stored_trajectories, subprocess_env

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
            try:
                if n % 2:  # in place, as some editors save
                    with open(path, "r+b") as f:
                        f.write(data)
                        f.truncate()
                else:  # by rename, as most editors save
                    tmp = path.with_name(f".edit-{mid}")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
            except FileNotFoundError:
                continue  # pruned by the cycle since it was read: no edit was made
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


@pytest.mark.slow
def test_two_distills_an_ingest_and_hand_edits_at_once(store: Path) -> None:
    """Two LLM distills of the same runs, an ingest and hand edits, all at once: every process
    ends well, no memory is written twice, no hand edit is lost silently, the store is sound."""
    from llm_server import serve
    from test_distill import KEY, MODEL, script_reply

    memp("ingest", FILES["native"])
    memp("distill")  # builtin memories, edited by hand below while the rest runs
    targets = memory_ids(store)[:6]
    memp("ingest", DATA / "distill_alfworld.jsonl")  # runs for the LLM distills
    stored = len(stored_trajectories(store))
    env = {**subprocess_env(), "OPENAI_API_KEY": KEY, "MEMP_STORE": str(store)}
    with serve(default=script_reply) as server:
        server.delay = 0.05
        distill = [sys.executable, "-m", "memp_cli", "distill", "--policy", "script", "--model", MODEL,
                   "--api-base", server.url, "--concurrency", "2", "--json"]  # fmt: skip
        procs = [
            subprocess.Popen(distill, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
            subprocess.Popen(distill, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
            subprocess.Popen(
                [sys.executable, "-m", "memp_cli", "ingest", str(FILES["native_webshop"])],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        ]
        last: dict[str, bytes] = {}
        n = 0
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for mid in targets:
                path = store / "memories" / f"{mid}.toml"
                n += 1
                data = path.read_bytes() + f"# hand edit {n}\n".encode()
                if n % 2:  # in place, as some editors save
                    with open(path, "r+b") as f:
                        f.write(data)
                        f.truncate()
                else:  # by rename, as most editors save
                    tmp = path.with_name(f".edit-{mid}")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
                last[mid] = data
            time.sleep(0.005)
        outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    assert n > 2 * len(targets)
    s = Store.open(store)
    h = History(s)
    with s.lock:
        for mid in targets:
            h.notice(mid)
    for mid, data in last.items():  # the last edit of each: the file, or a version of it
        current = (store / "memories" / f"{mid}.toml").read_bytes()
        assert current == data or _sha(data) in {v.sha256 for v in h.versions(mid)}, mid
        assert b"# hand edit" in current
    pids = {procs[0].pid, procs[1].pid}
    written = [
        m for e in s.read_journal() if e["event"] == "distill.write" and e["pid"] in pids for m in e["ids"]
    ]
    assert len(written) == len(set(written))  # two distills of the same runs: each memory written once
    # the LLM rebuilt every builtin memory but those edited by hand, and built the new ones
    assert set(written) == set(memory_ids(store)) - set(targets)
    assert len(written) > 30 - len(targets)
    assert len(memp("list", "--json").jsonl()) == len(memory_ids(store))
    assert memp("doctor", expect=None).code == 0
    assert len(stored_trajectories(store)) == stored + 10  # the ingest's 10 WebShop runs
