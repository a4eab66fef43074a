"""An interrupted sync (Ctrl-C, a failing embedder) keeps the embedding it finished: the next
sync embeds only the rest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import memp
from test_index_format import HEAT, _memories, _same_ranking

from memp_cli import index as index_mod
from memp_cli.backends.embedders.hashing import HashEmbedder
from memp_cli.index import writer
from memp_cli.model.memory import load_memory_file
from memp_cli.retrieve.retriever import Retriever
from memp_cli.store import Store

BATCH = 8


class Interrupting(HashEmbedder):
    """The hash embedder, counting the texts it embeds; its ``fail_at``-th call raises
    KeyboardInterrupt (a Ctrl-C in the middle of embedding)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(256)
        self.fail_at = fail_at
        self.calls = 0
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.texts.extend(texts)
        return super().embed(texts)


def _hits(st: Store, query: str) -> list[tuple[str, float]]:
    idx = index_mod.load(st)
    assert idx is not None
    return [(h.memory.id, h.score) for h in Retriever(idx, HashEmbedder(256), k=8).search([query])[0]]


@pytest.mark.parametrize("rebuild", [False, True])
def test_an_interrupted_sync_keeps_what_it_embedded(
    store: Path, monkeypatch: pytest.MonkeyPatch, rebuild: bool
) -> None:
    monkeypatch.setattr(writer, "EMBED_BATCH", BATCH)
    st = Store.open(store)
    st.save_memories(_memories(20), event="test")
    index_mod.sync(st, HashEmbedder(256))
    # 30 new memories and the keys of 2 old ones changed: 32 texts to embed (all 50 on a rebuild)
    changed = _memories(2, seed=9)
    st.save_memories([*_memories(30, start=100), *changed], event="test")
    expected = 50 if rebuild else 32
    # call 1 embeds the new keywords, call 2 the first batch of memories, call 3 is Ctrl-C
    first = Interrupting(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        index_mod.sync(st, first, rebuild=rebuild)
    key_texts = {load_memory_file(p).key_text() for p in st.memories_dir.glob("*.toml")}
    assert len([t for t in first.texts if t in key_texts]) == BATCH
    # what was embedded is a complete generation: readable, judged stale, nothing broken
    state = index_mod.read_state(st)
    assert state is not None and len(state.ids) == (BATCH if rebuild else 50 - (expected - BATCH))
    assert index_mod.load(st) is not None
    code, findings = _doctor()
    assert code == 0 and [f["level"] for f in findings] == ["warning"]
    assert "older than some memory files" in findings[0]["what"] and "memp index sync" in findings[0]["fix"]
    last = [e for e in st.read_journal() if e["event"] == "index.sync"][-1]
    assert last["interrupted"] and last["embedded"] == BATCH and last["pending"] == expected - BATCH
    # the next sync embeds only the rest
    second = Interrupting()
    _, report = index_mod.sync(st, second)
    assert len([t for t in second.texts if t in key_texts]) == expected - BATCH and not report.rebuilt
    assert report.embedded == expected - BATCH
    assert sorted(index_mod.read_state(st).ids) == sorted(p.stem for p in st.memories_dir.glob("*.toml"))  # type: ignore[union-attr]
    # and the index answers as one built in a single go
    clean = Store.open(store)
    reference = _hits(clean, HEAT)
    index_mod.sync(clean, HashEmbedder(256), rebuild=True)
    _same_ranking(_hits(clean, HEAT), reference)
    assert _doctor() == (0, [])


def _doctor() -> tuple[int, list[dict[str, str]]]:
    import json

    r = memp("doctor", expect=None)
    return r.code, [json.loads(line) for line in r.stdout.splitlines()]
