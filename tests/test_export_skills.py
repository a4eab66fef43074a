"""`memp export skills DIR`: Agent Skills from task families, valid by the spec's rules, written
idempotently, and only ever into folders memp wrote; `--check` validates any skills folder."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import _ENV_VARS, REPO, memp

from memp_cli.integrations.skills import MANIFEST, plan_skills, slug
from memp_cli.integrations.skillspec import (
    ALLOWED_KEYS,
    MAX_BODY_LINES,
    NAME_RE,
    check_skill,
    clean_value,
    parse_frontmatter,
)
from memp_cli.model.memory import Memory, Provenance, Stats, load_memory_file, write_memory_file

EXAMPLES = REPO / "examples" / "alfworld" / "train.jsonl"


@pytest.fixture(scope="module")
def _proc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled ALFWorld examples, distilled with the store's default policy
    (proceduralization, builtin model), failed runs too: once per module."""
    root = tmp_path_factory.mktemp("skills") / ".memp"
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV_VARS:
            mp.delenv(var, raising=False)
        memp("--store", root, "init", "--embedder", "hash")
        memp("--store", root, "ingest", EXAMPLES)
        memp("--store", root, "distill", "--with-failures")
    return root


@pytest.fixture
def proc(store_dir: Path, _proc_template: Path) -> Path:
    shutil.copytree(_proc_template, store_dir)
    return store_dir


def memories(store_dir: Path) -> list[Memory]:
    return [load_memory_file(p) for p in sorted((store_dir / "memories").glob("*.toml"))]


def reference_split(text: str) -> dict[str, Any]:
    """The frontmatter as skills-ref reads it: split at the first two "---", then YAML."""
    assert text.startswith("---")
    parts = text.split("---", 2)
    assert len(parts) == 3
    data = yaml.safe_load(parts[1])
    assert isinstance(data, dict)
    return data


def assert_valid_skill(folder: Path) -> dict[str, Any]:
    """Every rule of the spec, checked on the bytes: by PyYAML (as skills-ref splits the file)
    and by memp's own reader, which must agree."""
    text = (folder / "SKILL.md").read_bytes().decode("utf-8")
    data = reference_split(text)
    assert data == parse_frontmatter(text).fields
    assert set(data) <= set(ALLOWED_KEYS), data.keys()
    name, desc = data["name"], data["description"]
    assert isinstance(name, str) and NAME_RE.match(name) and len(name) <= 64
    assert "--" not in name and name == folder.name
    assert isinstance(desc, str) and desc.strip() and len(desc) <= 1024
    meta = data.get("metadata", {})
    assert isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    body = text.split("---", 2)[2]
    assert len(body.strip("\n").split("\n")) < MAX_BODY_LINES
    assert check_skill(folder) == []
    return data


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------ export


def test_one_valid_skill_per_family(proc: Path, tmp_path: Path) -> None:
    out = tmp_path / "skills"
    run = memp("export", "skills", out)
    rows = run.jsonl()
    mems = memories(proc)
    families = Counter(m.family() for m in mems)
    assert {r["family"] for r in rows} == set(families)  # one skill per family, every one here
    assert len(rows) == len(families) == 6
    assert all(r["action"] == "written" for r in rows)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(r["name"] for r in rows)
    for r in rows:
        data = assert_valid_skill(out / r["name"])
        meta = data["metadata"]
        members = [m for m in mems if m.family() == r["family"]]
        assert meta["memp-family"] == r["family"]
        assert meta["memp-runs"] == str(len(members))
        assert meta["memp-runs-succeeded"] == str(sum(m.success is True for m in members))
        assert meta["memp-runs-failed"] == str(sum(m.success is False for m in members))
        assert meta["memp-versions"].split() == sorted(f"{m.id}@{m.version}" for m in members)
        best = next(m for m in members if m.id == meta["memp-memory"])
        assert best.success is True and meta["memp-version"] == str(best.version)
        rate = sum(m.success is True for m in members) / len(members)
        assert meta["memp-success-rate"] == f"{rate:.2f}"
        # the description is the family's, not one run's: several of its tasks are quoted
        quoted = [m.task for m in members if f'"{m.task}"' in data["description"]]
        assert len(quoted) >= 3
        body = (out / r["name"] / "SKILL.md").read_text(encoding="utf-8")
        for section in ("## Procedure", "## Pitfalls", "## Example", "## Provenance", "Variables"):
            assert section in body
        assert "1. " in body and "{object}" in body
        failed = [m for m in members if m.success is False]
        assert f"A run of this task failed (memory `{failed[0].id}`" in body
    memp("export", "skills", "--check", out)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert sorted(manifest["skills"]) == folders
    for name, entry in manifest["skills"].items():
        assert entry["sha256"] == hashlib.sha256((out / name / "SKILL.md").read_bytes()).hexdigest()


def test_same_store_same_bytes(proc: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    memp("export", "skills", a)
    memp("export", "skills", b)
    first = tree(a)
    assert first == tree(b)
    assert not any(re.search(rb"20\d\d-\d\d-\d\dT", data) for data in first.values())  # no timestamps
    again = memp("export", "skills", a).jsonl()
    assert {r["action"] for r in again} == {"unchanged"}
    assert tree(a) == first


def test_forgotten_family_is_removed_and_an_edit_updates(proc: Path, tmp_path: Path) -> None:
    out = tmp_path / "skills"
    rows = {r["family"]: r for r in memp("export", "skills", out).jsonl()}
    before = tree(out)
    heat = [m.id for m in memories(proc) if m.family() == "heat"]
    memp("forget", *heat, "-m", "test")
    after = {r["name"]: r for r in memp("export", "skills", out).jsonl()}
    gone = rows["heat"]["name"]
    assert after[gone]["action"] == "removed"
    assert not (out / gone).exists()
    assert gone not in json.loads((out / MANIFEST).read_text(encoding="utf-8"))["skills"]
    assert {r["action"] for n, r in after.items() if n != gone} == {"unchanged"}
    assert {k: v for k, v in tree(out).items() if not k.startswith(gone) and k != MANIFEST} == {
        k: v for k, v in before.items() if not k.startswith(gone) and k != MANIFEST
    }
    # one memory of another family pruned: its skill is rewritten without it
    put = rows["put"]
    meta = reference_split((out / put["name"] / "SKILL.md").read_text(encoding="utf-8"))["metadata"]
    victim = next(m for m in meta["memp-versions"].split() if not m.startswith(put["memory"])).split("@")[0]
    memp("forget", victim)
    again = {r["name"]: r for r in memp("export", "skills", out).jsonl()}
    assert again[put["name"]]["action"] == "written"
    meta = assert_valid_skill(out / put["name"])["metadata"]
    assert victim not in meta["memp-versions"]


def test_folders_memp_did_not_write_are_never_touched(proc: Path, tmp_path: Path) -> None:
    out = tmp_path / "skills"
    rows = {r["family"]: r["name"] for r in memp("export", "skills", out).jsonl()}
    mine = out / "my-own-skill"
    mine.mkdir()
    (mine / "SKILL.md").write_text(
        "---\nname: my-own-skill\ndescription: mine.\n---\nhello\n", encoding="utf-8"
    )
    edited = out / rows["put"] / "SKILL.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nMy own note.\n", encoding="utf-8")
    extra = out / rows["clean"] / "notes.txt"
    extra.write_text("added by hand", encoding="utf-8")
    user_before = {
        p: p.read_bytes() for p in (mine / "SKILL.md", edited, extra, out / rows["clean"] / "SKILL.md")
    }

    # the families of the edited folders are forgotten: still, nothing of the user's goes
    ids = [m.id for m in memories(proc) if m.family() in ("put", "clean")]
    memp("forget", *ids)
    run = memp("export", "skills", out)
    by_name = {r["name"]: r for r in run.jsonl()}
    for fam in ("put", "clean"):
        assert by_name[rows[fam]]["action"] == "skipped"
        assert f"{out / rows[fam]}: its memory is gone" in run.stderr
    assert "my-own-skill" not in by_name
    for p, data in user_before.items():
        assert p.read_bytes() == data

    # a user folder with the very name of a skill memp would write: left alone, with a warning
    shutil.rmtree(out)
    taken = out / rows["heat"]
    taken.mkdir(parents=True)
    (taken / "SKILL.md").write_text("---\nname: x\n---\n", encoding="utf-8")
    run = memp("export", "skills", out)
    assert {r["name"]: r for r in run.jsonl()}[rows["heat"]]["action"] == "skipped"
    assert "not written by memp" in run.stderr
    assert (taken / "SKILL.md").read_text(encoding="utf-8") == "---\nname: x\n---\n"
    assert rows["heat"] not in json.loads((out / MANIFEST).read_text(encoding="utf-8"))["skills"]


def test_edited_skill_is_memps_again_once_the_edit_is_undone(proc: Path, tmp_path: Path) -> None:
    out = tmp_path / "skills"
    name = memp("export", "skills", out).jsonl()[0]["name"]
    path = out / name / "SKILL.md"
    original = path.read_bytes()
    path.write_bytes(original + b"\nedit\n")
    assert memp("export", "skills", out).jsonl()[0]["action"] == "skipped"
    path.write_bytes(original)
    assert memp("export", "skills", out).jsonl()[0]["action"] == "unchanged"


def test_a_hostile_manifest_never_reaches_outside(proc: Path, tmp_path: Path) -> None:
    out = tmp_path / "skills"
    out.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "SKILL.md").write_text("keep", encoding="utf-8")
    sha = hashlib.sha256(b"keep").hexdigest()
    (out / MANIFEST).write_text(
        json.dumps({"schema_version": 1, "skills": {"../precious": {"sha256": sha}}}), encoding="utf-8"
    )
    memp("export", "skills", out)
    assert (outside / "SKILL.md").read_text(encoding="utf-8") == "keep"
    (out / MANIFEST).write_text("{not json", encoding="utf-8")
    run = memp("export", "skills", out, expect=3)
    assert f"{out / MANIFEST}: not a memp skills manifest" in run.stderr


# ------------------------------------------------------------------ choosing


def mem(mid: str, family: str, success: bool | None, *, title: str = "", task: str = "", **kw: Any) -> Memory:
    script = {
        "title": title or f"do {family} with {{thing}}",
        "steps": [f"find {{thing}} for {family}", "use it"],
    }
    return Memory(
        id=mid,
        kind=kw.pop("kind", "procedure"),
        task=task or f"do {family} with {mid}",
        task_type=family,
        success=success,
        script=script,
        steps=[{"action": f"find {mid}", "observation": "found"}],
        stats=kw.pop("stats", Stats()),
        provenance=Provenance(trajectories=[f"t-{mid}"], policy="proceduralization", model="builtin"),
    )


def test_min_success_unknown_and_failed_families() -> None:
    ms = [
        mem("a1", "good", True),
        mem("a2", "good", True),
        mem("a3", "good", False),
        mem("b1", "weak", True),
        *(mem(f"b{i}", "weak", False) for i in range(2, 5)),  # 1 of 4
        mem("c1", "unknown", None),
        mem("c2", "unknown", None),
        mem("d1", "failed", False),
    ]
    fams = lambda **kw: sorted(s.family for s in plan_skills(ms, **kw))  # noqa: E731
    assert fams() == ["good"]
    assert fams(min_success=0.25) == ["good", "weak"]
    assert fams(min_success=0.26) == ["good"]
    assert fams(min_success=0.0) == ["good", "unknown", "weak"]  # a failed run is never a procedure
    assert fams(min_success=1.0) == []
    # later uses count: a family whose runs' outcome is unknown earns its place by feedback
    used = [mem("c1", "unknown", None, stats=Stats(retrieved=2, successes=2)), mem("c2", "unknown", None)]
    (s,) = plan_skills(used, min_success=0.5)
    assert s.memory.id == "c1" and s.stats.success_rate == 0.5


def test_best_rated_memory_gives_the_procedure() -> None:
    ms = [
        mem("x1", "f", False, title="wrong way {thing}"),
        mem("x2", "f", True, stats=Stats(retrieved=4, successes=1, failures=3)),
        mem("x3", "f", True, stats=Stats(retrieved=4, successes=4)),
        mem("x4", "f", None),
    ]
    (s,) = plan_skills(ms, min_success=0.0)
    assert s.memory.id == "x3"
    assert s.stats.successes == 2 + 5 and s.stats.outcomes == 4 + 8
    assert "wrong way" not in s.text.split("## Pitfalls")[0]
    assert "A run of this task failed (memory `x1`" in s.text


def test_a_script_without_steps_borrows_the_example_of_a_successful_run() -> None:
    script_only = mem("s1", "f", True, kind="script", stats=Stats(retrieved=3, successes=3))
    script_only.steps = []
    failed = mem("s2", "f", False)
    failed.steps = [{"action": "do the wrong thing", "observation": "nothing happens"}]
    ran = mem("s3", "f", True)
    ran.steps = [{"action": "find the thing", "observation": "found it"}]
    (s,) = plan_skills([script_only, failed, ran])
    assert s.memory.id == "s1"
    example = s.text.split("## Example")[1]
    assert "find the thing" in example and "wrong thing" not in example


def test_a_large_family_stays_a_small_file() -> None:
    ms = [mem(f"m{i:04d}", "fam", i % 3 != 0, task=f"put object{i} in place{i % 7}") for i in range(150)]
    (s,) = plan_skills(ms)
    versions = reference_split(s.text)["metadata"]["memp-versions"]
    assert versions.endswith(" (+50 more)") and len(versions.split()) == 100 + 2
    assert s.stats.memories == 150 and len(s.text) < 8000
    assert s.text.count('"put object') >= 3  # a spread of the family's tasks, not one


def test_max_keeps_the_best_by_evidence(proc: Path, tmp_path: Path) -> None:
    mems = memories(proc)
    wins = Counter(m.family() for m in mems if m.success is True)
    top2 = {f for f, _ in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))[:2]}
    rows = memp("export", "skills", tmp_path / "s", "--max", "2").jsonl()
    assert {r["family"] for r in rows} == top2
    memp("export", "skills", tmp_path / "s", "--max", "0", expect=2)


def test_kind_selects_the_memories_considered(built: Path, tmp_path: Path) -> None:
    """The shared `built` store holds trajectory memories only (no script)."""
    out = tmp_path / "s"
    assert memp("export", "skills", out, "--kind", "script").jsonl() == []
    rows = memp("export", "skills", out, "--kind", "trajectory", "--min-success", "0").jsonl()
    assert rows and all(r["action"] == "written" for r in rows)
    for r in rows:
        assert_valid_skill(out / r["name"])
        body = (out / r["name"] / "SKILL.md").read_text(encoding="utf-8")
        assert "The actions of a run that succeeded" in body or "outcome unknown" in body
    removed = memp("export", "skills", out, "--kind", "script").jsonl()
    assert {r["action"] for r in removed} == {"removed"}
    run = memp("export", "skills", out, "--kind", "recipe", expect=2)
    assert "'recipe' is not one of trajectory, script, procedure" in run.stderr
    run = memp("export", "skills", "--check", out, "--kind", "script", expect=2)
    assert "--check validates DIR as it is" in run.stderr


# ------------------------------------------------------------------ hostile text

HOSTILE = [
    "key: value: more",
    "\"double\" and 'single' quotes",
    "line one\nline two\r\nthree",
    "---",
    "--- a yaml document marker ---\n---\n",
    "ünïcödé 日本語 🙂 — ça",
    "sep\u2028line\u2029para\x85next",
    "nul\x00 esc\x1b bell\x07 del\x7f",
    "# not a comment & *alias !tag |block >fold",
    "{flow: [1, 2]} [a, b]",
    "back\\slash \\n \\u0041 \\",
    "yes",
    "tab\there   spaces   ",
    "name: evil\ndescription: injected\nextra: key",
    "...",
    "x" * 3000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_texts_give_valid_skills(store: Path, tmp_path: Path, text: str) -> None:
    ms = [
        mem("h1", text, True, title=f"{text} {{thing}}", task=text),
        mem("h2", text, True, title=f"{text} {{thing}}", task=f"{text} again"),
        mem("h3", "other", True, task=text),
    ]
    ms[0].script["variables"] = {"thing": text}
    ms[0].script["pitfalls"] = [text]
    ms[0].steps = [{"action": text, "observation": text, "thought": text}]
    for m in ms:
        write_memory_file(store / "memories" / f"{m.id}.toml", m)
    out = tmp_path / "skills"
    rows = memp("export", "skills", out).jsonl()
    assert len(rows) == 2
    for r in rows:
        data = assert_valid_skill(out / r["name"])
        assert data["metadata"]["memp-family"] in {"other", clean_value(text)}
    memp("export", "skills", "--check", out)


def test_text_no_yaml_or_utf8_writer_takes() -> None:
    """A lone surrogate cannot reach a memory file, but the library is not trusting: neither
    it nor a name without any ASCII letter breaks a skill."""
    ms = [mem("s1", "日本語の作業", True, title="日本語 {thing}", task="bad \ud800 surrogate")]
    (s,) = plan_skills(ms)
    assert s.name.startswith("memp-skill-") and NAME_RE.match(s.name)
    s.text.encode("utf-8")
    data = reference_split(s.text)
    assert data == parse_frontmatter(s.text).fields


def test_slug() -> None:
    assert slug("put a {object} in {receptacle}") == "put-a-object-in-receptacle"
    assert slug("  Ça--va?  ") == "ca-va"
    assert len(slug("word " * 40)) <= 64 and not slug("word " * 40).endswith("-")
    assert slug("日本") == ""
    names = {s.name for s in plan_skills([mem("a", "Foo!", True), mem("b", "foo?", True)])}
    assert len(names) == 2 and all(NAME_RE.match(n) for n in names)  # same slug, made unique


# ------------------------------------------------------------------ --check

VALID = "---\nname: {name}\ndescription: Does a thing. Use when a thing is needed.\n---\n# Body\n"


def skill_dir(root: Path, name: str, text: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "SKILL.md").write_text(text, encoding="utf-8")
    return d


BROKEN = {
    "no-frontmatter": ("# just markdown\n", 1, "does not start with YAML frontmatter"),
    "not-closed": ("---\nname: not-closed\ndescription: x\n", 4, "not closed"),
    "dashes-inside": (
        '---\nname: dashes-inside\ndescription: "a --- b"\n---\n',
        3,
        '"---" inside the frontmatter',
    ),
    "Upper-Case": ("---\nname: Upper-Case\ndescription: x\n---\n", 2, "lowercase letters"),
    "-leading": ("---\nname: -leading\ndescription: x\n---\n", 2, "a key may not start|lowercase"),
    "double--hyphen": ("---\nname: double--hyphen\ndescription: x\n---\n", 2, "single hyphens"),
    "a" * 65: ("---\nname: " + "a" * 65 + "\ndescription: x\n---\n", 2, "65 characters, over the 64"),
    "other-folder": ("---\nname: not-the-folder\ndescription: x\n---\n", 2, "differs from the folder's name"),
    "no-description": ("---\nname: no-description\n---\n", 1, "required key 'description' is missing"),
    "empty-description": ('---\nname: empty-description\ndescription: ""\n---\n', 3, "non-empty string"),
    "long-description": (
        "---\nname: long-description\ndescription: " + "x" * 1025 + "\n---\n",
        3,
        "1025 characters, over the 1024",
    ),
    "extra-key": (
        "---\nname: extra-key\ndescription: x\nversion: 1\n---\n",
        4,
        "key 'version' is not allowed",
    ),
    "nested-metadata": (
        "---\nname: nested-metadata\ndescription: x\nmetadata:\n  a:\n    b: c\n---\n",
        4,
        "must be a string, not a nested",
    ),
    "long-compat": (
        "---\nname: long-compat\ndescription: x\ncompatibility: " + "y" * 501 + "\n---\n",
        4,
        "over the 500",
    ),
    "colon-plain": ("---\nname: colon-plain\ndescription: Use when: always\n---\n", 3, 'may not hold ": "'),
    "flow-style": ("---\nname: flow-style\ndescription: x\nmetadata: {a: b}\n---\n", 4, "flow collections"),
    "empty-license": ('---\nname: empty-license\ndescription: x\nlicense: ""\n---\n', 4, "'license' must be"),
    "tools-list": (
        "---\nname: tools-list\ndescription: x\nallowed-tools:\n  - Bash\n  - Read\n---\n",
        4,
        "one string of space-separated",
    ),
    "dup-key": ("---\nname: dup-key\ndescription: x\ndescription: y\n---\n", 4, "duplicate key"),
}


@pytest.mark.parametrize("folder", sorted(BROKEN))
def test_check_reports_each_broken_rule(tmp_path: Path, folder: str) -> None:
    text, line, message = BROKEN[folder]
    root = tmp_path / "skills"
    skill_dir(root, "fine", VALID.format(name="fine"))
    skill_dir(root, folder, text)
    run = memp("export", "skills", "--check", root, expect=3)
    path = root / folder / "SKILL.md"
    lines = run.stdout.splitlines()
    assert lines and all(ln.startswith(f"{path}:{line}: ") for ln in lines), run
    assert any(re.search(message, ln) for ln in lines), run
    assert "checked 2 skill folders" in run.stderr
    rows = memp("export", "skills", "--check", root, "--json", expect=3).jsonl()
    assert rows and all(r["path"] == str(path) and r["line"] == line for r in rows)


def test_check_accepts_valid_yaml_and_flags_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    skill_dir(
        root,
        "block-style",
        "---\nname: block-style\ndescription: >-\n  Folded text: with a colon,\n  on two lines.\n"
        "license: Apache-2.0\ncompatibility: 'needs git'\nallowed-tools: Bash(git:*) Read\n"
        'metadata:\n  author: me  # a comment\n  version: "1.0"\n---\nbody\n',
    )
    long = skill_dir(root, "long-body", VALID.format(name="long-body") + "line\n" * 600)
    (root / ".git").mkdir()  # hidden folders are not skills
    run = memp("export", "skills", "--check", root)
    assert run.stdout == f"{long / 'SKILL.md'}:5: warning: the body has 601 lines; keep it under 500\n"
    empty = root / "empty"
    empty.mkdir()
    run = memp("export", "skills", "--check", root, expect=3)
    assert f"{empty}: no SKILL.md in this folder" in run.stdout
    # DIR itself a skill
    memp("export", "skills", "--check", root / "block-style")
    run = memp("export", "skills", "--check", tmp_path / "nowhere", expect=3)
    assert "not a directory" in run.stdout
