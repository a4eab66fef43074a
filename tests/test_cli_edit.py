"""Editing memories: `memp edit` with MEMP_EDITOR, and hand edits the next command notices."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import editor_command, line_of, memory_ids, memp, write_script

from memp_cli.errors import ExitCode

NEW_KEY = "polish the brass zebra trophy with a soft cloth"

REWRITE_KEYS = f"""
import re, sys
p = sys.argv[1]
s = open(p, encoding="utf-8").read()
s = re.sub(r"keys = \\[[^\\]]*\\]", {json.dumps("keys = " + json.dumps([NEW_KEY]))}, s, count=1)
open(p, "w", encoding="utf-8").write(s)
"""


def _editor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> None:
    script = write_script(tmp_path / "editor.py", body)
    monkeypatch.setenv("MEMP_EDITOR", editor_command(script))


def _path(store: Path, mid: str) -> Path:
    return store / "memories" / f"{mid}.toml"


def _top(query: str) -> str:
    return memp("query", query, "-k", 1, "--min-score", -1).jsonl()[0]["id"]


# ---------------------------------------------------------------- memp edit


def test_edit_keys_bumps_version_and_reembeds(cli, built: Path, monkeypatch, tmp_path: Path) -> None:
    mid = memory_ids(built)[5]
    assert _top(NEW_KEY) != mid
    _editor(monkeypatch, tmp_path, REWRITE_KEYS)
    r = cli("edit", mid)
    assert f"saved {mid} (version 2)" in r.stderr
    assert "index: 1 embedded (hash), 40 memories indexed" in r.stderr
    assert r.stdout == ""
    shown = json.loads(memp("show", mid, "--json").stdout)
    assert shown["version"] == 2 and shown["keys"] == [NEW_KEY]
    assert _top(NEW_KEY) == mid
    events = [json.loads(x) for x in (built / "journal.jsonl").read_text().splitlines()]
    assert events[-2]["event"] == "memory.edit" and events[-2]["ids"] == [mid]


def test_edit_without_key_change_does_not_reembed(built: Path, monkeypatch, tmp_path: Path) -> None:
    mid = memory_ids(built)[0]
    _editor(
        monkeypatch,
        tmp_path,
        "import re, sys\np = sys.argv[1]\ns = open(p).read()\n"
        "open(p, 'w').write(re.sub(r'keywords = \\[[^\\]]*\\]', 'keywords = [\"sinkbasin\"]', s, count=1))\n",
    )
    r = memp("edit", mid)
    assert "(version 2)" in r.stderr
    assert "embedded" not in r.stderr
    assert json.loads(memp("show", mid, "--json").stdout)["keywords"] == ["sinkbasin"]


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (('kind = "trajectory"', 'kind = "banana"'), '"kind" must be one of trajectory, script, procedure'),
        (('kind = "trajectory"', 'kind = "trajectory'), "TOML syntax error"),
        (("\nversion = 1", '\nversion = "one"'), '"version" must be a positive whole number'),
        (("retrieved = 0", "retrieved = -3"), "stats.retrieved must be a non-negative whole number"),
    ],
)
def test_invalid_edit_leaves_the_file_alone(
    built: Path, monkeypatch, tmp_path: Path, replace: tuple[str, str], message: str
) -> None:
    mid = memory_ids(built)[2]
    path = _path(built, mid)
    before = path.read_bytes()
    old, new = replace
    _editor(
        monkeypatch,
        tmp_path,
        f"import sys\np = sys.argv[1]\ns = open(p).read()\nopen(p, 'w').write(s.replace({old!r}, {new!r}))\n",
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith(old.strip()))
    r = memp("edit", mid, expect=ExitCode.BAD_INPUT)
    assert f"{path} (your edit):{line}: {message}" in r.stderr
    assert path.read_bytes() == before
    assert r.stdout == ""


def test_edit_cannot_change_the_id(built: Path, monkeypatch, tmp_path: Path) -> None:
    mid = memory_ids(built)[2]
    path = _path(built, mid)
    before = path.read_bytes()
    _editor(
        monkeypatch,
        tmp_path,
        f"import sys\np = sys.argv[1]\ns = open(p).read()\nopen(p, 'w').write(s.replace({mid!r}, 'mother', 1))\n",
    )
    r = memp("edit", mid, expect=ExitCode.BAD_INPUT)
    assert f"{path} (your edit):" in r.stderr and "id" in r.stderr
    assert path.read_bytes() == before
    assert memory_ids(built) == sorted(memory_ids(built))
    assert "mother" not in memory_ids(built)


def test_unchanged_edit_is_a_no_op(built: Path, monkeypatch) -> None:
    mid = memory_ids(built)[1]
    path = _path(built, mid)
    before = path.read_bytes()
    journal = (built / "journal.jsonl").read_bytes()
    monkeypatch.setenv("MEMP_EDITOR", "true")
    r = memp("edit", mid)
    assert "no changes" in r.stderr
    assert path.read_bytes() == before
    assert (built / "journal.jsonl").read_bytes() == journal


def test_editor_failure_changes_nothing(built: Path, monkeypatch) -> None:
    mid = memory_ids(built)[1]
    before = _path(built, mid).read_bytes()
    monkeypatch.setenv("MEMP_EDITOR", "false")
    r = memp("edit", mid, expect=ExitCode.BAD_INPUT)
    assert f"{_path(built, mid)}: the editor exited with status 1" in r.stderr
    assert _path(built, mid).read_bytes() == before


def test_edit_missing_and_invalid_ids(built: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEMP_EDITOR", "true")
    memp("edit", "mnothere", expect=ExitCode.NOT_FOUND)
    memp("edit", "../../etc/passwd", expect=ExitCode.NOT_FOUND)


# --------------------------------------------------------------- hand edits


def test_keys_changed_by_hand_are_reembedded_on_the_next_query(built: Path) -> None:
    mid = memory_ids(built)[7]
    path = _path(built, mid)
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"keys = \[[^\]]*\]", f'keys = ["{NEW_KEY}"]', text, count=1), encoding="utf-8")
    r = memp("query", NEW_KEY, "-k", 1)
    assert r.jsonl()[0]["id"] == mid
    assert "index: 1 embedded (hash)" in r.stderr


def test_deleted_memory_file_leaves_the_results(built: Path) -> None:
    top = memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1).jsonl()
    victim = top[0]["id"]
    _path(built, victim).unlink()
    hits = memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1).jsonl()
    assert victim not in {h["id"] for h in hits}
    assert len(hits) == 39
    (st,) = memp("stats", "--json").jsonl()
    assert st["index"]["indexed"] == 39 and st["index"]["fresh"] is True


def test_new_memory_file_written_by_hand_is_found(built: Path) -> None:
    src = _path(built, memory_ids(built)[0]).read_text(encoding="utf-8")
    old_id = memory_ids(built)[0]
    text = src.replace(old_id, "my-own-memory")
    text = re.sub(r"keys = \[[^\]]*\]", f'keys = ["{NEW_KEY}"]', text, count=1)
    _path(built, "my-own-memory").write_text(text, encoding="utf-8")
    assert _top(NEW_KEY) == "my-own-memory"


def _break(path: Path) -> int:
    """Make a memory file invalid TOML; -> the line of the error."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('kind = "trajectory"', 'kind = "trajectory'), encoding="utf-8")
    return line_of(path, 'kind = "trajectory')


def test_broken_memory_file(built: Path) -> None:
    mid = memory_ids(built)[4]
    path = _path(built, mid)
    line = _break(path)
    where = f"{path}:{line}: TOML syntax error"

    # The next query still works and warns with path:line.
    r = memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1)
    assert len(r.jsonl()) == 39
    assert f"memp: warning: {where}" in r.stderr

    # list prints the good ones and exits 3.
    r = memp("list", expect=ExitCode.BAD_INPUT)
    assert len(r.jsonl()) == 39
    assert where in r.stderr and "1 memory file could not be read" in r.stderr

    # show on the broken one names path:line.
    r = memp("show", mid, expect=ExitCode.BAD_INPUT)
    assert where in r.stderr and r.stdout == ""

    # doctor exits 5 naming path:line; --fix cannot fix it.
    r = memp("doctor", expect=ExitCode.STORE)
    assert any(f["what"].startswith(where) and f["level"] == "error" for f in r.jsonl())
    memp("doctor", "--fix", expect=ExitCode.STORE)

    (st,) = memp("stats", "--json").jsonl()
    assert st["broken_memory_files"] == 1 and st["memories"] == 39


def test_broken_file_fixed_in_place_comes_back(built: Path) -> None:
    """Regression: a broken file repaired in place stayed out of the index for good."""
    mid = memory_ids(built)[4]
    path = _path(built, mid)
    good = path.read_bytes()
    _break(path)
    assert len(memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1).jsonl()) == 39
    path.write_bytes(good)  # in place: the directory's mtime does not change
    hits = memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1).jsonl()
    assert len(hits) == 40 and mid in {h["id"] for h in hits}
    memp("doctor")


def test_invalid_memory_values_name_the_line(built: Path) -> None:
    mid = memory_ids(built)[6]
    path = _path(built, mid)
    path.write_text(path.read_text().replace("success = ", 'success = "yes" #'), encoding="utf-8")
    line = line_of(path, "success = ")
    r = memp("show", mid, expect=ExitCode.BAD_INPUT)
    assert f'{path}:{line}: "success" must be true or false' in r.stderr


def test_memory_file_with_mismatched_name(built: Path) -> None:
    mid = memory_ids(built)[6]
    _path(built, mid).rename(_path(built, "renamed"))
    r = memp("doctor", expect=ExitCode.STORE)
    what = [f["what"] for f in r.jsonl()]
    assert any("renamed.toml" in w and "they must agree" in w for w in what)


def test_equal_size_edit_in_the_same_second_is_reembedded(built: Path) -> None:
    """An edit that keeps the file's size ("heat" -> "cool") and nearly its mtime is still seen."""
    old_key, new_key = (
        "heat some apple and put it in garbagecan.",
        "cool some apple and put it in garbagecan.",
    )
    (mid,) = [m for m in memory_ids(built) if f'"{old_key}"' in _path(built, m).read_text(encoding="utf-8")]
    assert _top(new_key) != mid
    path = _path(built, mid)
    st = path.stat()
    data = path.read_bytes()
    keys_at = data.index(b"keys = [")
    edited = data[:keys_at] + data[keys_at:].replace(old_key.encode(), new_key.encode(), 1)
    assert len(edited) == len(data) and edited != data
    with open(path, "r+b") as f:  # in place: the directory's mtime does not change
        f.write(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert path.stat().st_size == st.st_size
    r = memp("query", new_key, "-k", 1)
    assert r.jsonl()[0]["id"] == mid
    assert "index: 1 embedded (hash)" in r.stderr


def test_edit_keeps_the_comments_of_the_file_and_of_the_edit(
    built: Path, monkeypatch, tmp_path: Path
) -> None:
    mid = memory_ids(built)[3]
    path = _path(built, mid)
    text = path.read_text(encoding="utf-8")
    text = "# top: checked by hand\n\n" + text
    text = text.replace('\nkind = "trajectory"\n', '\nkind = "trajectory"  # inline: keep me\n', 1)
    text = text.replace("[stats]\n", "[stats]\n# inside a table: keep me too\n", 1)
    path.write_text(text, encoding="utf-8")  # a hand edit, before `memp edit`
    draft = tmp_path / "draft.toml"
    _editor(
        monkeypatch,
        tmp_path,
        "import re, shutil, sys\np = sys.argv[1]\ns = open(p).read()\n"
        "s = re.sub(r'keywords = \\[[^\\]]*\\]', '# my keyword\\nkeywords = [\"sinkbasin\"]', s, count=1)\n"
        f"open(p, 'w').write(s)\nshutil.copy(p, {str(draft)!r})\n",
    )
    memp("edit", mid)
    edited = draft.read_text(encoding="utf-8").splitlines()
    saved = path.read_text(encoding="utf-8").splitlines()
    for comment in (
        "# top: checked by hand",
        "# inline: keep me",
        "# inside a table: keep me too",
        "# my keyword",
    ):
        assert any(comment in line for line in saved), comment
    # Only the lines memp owns changed: the version and the time of the update.
    changed = [(a, b) for a, b in zip(edited, saved, strict=True) if a != b]
    assert [a.split(" =")[0] for a, _ in changed] == ["version", "updated"]
    assert ("version = 1", "version = 2") in changed
    assert json.loads(memp("show", mid, "--json").stdout)["keywords"] == ["sinkbasin"]
