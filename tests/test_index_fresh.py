"""A writer hands the memories it has just written to the index sync (``sync(fresh=...)``), which
then does not read those files again while they are as written; a hand edit in between is read
from disk all the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp

from memp_cli.build.runner import distill
from memp_cli.index import sync
from memp_cli.index.entry import entry
from memp_cli.index.state import load_files, read_state
from memp_cli.store import Store, store_embedder

ALF = DATA / "distill_alfworld.jsonl"
WEB = DATA / "distill_webshop.jsonl"


@pytest.fixture
def store(vanilla_store: Path) -> Path:
    memp("ingest", ALF, WEB)
    return vanilla_store


def _reads(st: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The memory ids the index reads from disk from now on."""
    read: list[str] = []
    real = st.read_memory

    def counted(mid: str) -> Any:
        read.append(mid)
        return real(mid)

    monkeypatch.setattr(st, "read_memory", counted)
    return read


def _table(root: Path) -> dict[str, tuple[Any, ...]]:
    """What the index holds of each memory (derived texts, kinds, families)."""
    st = Store.open(root)
    state = read_state(st)
    assert state is not None
    t = load_files(st, state)
    return {
        mid: (t.key_hashes[i], t.texts[i], t.procedures[i], t.built[i], state.kinds[i], state.families[i])
        for i, mid in enumerate(state.ids)
    }


@pytest.mark.parametrize("policy", ["trajectory", "proceduralization"])
def test_the_memories_distill_wrote_are_not_read_again_and_index_as_read(
    store: Path, policy: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st = Store.open(store)
    report = distill(st, policy, model="builtin" if policy != "trajectory" else None)
    assert report.written == 22 and set(report.fresh) == set(report.ids)
    for mid, (ent, _) in report.fresh.items():  # what a read would make of the file
        assert ent == entry(st.read_memory(mid)), mid
    read = _reads(st, monkeypatch)
    _, rep = sync(st, store_embedder(st), fresh=report.fresh)
    assert read == [] and rep.added == 22
    handed = _table(store)
    _, rep = sync(st, store_embedder(st), rebuild=True)  # every file read
    assert sorted(read) == sorted(report.ids) and rep.embedded == 22
    assert _table(store) == handed


def test_a_hand_edit_after_the_write_is_read_from_disk(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = Store.open(store)
    report = distill(st, "trajectory")
    first, second = sorted(report.fresh)[:2]
    path = st.memory_path(first)
    text = path.read_text()
    assert 'keys = [\n    "' in text
    path.write_text(text.replace('keys = [\n    "', 'keys = [\n    "edited by hand: ', 1))
    # Same size, other mtime: still read (the stamp is the pair).
    other = st.memory_path(second)
    text = other.read_bytes()
    os.utime(other, ns=(report.fresh[second][1][0] + 10**9,) * 2)
    assert other.read_bytes() == text and other.stat().st_size == report.fresh[second][1][1]
    read = _reads(st, monkeypatch)
    _, rep = sync(st, store_embedder(st), fresh=report.fresh)
    assert sorted(read) == [first, second] and rep.added == 22
    idx = Store.open(store)
    rows = _table(idx.root)
    assert rows[first][1].startswith("edited by hand: ")


def test_cli_distill_hands_its_memories_to_the_index(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = Store.read_memory

    def counted(self: Store, mid: str) -> Any:
        read.append(mid)
        return real(self, mid)

    monkeypatch.setattr(Store, "read_memory", counted)
    r = memp("distill", "--policy", "trajectory", "--json")
    assert "22 embedded" in r.stderr, r
    assert read == []
    assert len(_table(store)) == 22


def test_a_cycle_hands_distills_memories_to_the_index(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memp_cli.update.cycle import run_cycle

    st = Store.open(store)
    read = _reads(st, monkeypatch)
    report = run_cycle(st, [], prune=False)
    assert report.distill is not None and report.distill.written
    assert not set(read) & set(report.distill.ids)
    assert len(_table(store)) == report.distill.written


def test_a_cycle_hands_distills_scan_to_the_index_when_reflect_and_prune_wrote_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_cli_distill import _count_scans

    from memp_cli.update.cycle import run_cycle

    st = Store.open(store)
    run_cycle(st, [], prune=False)  # the first: no index for the plan to compare with
    memp("ingest", DATA / "openai_webshop.jsonl")
    stats = _count_scans(monkeypatch)
    report = run_cycle(Store.open(store), [], prune=False)
    assert report.distill is not None and report.distill.written
    assert report.reflect is not None and report.reflect.written == 0
    assert len(stats) == 1  # the plan's: the sync took it over
    assert len(_table(store)) == len(Store.open(store).memory_ids())


@pytest.mark.parametrize("parallel_min", [1, 10**6])
def test_a_large_sync_adds_to_the_graph_on_every_core(
    store: Path, monkeypatch: pytest.MonkeyPatch, parallel_min: int
) -> None:
    import hnswlib

    from memp_cli.index import writer

    st = Store.open(store)
    distill(st, "trajectory")
    threads: list[int] = []
    real = hnswlib.Index.add_items

    def add_items(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(kwargs["num_threads"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hnswlib.Index, "add_items", add_items)
    monkeypatch.setattr(writer, "PARALLEL_ADD_MIN", parallel_min)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    emb = store_embedder(st)
    idx, rep = sync(st, emb)
    assert rep.embedded == 22 and threads  # (the keyword graph stays on one thread)
    assert (2 in threads) == (parallel_min == 1) and set(threads) <= {1, 2}
    graph = idx.hnsw
    assert graph is not None
    for mid in st.memory_ids():  # each memory is found by its own key text
        labels, _ = graph.knn_query(emb.embed([st.read_memory(mid).key_text()]), k=3)
        assert mid in [idx.id_of_label(int(lab)) for lab in labels[0]], mid
