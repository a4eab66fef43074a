"""One bad file never takes the store down (issue 12): a memory file memp cannot use is
reported by path and left out; the other memories keep working. Likewise one bad JSONL line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import memory_ids, memp, memp_subprocess, stored_trajectories

from memp_cli.errors import ExitCode
from memp_cli.model.limits import MAX_MEMORY_FILE_BYTES


def _mem(store: Path, mid: str) -> Path:
    return store / "memories" / f"{mid}.toml"


def _replace(old: str, new: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return edit


def _append(extra: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        # top-level keys must come before the first table
        head, sep, rest = text.partition("\n[")
        path.write_text(head + "\n" + extra + "\n" + sep + rest, encoding="utf-8")

    return edit


def _deep(path: Path) -> None:
    _append("deep = " + "[" * 500 + "]" * 500)(path)


def _deep_but_parses(path: Path) -> None:
    _append("deep = " + "[" * 300 + "]" * 300)(path)  # tomllib reads it; orjson/tomli_w cannot write it


def _script(kind_script: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        _replace('kind = "trajectory"', 'kind = "procedure"')(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f'\n[script]\ntitle = "heat a thing"\n{kind_script}\n')

    return edit


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _symlink_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + "#" * MAX_MEMORY_FILE_BYTES)


CASES: dict[str, Callable[[Path], None]] = {
    "deep_array": _deep,
    "deep_array_that_parses": _deep_but_parses,
    "directory": _directory,
    "symlink_dev_zero": _symlink_dev_zero,
    "too_big": _huge,
    "script_steps_not_list": _script("steps = 5"),
    "pitfalls_not_list": _script('steps = ["a"]\npitfalls = "hot"'),
    "preconditions_not_strings": _script('steps = ["a"]\npreconditions = [1, 2]'),
    "huge_stat": _replace("successes = 0", "successes = 99999999999999999999999"),
    "huge_version": _replace("\nversion = 1", "\nversion = 99999999999999999999999"),
    "many_keywords": _append("keywords_extra = 0"),  # replaced below
    "many_keys": _replace("keys = [\n", "keys = [\n" + "".join(f'    "k{i}",\n' for i in range(101))),
}


def _many_keywords(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    words = ", ".join(f'"w{i}"' for i in range(100_000))
    new, n = re.subn(r"^keywords = \[.*?^\]", f"keywords = [{words}]", text, count=1, flags=re.M | re.S)
    assert n == 1
    path.write_text(new, encoding="utf-8")


CASES["many_keywords"] = _many_keywords


@pytest.mark.parametrize("case", list(CASES))
def test_one_bad_memory_file_is_left_out(built: Path, case: str) -> None:
    ids = memory_ids(built)
    mid = ids[4]
    path = _mem(built, mid)
    CASES[case](path)

    r = memp("list", "--json", expect=ExitCode.BAD_INPUT)
    listed = {m["id"] for m in r.jsonl()}
    assert listed == set(ids) - {mid}
    assert str(path) in r.stderr and "1 memory file could not be read" in r.stderr

    r = memp("query", "heat", "-k", 40, "--no-collapse", "--min-score", -1, "--format", "prompt")
    assert f"memp: warning: {path}" in r.stderr

    r = memp("doctor", expect=ExitCode.STORE)
    errors = [f for f in r.jsonl() if f["level"] == "error"]
    assert errors and all(f["what"].startswith(str(path)) for f in errors), errors


def test_a_fifo_is_left_out_without_blocking(built: Path) -> None:
    mid = memory_ids(built)[4]
    path = _mem(built, mid)
    path.unlink()
    os.mkfifo(path)
    r = memp_subprocess("list", expect=ExitCode.BAD_INPUT, timeout=30)
    assert str(path) in r.stderr and len(r.jsonl()) == 39
    r = memp_subprocess("query", "heat", "--format", "prompt", timeout=30)
    assert f"memp: warning: {path}: is a FIFO" in r.stderr
    r = memp_subprocess("doctor", expect=ExitCode.STORE, timeout=30)
    assert any(f["what"].startswith(f"{path}: is a FIFO") for f in r.jsonl())
    r = memp_subprocess("distill", "--policy", "trajectory", "--with-failures", timeout=30)
    assert f"memp: warning: {path}: is a FIFO" in r.stderr
    for cmd in ("show", "edit"):  # the one bad memory itself: refused, not read
        r = memp_subprocess(cmd, mid, expect=ExitCode.BAD_INPUT, timeout=30)
        assert f"{path}: is a FIFO, not a regular file" in r.stderr


def test_a_deeply_nested_jsonl_line_is_one_bad_line(store: Path, tmp_path: Path) -> None:
    good = {"task": "heat an egg", "steps": [{"action": "go to stove"}], "success": True}
    lines = [
        json.dumps(good),
        "[" * 100_000,
        json.dumps({**good, "task": "cool an egg", "extra": json.loads("[" * 600 + "]" * 600)}),
        json.dumps({**good, "task": "wash an egg"}),
    ]
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = memp("ingest", f, expect=ExitCode.BAD_INPUT)
    assert f"{f}:2:" in r.stderr and f"{f}:3:" in r.stderr
    assert {t["task"] for t in stored_trajectories(store)} == {"heat an egg", "wash an egg"}


def test_memp_reads_back_a_memory_of_a_very_long_task(store: Path, tmp_path: Path) -> None:
    """The limits never refuse what memp itself writes: a task (and so its key) as long as an
    agent's whole system prompt, with a long URL-like word among its keywords."""
    task = "put a clean mug in the microwave " + "x" * 60_000 + " " + " ".join(["context"] * 20_000)
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"task": task, "steps": [{"action": "go to mug"}], "success": True}) + "\n")
    memp("ingest", f)
    memp("distill", "--policy", "trajectory")
    (m,) = memp("list", "--json").jsonl()
    assert memp("show", m["id"], "--json").jsonl()[0]["task"] == task
    memp("doctor")


def test_read_ahead_threads_give_what_one_thread_gives(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large folder's memory files are read a window ahead by a few threads: the memories
    and the errors come out the same and in the same order as one thread reading them, every
    bad file among them is still one error, and no more than the window is read ahead."""
    import threading

    import memp_cli.store as store_mod
    from memp_cli.errors import MemoryFileError
    from memp_cli.store import Store

    ids = memory_ids(built)
    for mid, edit in zip(ids[1::2], CASES.values(), strict=False):  # every bad kind at once
        edit(_mem(built, mid))
    os.unlink(_mem(built, ids[-2]))
    os.mkfifo(_mem(built, ids[-2]))
    s = Store.open(built)

    def outcome(items: list[object]) -> list[tuple[str, str]]:
        return [
            ("error", str(m)) if isinstance(m, MemoryFileError) else ("memory", m.id)  # type: ignore[attr-defined]
            for m in items
        ]

    one = outcome(list(s.iter_memories()))
    assert sum(kind == "error" for kind, _ in one) >= 10 and len(one) == len(ids)

    threads: set[str] = set()
    in_flight = [0, 0]  # now, most
    real = store_mod._read_or_error

    def read(path: Path) -> object:
        threads.add(threading.current_thread().name)
        return real(path)

    parse = store_mod._parse_or_error

    def parsed(raw: object, path: Path) -> object:
        in_flight[0] -= 1
        return parse(raw, path)  # type: ignore[arg-type]

    def submit_counting(path: Path) -> object:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        return read(path)

    monkeypatch.setattr(store_mod, "READ_THREADS_MIN", 1)
    monkeypatch.setattr(store_mod, "READ_AHEAD", 5)
    monkeypatch.setattr(store_mod, "_read_or_error", submit_counting)
    monkeypatch.setattr(store_mod, "_parse_or_error", parsed)
    assert outcome(list(s.iter_memories())) == one
    assert threads and all(t.startswith("memp-read") for t in threads)
    assert in_flight[1] <= 6  # the window (5) and the one just submitted


def test_a_memory_file_is_read_at_its_size_not_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read asks for the file's size and one byte more (to see it grew), not a buffer of the
    16 MB limit: that allocation was most of a read's cost over 900k files. A file that grows
    past what fstat said is still read whole, and one over the limit is still refused."""
    from memp_cli.errors import MemoryFileError
    from memp_cli.model import memory as mem_mod

    asked: list[int] = []
    real = os.read

    def read(fd: int, n: int) -> bytes:
        asked.append(n)
        return real(fd, n)

    monkeypatch.setattr(mem_mod.os, "read", read)
    p = tmp_path / "m.toml"
    p.write_bytes(b"x" * 2000)
    assert mem_mod.read_memory_bytes(p) == b"x" * 2000
    assert asked[0] == 2001 and max(asked) < 1 << 17
    real_fstat = os.fstat
    monkeypatch.setattr(
        mem_mod.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:]))
    )
    assert mem_mod.read_memory_bytes(p) == b"x" * 2000  # grew since fstat: still read whole
    p.write_bytes(b"x" * (MAX_MEMORY_FILE_BYTES + 5))
    with pytest.raises(MemoryFileError, match="over the"):
        mem_mod.read_memory_bytes(p)  # fstat says 10 bytes; the read finds it over the limit


@pytest.mark.parametrize("threaded", [False, True])
def test_a_memory_removed_after_the_listing_is_one_error(
    built: Path, monkeypatch: pytest.MonkeyPatch, threaded: bool
) -> None:
    """A memory file deleted between the folder's listing and its read (a concurrent forget)
    is reported by path like any file memp cannot use; the others still come out."""
    import memp_cli.store as store_mod
    from memp_cli.errors import MemoryFileError
    from memp_cli.store import Store

    s = Store.open(built)
    ids = memory_ids(built)
    monkeypatch.setattr(Store, "memory_ids", lambda self: sorted([*ids, "mgone00000000"]))
    if threaded:
        monkeypatch.setattr(store_mod, "READ_THREADS_MIN", 1)
    out = list(s.iter_memories())
    errors = [m for m in out if isinstance(m, MemoryFileError)]
    assert len(out) == len(ids) + 1 and len(errors) == 1
    assert str(_mem(built, "mgone00000000")) in str(errors[0]) and "no such memory file" in str(errors[0])
