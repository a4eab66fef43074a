"""memp_cli.model.tomlwrite renders what tomli_w renders, byte for byte."""

from __future__ import annotations

import datetime
import tomllib
from typing import Any

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from memp_cli.model import tomlwrite
from memp_cli.model.memory import Memory, Provenance

_piece = st.characters(min_codepoint=0, max_codepoint=0x2FF) | st.sampled_from(
    ['"', "\\", "\r\n", "\n", "\x7f"]
)
_text = st.lists(_piece, max_size=40).map("".join) | st.text(max_size=120)
_key = st.text(min_size=0, max_size=12) | st.sampled_from(["a", "steps", "a-b_C9", "x y", ""])
_scalar = _text | st.integers() | st.booleans()
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_key, inner, max_size=4),
    max_leaves=20,
)
# Arrays of tables, short (inline) and long (as [[name]] tables), as a memory's steps are.
_steps = st.lists(
    st.dictionaries(st.sampled_from(["action", "observation", "x"]), _text, max_size=3), max_size=4
)


def _same(data: dict[str, Any]) -> None:
    assert tomlwrite.dumps(data) == tomli_w.dumps(data, multiline_strings=True)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(_key, _value | _steps, max_size=6))
def test_documents_render_as_tomli_w_renders_them(data: dict[str, Any]) -> None:
    _same(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_key, st.dictionaries(_key, _value | _steps, max_size=4), max_size=4))
def test_nested_tables_render_as_tomli_w_renders_them(data: dict[str, Any]) -> None:
    _same(data)


def test_a_memory_renders_as_tomli_w_renders_it_and_reads_back() -> None:
    long = "You arrive at dresser 1. On the dresser 1, you see " + ", ".join(f"a cd {i}" for i in range(20))
    m = Memory(
        id="m0123456789ab",
        kind="trajectory",
        task='put a "box" in\\ the hamper',
        keys=["put a box in hamper"],
        keywords=["box", "hamper"],
        steps=[
            {"action": "go to dresser 1", "observation": long},
            {"action": "look", "observation": "a\nb\r\nc"},
        ],
        provenance=Provenance(trajectories=["t1"], policy="trajectory"),
    )
    data = m.to_dict()
    _same(data)
    _same({**data, "steps": [{"action": "look", "observation": "short"}]})  # fits: an inline array
    assert tomllib.loads(tomlwrite.dumps(data)) == tomllib.loads(tomli_w.dumps(data, multiline_strings=True))


def test_other_types_are_left_to_tomli_w() -> None:
    data = {"a": 1.5, "b": {"when": datetime.date(2026, 11, 30)}, "c": [1, 2.0]}
    _same(data)
    try:
        tomli_w.dumps({"a": object()})
    except TypeError as e:
        expected = str(e)
    try:
        tomlwrite.dumps({"a": object()})
    except TypeError as e:
        assert str(e) == expected
    else:
        raise AssertionError("no TypeError")
