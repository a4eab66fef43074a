"""``memp export skills DIR``: the store's procedures as Agent Skills, one folder per task family.

Agents preload only each skill's name and description (some cap that list), so export writes
few, sharp skills: the memories of one task family (:meth:`Memory.family`) become ONE skill.
Its procedure is the best-rated member's (a run that succeeded before one of unknown outcome,
then one with a script before concrete steps only, then by the success rate of its uses, then
by id); the family's outcomes are pooled for its statistics; its failed runs become pitfalls
(as ``memp query --format prompt`` shows them, :func:`memp_cli.retrieve.render.what_went_wrong`).
The description is written from the family: its procedure, its steps, and a spread of its tasks.

Which families: those whose procedure comes from a run that succeeded and whose success rate
(successes over all outcomes, runs and later uses; an unknown outcome is never a success) is
at least ``min_success``. With ``min_success`` 0 a family whose best run's outcome is unknown
is exported too; a failed run is never a procedure. ``max_skills`` keeps the best by evidence
(successes, then success rate). ``kinds`` limits the memories considered.

Writing is idempotent and touches only what memp wrote: ``DIR/.memp-skills.json`` (the
manifest) lists each folder memp wrote with the SHA-256 of its SKILL.md. A folder is rewritten
or removed only when it is in the manifest, holds nothing but that SKILL.md and the file's
hash is the recorded one; any other folder (the user's own, or one edited by hand) is left
alone with a warning. No timestamps go in any file: the same store gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memp_cli.errors import InputError
from memp_cli.integrations.skillspec import (
    MAX_DESCRIPTION,
    MAX_NAME,
    SKILL_FILE,
    clean_text,
    clean_value,
    field_problems,
    parse_frontmatter,
    render_frontmatter,
)
from memp_cli.model.memory import KINDS, Memory
from memp_cli.model.steps import omitted_count, trim_steps
from memp_cli.model.text import cut

if TYPE_CHECKING:
    from memp_cli.store import Store

MANIFEST = ".memp-skills.json"
MANIFEST_VERSION = 1
DEFAULT_MIN_SUCCESS = 0.5
EXAMPLE_TASKS = 4  # tasks quoted in a description
EXAMPLE_STEPS = 12  # steps of the concrete example
FAILED_PITFALLS = 3  # failed runs named among the pitfalls (the rest are counted)
SPREAD_POOL = 400  # tasks of a family the description's examples are picked from
MAX_IDS = 100  # memory ids listed in a skill's metadata (the rest are counted)
MAX_LIST = 60  # procedure steps, preconditions or pitfalls listed: the body stays < 500 lines
# Succeeded first, then unknown, then failed (as memp query's collapse ranks them).
_OUTCOME_RANK = {True: 2, None: 1, False: 0}
_VARIABLE = re.compile(r"\{([^{}]{1,40})\}")


@dataclass
class FamilyStats:
    """A family's pooled outcomes: its runs (the memories' own ``success``) and later uses."""

    memories: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    uses: int = 0
    uses_succeeded: int = 0
    uses_failed: int = 0

    @property
    def successes(self) -> int:
        return self.runs_succeeded + self.uses_succeeded

    @property
    def outcomes(self) -> int:
        return self.memories + self.uses

    @property
    def success_rate(self) -> float:
        """Successes over all outcomes: an unknown outcome counts, and never as a success."""
        return self.successes / self.outcomes if self.outcomes else 0.0


@dataclass
class Skill:
    """One exported skill: a task family, the memory whose procedure it shows, its text."""

    name: str
    family: str
    memory: Memory
    members: list[Memory]
    stats: FamilyStats
    title: str = ""  # the family's common script title ("" without one)
    text: str = ""


@dataclass
class ExportEntry:
    name: str
    action: str  # written, unchanged, removed, skipped
    family: str = ""
    memory: str = ""
    success_rate: float | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "action": self.action}
        if self.family:
            d.update(family=self.family, memory=self.memory, success_rate=self.success_rate)
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class ExportReport:
    directory: Path
    entries: list[ExportEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(e.action == action for e in self.entries)


# ------------------------------------------------------------------ choosing


def _rating(m: Memory) -> float:
    """The success rate of a memory's uses, with a uniform prior (0.5 unused)."""
    return (m.stats.successes + 1) / (m.stats.successes + m.stats.failures + 2)


def _best(members: Sequence[Memory], title: str) -> Memory:
    """The member whose procedure the skill shows: best outcome, a script over bare steps, the
    family's common ``title``, the best rating of its uses, most successes, then by id."""
    return max(
        members,
        key=lambda m: (
            _OUTCOME_RANK[m.success],
            bool(m.script.get("steps")),
            _title(m) == title,
            _rating(m),
            m.stats.successes,
            m.id,
        ),
    )


def _stats(members: Sequence[Memory]) -> FamilyStats:
    s = FamilyStats(memories=len(members))
    for m in members:
        s.runs_succeeded += m.success is True
        s.runs_failed += m.success is False
        s.uses += m.stats.retrieved
        s.uses_succeeded += m.stats.successes
        s.uses_failed += m.stats.failures
    return s


def slug(text: str) -> str:
    """A skill name from ``text``: ASCII lowercase words joined by single hyphens, at most 64
    characters, cut at a word ("" when no letter or digit is left)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for w in words:
        nxt = f"{out}-{w}" if out else w
        if len(nxt) > MAX_NAME:
            break
        out = nxt
    return out or (words[0][:MAX_NAME] if words else "")


def _title(m: Memory) -> str:
    title = m.script.get("title") if m.script else None
    return " ".join(title.split()) if isinstance(title, str) and title.strip() else ""


def _common_title(members: Sequence[Memory]) -> str:
    """The most frequent script title of the family's runs that did not fail (ties: the first
    in sorted order)."""
    counts = Counter(t for m in members if m.success is not False and (t := _title(m)))
    if not counts:
        return ""
    return min(counts, key=lambda t: (-counts[t], t))


def plan_skills(
    memories: Iterable[Memory],
    *,
    min_success: float = DEFAULT_MIN_SUCCESS,
    max_skills: int | None = None,
    kinds: Sequence[str] = KINDS,
) -> list[Skill]:
    """The skills to export, sorted by name (``memories`` carry their ledger statistics)."""
    families: dict[str, list[Memory]] = {}
    for m in memories:
        if m.kind in kinds:
            families.setdefault(m.family(), []).append(m)
    chosen: list[Skill] = []
    for family, members in families.items():
        members.sort(key=lambda m: m.id)
        title = _common_title(members)
        best = _best(members, title)
        stats = _stats(members)
        if best.success is False or stats.success_rate < min_success:
            continue  # a failed run is never a procedure; rate > 0 needs a success
        chosen.append(Skill("", family, best, members, stats, title))
    chosen.sort(key=lambda s: (-s.stats.successes, -s.stats.success_rate, s.family))
    if max_skills is not None:
        chosen = chosen[:max_skills]
    _name(chosen)
    for s in chosen:
        s.text = render_skill(s)
    return sorted(chosen, key=lambda s: s.name)


def _name(skills: Sequence[Skill]) -> None:
    """Each skill's name: the slug of its family's common title (when it has a word besides its
    variables), else of the family, else a hash; made unique in family order (a suffix)."""
    taken: set[str] = set()
    for s in sorted(skills, key=lambda s: s.family):
        title = s.title
        base = (slug(title) if slug(_VARIABLE.sub(" ", title)) else "") or slug(s.family)
        if not base:
            base = "memp-skill-" + hashlib.sha256(s.family.encode("utf-8", "replace")).hexdigest()[:8]
        name, n = base, 1
        while name in taken:
            n += 1
            suffix = f"-{n}"
            name = base[: MAX_NAME - len(suffix)].rstrip("-") + suffix
        taken.add(name)
        s.name = name


# ------------------------------------------------------------------ rendering


def _line(text: Any, limit: int = 300) -> str:
    """One line of the body from memory text: cleaned, whitespace collapsed, cut."""
    return cut(" ".join(clean_text(str(text)).split()), limit)


def _spread(members: Sequence[Memory], first: Memory, n: int) -> list[str]:
    """Up to ``n`` tasks of the family that differ most: greedily the one adding the most new
    words (ties: sorted order), starting from ``first``'s task. Linear in the family's size."""
    tasks = sorted({_line(m.task, 120) for m in members if m.success is not False} - {""})
    if len(tasks) > SPREAD_POOL:  # an even, deterministic sample of a large family
        tasks = [tasks[i * len(tasks) // SPREAD_POOL] for i in range(SPREAD_POOL)]
    picked = [_line(first.task, 120)]
    seen = set(picked[0].lower().split())
    pool = {t: set(t.lower().split()) for t in tasks if t != picked[0]}
    order = {t: i for i, t in enumerate(tasks)}
    while pool and len(picked) < n:
        t = max(pool, key=lambda t: (len(pool[t] - seen), -order[t]))
        if not pool[t] - seen:
            break
        picked.append(t)
        seen |= pool.pop(t)
    return picked


def _procedure(m: Memory) -> list[str]:
    steps = m.script.get("steps") if m.script else None
    if steps:
        return [_line(s, 500) for s in steps[:MAX_LIST]]
    real = [s for s in m.steps if omitted_count(s) is None]
    return [_line(s.get("action", ""), 500) for s in real[:MAX_LIST]]


def describe(skill: Skill) -> str:
    """The description an agent decides by: what the procedure does, its steps, example tasks
    of the family and its record; at most 1024 characters."""
    m, st = skill.memory, skill.stats
    title = skill.title or _line(m.task, 150)
    others = sorted({_title(x) for x in skill.members if x.success is not False} - {title, ""})[:2]
    also = "".join(f'; also "{t}"' for t in others)
    steps = "; ".join(_procedure(m))
    record = f"{st.successes} of {st.outcomes} outcomes succeeded" if st.outcomes else "no outcomes yet"
    tasks = "; ".join(f'"{t}"' for t in _spread(skill.members, m, EXAMPLE_TASKS))
    runs = f"{st.memories} past run{'s' if st.memories != 1 else ''}"
    head = f'How to do "{title}" tasks{also}, learned from {runs} ({record}).'
    use = f" Use when a task is like: {tasks}."
    how = f" Steps: {cut(steps, 300)}."
    text = " ".join((head + use + how).split())
    if len(text) > MAX_DESCRIPTION:
        text = " ".join((head + use).split())
    return cut(text, MAX_DESCRIPTION)


def _metadata(skill: Skill) -> dict[str, str]:
    m, st = skill.memory, skill.stats
    meta = {
        "memp-family": skill.family,
        "memp-memory": m.id,
        "memp-version": str(m.version),
        "memp-kind": m.kind,
        "memp-versions": _versions(skill.members),
        "memp-success-rate": f"{st.success_rate:.2f}",
        "memp-runs": str(st.memories),
        "memp-runs-succeeded": str(st.runs_succeeded),
        "memp-runs-failed": str(st.runs_failed),
        "memp-uses": str(st.uses),
        "memp-uses-succeeded": str(st.uses_succeeded),
        "memp-uses-failed": str(st.uses_failed),
        "memp-trajectories": " ".join(m.provenance.trajectories),
        "memp-policy": m.provenance.policy,
        "memp-model": m.provenance.model,
        "memp-prompt-version": m.provenance.prompt_version,
    }
    return {k: v for k, v in meta.items() if v}


def _versions(members: Sequence[Memory]) -> str:
    """``id@version`` of the family's memories, sorted; past MAX_IDS, a count of the rest."""
    shown = " ".join(f"{x.id}@{x.version}" for x in members[:MAX_IDS])
    return shown + (f" (+{len(members) - MAX_IDS} more)" if len(members) > MAX_IDS else "")


def _variables(skill: Skill, procedure: Sequence[str]) -> list[str]:
    """One line per ``{variable}`` of the procedure, with example values from the family."""
    names = list(dict.fromkeys(v for step in procedure for v in _VARIABLE.findall(step)))
    lines = []
    for name in names:
        values: list[str] = []
        for x in [skill.memory, *skill.members]:
            v = (x.script.get("variables") or {}).get(name) if x.script else None
            if isinstance(v, str) and _line(v, 60) and _line(v, 60) not in values:
                values.append(_line(v, 60))
            if len(values) == 3:
                break
        eg = f": e.g. {', '.join(f'`{v}`' for v in values)}" if values else ": fill in from your task"
        lines.append(f"- `{{{_line(name, 40)}}}`{eg}")
    return lines


def _pitfalls(skill: Skill) -> list[str]:
    from memp_cli.retrieve.render import what_went_wrong

    own = (
        [_line(p) for p in (skill.memory.script.get("pitfalls") or [])][:MAX_LIST]
        if skill.memory.script
        else []
    )
    failed = [x for x in skill.members if x.success is False]
    lines = [f"- {p}" for p in own if p]
    for x in failed[:FAILED_PITFALLS]:
        why = _line(what_went_wrong(x))
        lines.append(f"- A run of this task failed (memory `{x.id}`, {_line(x.task, 100)}): {why}")
    if len(failed) > FAILED_PITFALLS:
        lines.append(f"- {len(failed) - FAILED_PITFALLS} more runs of this family failed.")
    return lines


def _example(m: Memory) -> list[str]:
    if not m.steps:
        return []
    lines = [f"Task: {_line(m.task)}", ""]
    for s in trim_steps(m.steps, EXAMPLE_STEPS, max_chars=200):
        n = omitted_count(s)
        if n is not None:
            lines.append(f"- ({n} steps omitted)")
            continue
        if s.get("thought"):
            lines.append(f"- think: {_line(s['thought'], 200)}")
        action = _line(s.get("action", ""), 200).replace("`", "'")
        lines.append(f"- `{action}`")
        if obs := _line(s.get("observation", ""), 200):
            lines.append(f"  {obs}")
    return lines


def render_skill(skill: Skill) -> str:
    """The SKILL.md text: frontmatter, then procedure, variables, preconditions, pitfalls, one
    trimmed example and where it came from (well under 500 lines)."""
    m, st = skill.memory, skill.stats
    procedure = _procedure(m)
    title = skill.title or _line(m.task, 150)
    description = describe(skill)
    out = [render_frontmatter(skill.name, description, _metadata(skill)).rstrip("\n"), "", f"# {title}", ""]
    out += [description, "", "## Procedure", ""]
    if not (m.script and m.script.get("steps")):
        out += ["The actions of a run that succeeded; put the names of your own task in their place.", ""]
    elif _title(m) != title:
        out += [f'As done for "{_title(m)}":', ""]
    out += [f"{i}. {s}" for i, s in enumerate(procedure, 1)]
    variables = _variables(skill, procedure)
    if variables:
        out += ["", "Variables (the `{...}` above):", "", *variables]
    pre = [_line(p) for p in (m.script.get("preconditions") or [])][:MAX_LIST] if m.script else []
    if pre:
        out += ["", "## Preconditions", "", *(f"- {p}" for p in pre if p)]
    pitfalls = _pitfalls(skill)
    if pitfalls:
        out += ["", "## Pitfalls", "", *pitfalls]
    # the best memory's own run, else (a script without steps) a run of the family that succeeded
    shown = m if m.steps else next((x for x in skill.members if x.steps and x.success is True), m)
    example = _example(shown)
    if example:
        out += ["", "## Example", "", *example]
    outcome = {True: "succeeded", False: "failed", None: "outcome unknown"}[m.success]
    out += [
        "",
        "## Provenance",
        "",
        f"Exported by `memp export skills` from memory `{m.id}` (version {m.version}, {m.kind}, its run "
        f"{outcome}); family `{_line(skill.family, 80)}`: {st.memories} memories, {st.runs_succeeded} runs "
        f"succeeded, {st.runs_failed} failed; {st.uses} later uses, {st.uses_succeeded} succeeded, "
        f"{st.uses_failed} failed; success rate {st.success_rate:.2f}. See `memp show {m.id}`.",
    ]
    text = "\n".join(out) + "\n"
    problems = field_problems(parse_frontmatter(text).fields, skill.name)
    if problems:  # a bug in memp, never the user's: refuse to write an invalid skill
        raise ValueError(f"skill {skill.name}: {problems}")
    return text


# ------------------------------------------------------------------ writing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path) -> dict[str, dict[str, str]]:
    """The manifest's skills (name -> {"sha256", "family"}); {} when there is none."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InputError(f"cannot be read ({e.strerror})", path=str(path)) from None
    hint = (
        f"memp writes this file; delete it to start over (memp then leaves every folder in {directory} alone)"
    )
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not a memp skills manifest ({e})", path=str(path), hint=hint) from None
    skills = data.get("skills") if isinstance(data, dict) else None
    if not isinstance(skills, dict) or not isinstance(data.get("schema_version"), int):
        raise InputError('not a memp skills manifest (no "skills" table)', path=str(path), hint=hint)
    if data["schema_version"] > MANIFEST_VERSION:
        raise InputError(f"schema_version {data['schema_version']} is newer than this memp", path=str(path))
    out: dict[str, dict[str, str]] = {}
    for name, entry in skills.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        if ok and isinstance(name, str) and slug(name) == name:  # never a path outside DIR
            out[name] = {"sha256": entry["sha256"], "family": str(entry.get("family", ""))}
    return out


def _manifest_bytes(skills: dict[str, dict[str, str]]) -> bytes:
    data = {
        "schema_version": MANIFEST_VERSION,
        "written_by": "memp export skills: the folders listed are memp's to rewrite or remove",
        "skills": skills,
    }
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _owned(folder: Path, entry: dict[str, str] | None) -> str:
    """Why memp may not touch ``folder`` ("" when it may: it wrote it, and it is unchanged)."""
    if entry is None:
        return "not written by memp (not in its manifest)"
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder memp wrote (a link or a file)"
    names = sorted(os.listdir(folder))
    if names != [SKILL_FILE]:
        return f"holds other files than {SKILL_FILE} (added by hand)"
    path = folder / SKILL_FILE
    if path.is_symlink() or not path.is_file():
        return f"its {SKILL_FILE} is not a regular file"
    if _sha256(path.read_bytes()) != entry["sha256"]:
        return f"its {SKILL_FILE} was edited since memp wrote it"
    return ""


def sync_skills(directory: Path, skills: Sequence[Skill]) -> ExportReport:
    """Make ``directory`` hold ``skills``, touching only the folders memp wrote (see the module
    docstring); the manifest is written last, atomically."""
    from memp_cli.store.fsutil import atomic_write

    if directory.exists() and not directory.is_dir():
        raise InputError(
            "exists and is not a directory", path=str(directory), hint="give a folder for the skills"
        )
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    report = ExportReport(directory)
    kept: dict[str, dict[str, str]] = {}
    wanted = {s.name for s in skills}
    for s in skills:
        folder = directory / s.name
        data = s.text.encode("utf-8")
        family = clean_value(s.family)  # as in the metadata: one line
        entry = ExportEntry(s.name, "written", family, s.memory.id, round(s.stats.success_rate, 4))
        if folder.exists() or folder.is_symlink():
            why = _owned(folder, manifest.get(s.name))
            if why:
                entry.action, entry.reason = "skipped", why
                report.warnings.append(f"{folder}: {why}; left alone (move it away to let memp write it)")
                if s.name in manifest:
                    kept[s.name] = manifest[s.name]  # still memp's, once the edit is undone
                report.entries.append(entry)
                continue
            if (folder / SKILL_FILE).read_bytes() == data:
                entry.action = "unchanged"
        if entry.action == "written":
            atomic_write(folder / SKILL_FILE, data)
        kept[s.name] = {"sha256": _sha256(data), "family": family}
        report.entries.append(entry)
    for name in sorted(set(manifest) - wanted):
        folder = directory / name
        if not (folder.exists() or folder.is_symlink()):
            continue  # removed by the user: forget it
        why = _owned(folder, manifest[name])
        if why:
            report.entries.append(ExportEntry(name, "skipped", reason=why))
            report.warnings.append(f"{folder}: its memory is gone, but {why}; left alone")
            continue
        (folder / SKILL_FILE).unlink()
        folder.rmdir()
        report.entries.append(ExportEntry(name, "removed", family=manifest[name]["family"]))
    new = _manifest_bytes(dict(sorted(kept.items())))
    path = directory / MANIFEST
    if not path.exists() or path.read_bytes() != new:
        atomic_write(path, new)
    report.entries.sort(key=lambda e: e.name)
    return report


def export_skills(
    store: Store,
    directory: Path,
    *,
    min_success: float = DEFAULT_MIN_SUCCESS,
    max_skills: int | None = None,
    kinds: Sequence[str] = KINDS,
) -> ExportReport:
    """Export the store's task families to ``directory`` as Agent Skills (see the module
    docstring). Reads the store only; broken memory files are skipped with a warning."""
    from memp_cli.errors import MemoryFileError
    from memp_cli.update.outcomes import add_usage

    memories: list[Memory] = []
    broken: list[str] = []
    for m in store.iter_memories():
        if isinstance(m, MemoryFileError):
            broken.append(f"skipped {m}".split("\n")[0])
        else:
            memories.append(m)
    add_usage(store, memories)
    skills = plan_skills(memories, min_success=min_success, max_skills=max_skills, kinds=kinds)
    report = sync_skills(directory, skills)
    report.warnings[:0] = broken
    return report
