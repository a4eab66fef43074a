"""Reflect (Mem^p's adjustment): a memory that led to a failure is corrected from it.

For each failed run that used a memory, the reflector sees the memory's current script, the
failed run and, when the store has one, a successful run of a similar task. It says what went
wrong and returns a revised script; the memory gets a new version (the old one stays in its
history) and the index re-embeds it if its keys changed.

The built-in reflector (``--model builtin``, offline, deterministic):

- what went wrong: the built-in distiller's reading of the failed run (where it went astray,
  loops, actions that did nothing) becomes new pitfalls of the memory;
- what was missing: the abstract steps the successful run took that neither the failed run nor
  the memory has are added to the memory's steps, after the step they follow in the success.

A reflection never deletes a memory, touches only the memory the failure names, and changes
nothing when it has nothing to add.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from memp_cli.errors import MemoryFileError, NotFoundError
from memp_cli.model.memory import Memory, now_iso
from memp_cli.model.script import SCRIPT_JSON_SCHEMA, Script, script_from_reply
from memp_cli.model.trajectory import Trajectory
from memp_cli.redact import for_config, redact_all
from memp_cli.store import appendlog

if TYPE_CHECKING:
    from memp_cli.store.protocol import MemoryStore

MAX_PITFALLS = 12
MAX_ADDED_STEPS = 5
_WORD = re.compile(r"[a-z]+")
_VAR = re.compile(r"\{([A-Za-z_]\w*)\}")


@dataclass
class Reflection:
    memory_id: str
    trajectory_id: str
    diagnosis: str
    before: dict[str, Any]  # the memory's script before
    after: dict[str, Any]  # and after
    success_id: str | None = None  # the successful run compared with, if any
    added_pitfalls: list[str] = field(default_factory=list)
    added_steps: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory_id,
            "trajectory": self.trajectory_id,
            "diagnosis": self.diagnosis,
            "success_example": self.success_id,
            "changed": self.changed,
            "added_pitfalls": self.added_pitfalls,
            "added_steps": self.added_steps,
        }


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def similar_success(
    failed: Trajectory, successes: Iterable[Trajectory], prefer: set[str]
) -> Trajectory | None:
    """The successful run most like ``failed``: the same task type when both say, then the most
    task words in common; a run in ``prefer`` (the memory's own sources) wins a tie."""
    best: tuple[float, int, str] | None = None
    pick: Trajectory | None = None
    fw = _words(failed.task)
    for s in successes:
        if s.id == failed.id or s.success is not True:
            continue
        if failed.task_type and s.task_type and s.task_type != failed.task_type:
            continue
        sw = _words(s.task)
        overlap = len(fw & sw) / max(1, len(fw | sw))
        key = (overlap, int(s.id in prefer), s.id)
        if best is None or key > best:
            best, pick = key, s
    return pick


def builtin_reflection(memory: Memory, failed: Trajectory, success: Trajectory | None) -> Reflection:
    """What the built-in reflector makes of one failure of ``memory`` (pure: writes nothing)."""
    from memp_cli.build.builtin.distiller import builtin_script

    before = dict(memory.script)
    after: dict[str, Any] = {
        k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
        for k, v in before.items()
    }
    f_script = builtin_script(failed)
    pitfalls: list[str] = list(after.get("pitfalls", []))
    known = {_norm(p) for p in pitfalls}
    added_p: list[str] = []
    for p in f_script.pitfalls:
        if _norm(p) not in known and len(pitfalls) < MAX_PITFALLS:
            pitfalls.append(p)
            known.add(_norm(p))
            added_p.append(p)
    after["pitfalls"] = pitfalls

    added_s: list[str] = []
    if success is not None:
        s_script = builtin_script(success)
        steps: list[str] = list(after.get("steps", []))
        have = {_norm(s) for s in steps} | {_norm(s) for s in f_script.steps}
        variables: dict[str, str] = dict(after.get("variables", {}))
        for i, step in enumerate(s_script.steps):
            if _norm(step) in have or len(added_s) >= MAX_ADDED_STEPS:
                continue
            names = set(_VAR.findall(step))
            if any(n not in variables and n not in s_script.variables for n in names):
                continue
            # after the last step of the success before it that the memory has
            at = 0
            for prev in reversed(s_script.steps[:i]):
                pos = next((j for j, s in enumerate(steps) if _norm(s) == _norm(prev)), None)
                if pos is not None:
                    at = pos + 1
                    break
            steps.insert(at, step)
            have.add(_norm(step))
            added_s.append(step)
            for n in names:
                variables.setdefault(n, s_script.variables.get(n, ""))
        after["steps"] = steps
        if variables:
            after["variables"] = variables
    diagnosis = f_script.pitfalls[0] if f_script.pitfalls else "the run failed without a visible cause"
    if added_s:
        diagnosis += f"; the successful run {success.id if success else ''} also did: " + "; ".join(added_s)
    return Reflection(
        memory.id, failed.id, diagnosis, before, after, success.id if success else None, added_p, added_s
    )


@dataclass
class Pending:
    """A failed run and the memory to correct from it, not reflected on yet."""

    memory_id: str
    trajectory_id: str
    why: str = "used"  # "used": the run used the memory; "nearest": its closest procedure


class Reflections:
    """``<store>/reflections.jsonl``: every (memory, failed run) pair a reflection handled,
    whether it changed the memory or found nothing to add, so no pair is handled twice."""

    def __init__(self, store: MemoryStore) -> None:
        self.path = store.reflections_path

    def handled(self) -> set[tuple[str, str]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return set()
        out: set[tuple[str, str]] = set()
        for line in raw.splitlines():
            try:
                d = orjson.loads(line)
                out.add((str(d["memory"]), str(d["trajectory"])))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from a killed writer
        return out

    def add(self, memory_id: str, trajectory_id: str, *, changed: bool, why: str) -> None:
        rec = {
            "time": now_iso(),
            "memory": memory_id,
            "trajectory": trajectory_id,
            "changed": changed,
            "why": why,
        }
        appendlog.append(self.path, orjson.dumps(rec) + b"\n")


def pending(
    store: MemoryStore,
    *,
    trajectories: set[str] | None = None,
    memory: str | None = None,
    unattributed: bool = False,
) -> list[Pending]:
    """What to reflect on: (memory, failed run) pairs from the outcome ledger that no reflection
    has handled (``trajectories``/``memory`` narrow it; a memory in the trash is left out). With
    ``unattributed``, also each stored failed run that named no memory, paired with the nearest
    successful procedure of its task family (the paper's adjustment keeps failures as lessons)."""
    from memp_cli.update.outcomes import Ledger

    existing = set(store.memory_ids())
    handled = Reflections(store).handled()
    out: list[Pending] = []
    attributed: set[str] = set()
    for o in Ledger.of(store):
        if o.outcome != "failure" or o.trajectory is None:
            continue
        attributed.add(o.trajectory)
        if o.memory not in existing or (o.memory, o.trajectory) in handled:
            continue
        if trajectories is not None and o.trajectory not in trajectories:
            continue
        if memory is not None and o.memory != memory:
            continue
        handled.add((o.memory, o.trajectory))
        out.append(Pending(o.memory, o.trajectory))
    if unattributed:
        done_runs = {t for _, t in handled}
        runs = [
            t
            for t in store.iter_trajectories()
            if t.success is False
            and not t.memories_used
            and t.id not in attributed
            and t.id not in done_runs
            and (trajectories is None or t.id in trajectories)
        ]
        for t, mid in zip(runs, nearest_procedures(store, runs), strict=True):
            if mid is not None and (memory is None or mid == memory):
                out.append(Pending(mid, t.id, why="nearest"))
    return out


def nearest_procedures(store: MemoryStore, runs: list[Trajectory]) -> list[str | None]:
    """For each run, the best-matching memory that has a script, came from a successful run
    other than this one and (when both say) has its task type; None when there is none."""
    from memp_cli.index import sync
    from memp_cli.retrieve.retriever import Retriever
    from memp_cli.store import store_embedder

    if not runs or not store.memory_ids():
        return [None for _ in runs]
    emb = store_embedder(store)
    idx, _ = sync(store, emb)
    retriever = Retriever.from_config(
        idx, emb, store.config.retrieval, k=10, min_score=-1.0, utility_weight=0.0
    )
    out: list[str | None] = []
    for t, rows in zip(runs, retriever.scored([t.task for t in runs]), strict=True):
        pick = None
        for pos, score, _cos, _lex in rows[:10]:
            if score <= 0:
                break
            mid = idx.state.ids[pos]
            try:
                m = store.read_memory(mid)
            except MemoryFileError:
                continue
            if not m.script or m.success is False or t.id in m.provenance.trajectories:
                continue
            if t.task_type and m.task_type and t.task_type != m.task_type:
                continue
            pick = mid
            break
        out.append(pick)
    return out


@dataclass
class ReflectReport:
    reflections: list[Reflection] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # why a pair was not reflected on
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None

    def add_usage(self, usage: Any) -> None:
        if usage is None:
            return
        self.calls += usage.calls
        self.tokens_in += usage.tokens_in
        self.tokens_out += usage.tokens_out
        if usage.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + usage.cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "reflected": len(self.reflections),
            "written": self.written,
            "unchanged": self.unchanged,
            "skipped": len(self.skipped),
            "calls": self.calls,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
        }


def _by_id(store: MemoryStore, ids: set[str]) -> Iterator[Trajectory]:
    for t in store.iter_trajectories():
        if t.id in ids:
            yield t


REFLECT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "diagnosis": {"type": "string", "description": "what went wrong in the failed run, and where"},
        "script": SCRIPT_JSON_SCHEMA,
    },
    "required": ["diagnosis", "script"],
}


def reflection_from_reply(obj: Any, memory_id: str) -> tuple[str, Script]:
    """Validate an LLM's reflection reply: a diagnosis and a whole script. A reply that names
    another memory, or has no diagnosis or no usable script, is rejected (ValueError)."""
    if not isinstance(obj, dict):
        raise ValueError("the reply is not a JSON object")
    for key in ("memory", "memory_id", "id"):
        if key in obj and obj[key] != memory_id:
            raise ValueError(f"the reply names memory {obj[key]!r}; only {memory_id} may change")
    diagnosis = obj.get("diagnosis")
    if not isinstance(diagnosis, str) or not diagnosis.strip():
        raise ValueError('"diagnosis" must be a non-empty string')
    return " ".join(diagnosis.split())[:1000], script_from_reply(obj.get("script"))


def llm_reflection(
    memory: Memory,
    failed: Trajectory,
    success: Trajectory | None,
    *,
    settings: Any,
    prompt: Any,
    cache: Any,
    mock_response: str | None = None,
) -> tuple[Reflection, Any]:
    """The model's reflection (and its usage). Raises LLMError when the model fails or its
    reply stays invalid after one repair: nothing is changed then."""
    from memp_cli.backends import llm
    from memp_cli.build.prompting import reflect_messages

    messages = reflect_messages(memory.script, failed, success, prompt, REFLECT_JSON_SCHEMA)
    (diagnosis, script), usage = llm.complete_json(
        messages,
        settings,
        validate=lambda obj: reflection_from_reply(obj, memory.id),
        cache=cache,
        mock_response=mock_response,
        json_mode=True,
        schema=REFLECT_JSON_SCHEMA,
    )
    before = dict(memory.script)
    after = {**before, **script.to_dict()}
    if not script.keywords and before.get("keywords"):
        after["keywords"] = before["keywords"]
    after["generator"] = f"{settings.model} (LLM reflection)"
    old_p = {_norm(p) for p in before.get("pitfalls", [])}
    old_s = {_norm(p) for p in before.get("steps", [])}
    r = Reflection(
        memory.id,
        failed.id,
        diagnosis,
        before,
        after,
        success.id if success else None,
        [p for p in after.get("pitfalls", []) if _norm(p) not in old_p],
        [p for p in after.get("steps", []) if _norm(p) not in old_s],
    )
    return r, usage


def reflect(
    store: MemoryStore,
    todo: list[Pending],
    *,
    dry_run: bool = False,
    model: str | None = None,
    api_base: str | None = None,
    mock_response: str | None = None,
) -> ReflectReport:
    """Reflect on each pending pair, with the built-in reflector or a model (``model``), and
    write a new version of each memory that changed (unless ``dry_run``). The store lock is
    held only to write, never during a model call; a memory changed by someone else in the
    meantime is left for the next run."""
    report = ReflectReport()
    if not todo:
        return report
    use_llm = bool(model) and model != "builtin"
    settings = prompt = cache = None
    if use_llm:
        from memp_cli.backends.llm import LLMSettings, ResponseCache
        from memp_cli.backends.llm.types import choose_api_base
        from memp_cli.build.prompting import load_prompt

        cfg = store.config.llm
        base, source = choose_api_base(api_base, cfg.api_base)
        settings = LLMSettings(
            model=str(model),
            api_base=base,
            api_base_from=source,
            timeout=cfg.timeout,
            max_tokens=cfg.max_tokens,
            redactor=for_config(store.config),
        )
        prompt = load_prompt("reflect", store.prompts_dir)
        cache = ResponseCache(store.cache_dir / "llm")
    runs: dict[str, Trajectory] = {}
    successes: list[Trajectory] = []
    wanted = {p.trajectory_id for p in todo}
    for t in store.iter_trajectories():
        if t.id in wanted:
            runs[t.id] = t
        if t.success is True:
            successes.append(t)
    redactor = for_config(store.config)  # a run stored with `ingest --no-redact` shapes no memory
    for p in todo:
        failed = runs.get(p.trajectory_id)
        if failed is None:
            report.skipped.append(f"{p.memory_id}: run {p.trajectory_id} is not in the store (ingest it)")
            continue
        mem = store.load_memory(p.memory_id)
        if not mem.script:
            report.skipped.append(
                f"{p.memory_id}: a {mem.kind} memory has no script to revise "
                "(distill with --policy proceduralization)"
            )
            continue
        success = similar_success(failed, successes, set(mem.provenance.trajectories))
        redact_all([failed] if success is None else [failed, success], redactor)
        if use_llm:
            from memp_cli.errors import LLMError

            try:
                r, usage = llm_reflection(
                    mem,
                    failed,
                    success,
                    settings=settings,
                    prompt=prompt,
                    cache=cache,
                    mock_response=mock_response,
                )
            except LLMError as e:
                if getattr(e, "is_settings_problem", False):
                    raise  # no key, unknown model: every other call would fail too
                report.skipped.append(f"{p.memory_id}: {str(e).splitlines()[0]} (nothing changed)")
                report.add_usage(getattr(e, "usage", None))
                continue
            report.add_usage(usage)
        else:
            r = builtin_reflection(mem, failed, success)
        report.reflections.append(r)
        if dry_run:
            report.unchanged += int(not r.changed)
            continue
        with store.lock:
            try:
                now = store.load_memory(p.memory_id)
            except (MemoryFileError, NotFoundError):
                now = None
            if now is None or now.script != mem.script:
                report.skipped.append(f"{p.memory_id}: changed while reflecting; left for the next run")
                continue
            if not r.changed:
                report.unchanged += 1
                Reflections(store).add(mem.id, failed.id, changed=False, why=p.why)
                continue
            now.script = r.after
            now.version += 1
            store.save_memory(now, event="reflect", why=r.diagnosis, trajectory=failed.id)
            Reflections(store).add(mem.id, failed.id, changed=True, why=p.why)
            report.written += 1
    return report
