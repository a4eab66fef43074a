"""The house rules that a reader can check in the tree: where each kind of code lives."""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "memp_cli"


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p: Path) -> str:
    return str(p.relative_to(PKG.parent))


def test_the_three_parts_of_mem_p_are_visible() -> None:
    for part in ("build", "retrieve", "update"):
        assert (PKG / part / "__init__.py").exists(), part


def test_no_typer_or_rich_outside_the_cli() -> None:
    bad = [
        _rel(p)
        for p in _modules()
        if "cli" not in p.relative_to(PKG).parts[:1]
        and re.search(r"^\s*(import|from) (typer|rich)\b", p.read_text(), re.M)
    ]
    assert bad == []


def test_only_the_store_touches_the_stores_primary_files() -> None:
    """Memories, trajectories and the journal are reached through the store's methods
    (memp_cli/store/protocol.py), so a second backend changes nothing outside store/."""
    pattern = re.compile(r"\.(memories_dir|trajectories_dir|journal_path)\b")
    bad = [
        f"{_rel(p)}:{n}"
        for p in _modules()
        if p.relative_to(PKG).parts[0] != "store"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert bad == []


def test_the_library_is_typed_against_the_store_protocol() -> None:
    """Build, Retrieve, Update and the index take a MemoryStore, not the file store."""
    bad = [
        _rel(p)
        for p in _modules()
        if p.relative_to(PKG).parts[0] in ("build", "retrieve", "update", "index")
        and re.search(r"^\s*from memp_cli\.store import .*\bStore\b", p.read_text(), re.M)
    ]
    assert bad == []


def test_no_module_is_too_long() -> None:
    long = {_rel(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > 620}
    assert long == {}
