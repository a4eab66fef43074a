"""`memp list --json` writes each memory's row as it reads it: at a million memories the command
held every parsed memory before writing the first line (1.3 GB and growing after 13 minutes,
no output yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import memory_ids, memp

from memp_cli.model.memory import Memory
from memp_cli.store import Store


def test_list_json_streams_its_rows(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real_iter = Store.iter_memories

    def counting(self: Store):  # type: ignore[no-untyped-def]
        for m in real_iter(self):
            read.append(getattr(m, "id", "?"))
            yield m

    monkeypatch.setattr(Store, "iter_memories", counting)
    read_at_row: list[int] = []
    real_row = Memory.list_row

    def row(self: Memory):  # type: ignore[no-untyped-def]
        read_at_row.append(len(read))
        return real_row(self)

    monkeypatch.setattr(Memory, "list_row", row)
    rows = memp("list", "--json").jsonl()
    ids = memory_ids(built)
    assert [r["id"] for r in rows] == ids and len(ids) > 10
    assert read_at_row == list(range(1, len(ids) + 1))  # row i written once memory i is read
    # a used memory's ledger outcomes are still counted (the ledger is read once, up front)
    memp("feedback", ids[2], "--success")
    stats = [r["stats"] for r in memp("list", "--json").jsonl()]
    assert stats[2]["retrieved"] == 1 and stats[2]["successes"] == 1
    assert all(s["retrieved"] == 0 for i, s in enumerate(stats) if i != 2)
