"""The query key's ranking: the procedure part, family pooling, and the index that carries them."""

from __future__ import annotations

from pathlib import Path

import orjson
from conftest import memp, state_json_before_7

from memp_cli import index as index_mod
from memp_cli.model.memory import Memory
from memp_cli.store import Store

STEPS = [{"action": "go to shelf 1", "observation": "You arrive at shelf 1."}]
ONE_SIGNAL = ("--procedure-weight", "0", "--family-weight", "0")


def _memory(mid: str, task: str, task_type: str, title: str) -> Memory:
    return Memory(
        id=mid,
        kind="procedure",
        task=task,
        task_type=task_type,
        success=True,
        keys=[task],
        steps=STEPS,
        script={"title": title, "steps": ["go to {receptacle}"]},
    )


HOT = "put a hot {object} in {receptacle}"
PLAIN = "put a {object} in {receptacle}"


def _household(store: Path) -> Store:
    st = Store.open(store)
    st.save_memories(
        [
            _memory("mhot00000001", "put a hot mug in sidetable.", "heat", HOT),
            _memory("mhot00000002", "put a hot cup in sidetable.", "heat", HOT),
            _memory("mput00000001", "put a pen in shelf.", "put", PLAIN),
            _memory("mput00000002", "put a cup in drawer.", "put", PLAIN),
            _memory("mput00000003", "put a book in desk.", "put", PLAIN),
        ],
        event="test",
    )
    return st


def _top(*args: str | int) -> list[str]:
    return [h["id"] for h in memp("query", *args, "--json", "--min-score", "-1", "--no-collapse").jsonl()]


def test_what_is_done_outranks_what_it_is_done_to(store: Path) -> None:
    """ "put a mug in sidetable." shares its object and receptacle with a heating task; its
    procedure (put, no heating) is another memory's, and that one comes first."""
    _household(store)
    task = "put a mug in sidetable."
    assert _top(task, *ONE_SIGNAL)[0] == "mhot00000001"  # the text alone: the look-alike
    assert _top(task)[0].startswith("mput")  # the default
    explain = memp("query", task, "--explain", "--json", "-k", 1, "--no-collapse").jsonl()[0]["explain"]
    assert explain["procedure_text"] == "put a in" and explain["family"] == "put"
    assert explain["procedure"] > 0 and explain["family_score"] > 0


def test_a_family_outweighs_a_look_alike(store: Path) -> None:
    """With the procedure part alone the closest text still wins; pooling each family's best
    scores puts the procedure three memories agree on first."""
    _household(store)
    task = "put the mug on the sidetable"
    assert _top(task, "--family-weight", "0")[0] == "mhot00000001"
    assert [m[:4] for m in _top(task)] == ["mput", "mput", "mput"]


def _as_format_3(st: Store) -> None:
    """Rewrite the index as memp of index format 3 left it (no procedure BM25, no families)."""
    state_path = st.index_dir / "state.json"
    current = index_mod.read_state(st)
    assert current is not None
    d = state_json_before_7(st.index_dir, 3)
    gen = d["generation"]
    for key in ("procedure", "family_names", "family_codes"):
        d.pop(key)
    state_path.write_bytes(orjson.dumps(d))
    files = st.index_dir / f"files-{gen}.json"
    f = orjson.loads(index_mod.state.load_files(st, current).to_json(gen))  # as format 3 wrote it
    for p in st.index_dir.glob("records-*"):  # format 7's
        p.unlink()
    f.update(index_version=3)
    f.pop("procedures")
    files.write_bytes(orjson.dumps(f))
    for p in st.index_dir.glob(f"procedure-{gen}.*"):
        p.unlink()


def test_an_index_from_format_3_is_upgraded_without_embedding(built: Path) -> None:
    st = Store.open(built)
    memp("index", "sync")
    before = _top("heat some egg and put it in garbagecan.")
    _as_format_3(st)
    old = index_mod.read_state(st)
    assert old is not None and old.version == 3
    # the next command upgrades it (procedure BM25, families) and ranks as before the rewrite
    assert _top("heat some egg and put it in garbagecan.") == before
    state = index_mod.read_state(st)
    assert state is not None and state.version == index_mod.INDEX_VERSION == 8
    assert state.procedure is not None and set(state.families) == {
        "put",
        "heat",
        "cool",
        "clean",
        "examine",
        "puttwo",
    }
    last = [e for e in st.read_journal() if e["event"] == "index.sync"][-1]
    assert last["embedded"] == 0 and last["updated"] == 0  # nothing embedded, no "hand edit" noticed
    assert memp("doctor").stdout == ""
