"""Discard (Mem^p's pruning): decide which memories leave the store, and why.

Rules, each with its settings in ``[prune]`` of ``memp.toml`` (0 turns a rule off):

- ``failing``: used at least ``min_uses`` times (with a known outcome) and even the upper end
  of the Wilson interval of its success rate (at ``confidence``) is below
  ``min_success_rate``: one unlucky run does not condemn a new memory (0 of 3 goes at the
  default 0.8 confidence; 1 of 3 stays).
- ``duplicate``: same kind and keys at least ``duplicate_similarity`` alike (cosine of the
  index's key vectors): the group keeps its best-rated memory (success rate with a uniform
  prior, then uses, then the newest), the others are merged into it: their counted outcomes
  are added to the keeper's and their runs to its provenance.
- ``stale``: not used for ``stale_days`` days (never used: counted from its creation).
- ``capacity``: at most ``max_memories`` memories; the lowest utility goes first.

:func:`plan` only decides (``memp prune --dry-run`` prints it); :func:`apply` moves each
decided memory to the trash with its rule and figures, so ``memp restore`` brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from memp_cli.config import PruneConfig
from memp_cli.model.memory import Memory
from memp_cli.retrieve.collapse import duplicate_groups
from memp_cli.update.outcomes import Ledger, Outcome, Usage

if TYPE_CHECKING:
    from memp_cli.index import Index
    from memp_cli.store.protocol import MemoryStore

RULES = ("failing", "duplicate", "stale", "capacity")
_Z = {0.5: 0.674, 0.68: 0.994, 0.8: 1.282, 0.9: 1.645, 0.95: 1.96, 0.99: 2.576}


# The rules are the store's [prune] settings (memp_cli.config.PruneConfig), taken as they are.
PruneRules = PruneConfig


def z_of(confidence: float) -> float:
    """The normal quantile of a two-sided ``confidence`` interval."""
    if confidence in _Z:
        return _Z[confidence]
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass
class Decision:
    id: str
    rule: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    merged_into: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "rule": self.rule, "reason": self.reason, **self.figures}
        if self.merged_into:
            d["merged_into"] = self.merged_into
        return d


def utility(u: Usage) -> float:
    """How much a memory has earned its place: its success rate under a uniform prior (an
    unused memory is 0.5, neither punished nor favoured)."""
    return u.success_rate()


def _age_days(stamp: str, now: datetime) -> float | None:
    if not stamp:
        return None
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (now - t).total_seconds() / 86400


def _rank_key(m: Memory, u: Usage) -> tuple[float, int, str, str]:
    """Best first when sorted descending: utility, uses, newest, then id for a stable order."""
    return (utility(u), u.uses, m.provenance.updated or m.provenance.created, m.id)


def plan(
    store: MemoryStore,
    index: Index,
    rules: PruneRules,
    *,
    only: tuple[str, ...] = RULES,
    now: datetime | None = None,
) -> list[Decision]:
    """What would go and why (nothing is changed). ``index`` must be fresh."""
    import numpy as np

    now = now or datetime.now(UTC)
    memories: list[Memory] = [m for m in store.iter_memories() if isinstance(m, Memory)]
    usage = Ledger.of(store).usage()
    use = {m.id: usage.get(m.id, Usage()) for m in memories}
    decided: dict[str, Decision] = {}

    if "failing" in only and rules.min_uses > 0:
        for m in memories:
            u = use[m.id]
            if u.judged < rules.min_uses:
                continue
            bound = u.upper_bound(z_of(rules.confidence))
            if bound < rules.min_success_rate:
                decided[m.id] = Decision(
                    m.id,
                    "failing",
                    f"{u.successes} of {u.judged} uses succeeded; even at best (upper {rules.confidence:.0%} "
                    f"bound {bound:.2f}) it is below {rules.min_success_rate}",
                    {"uses": u.judged, "successes": u.successes, "upper_bound": round(bound, 3)},
                )

    if "duplicate" in only and 0 < rules.duplicate_similarity <= 1 and len(memories) > 1:
        pos = {mid: p for p, mid in enumerate(index.state.ids)}
        alive = [m for m in memories if m.id not in decided and m.id in pos]
        if alive:
            labels = [index.state.labels[pos[m.id]] for m in alive]
            vecs = np.asarray(index.vectors(labels), dtype=np.float32)
            for group in duplicate_groups([m.kind for m in alive], vecs, rules.duplicate_similarity):
                members = sorted(
                    (alive[i] for i in group), key=lambda m: _rank_key(m, use[m.id]), reverse=True
                )
                keeper = members[0]
                for m in members[1:]:
                    sim = float(vecs[alive.index(m)] @ vecs[alive.index(keeper)])
                    decided[m.id] = Decision(
                        m.id,
                        "duplicate",
                        f"a near-duplicate of {keeper.id} (similarity {sim:.3f}), which is rated better",
                        {"similarity": round(sim, 4), "group_size": len(members)},
                        merged_into=keeper.id,
                    )

    if "stale" in only and rules.stale_days > 0:
        for m in memories:
            if m.id in decided:
                continue
            u = use[m.id]
            age = _age_days(u.last_used or m.stats.last_used or m.provenance.created, now)
            if age is not None and age > rules.stale_days:
                what = "last used" if (u.last_used or m.stats.last_used) else "created and never used"
                decided[m.id] = Decision(
                    m.id,
                    "stale",
                    f"{what} {age:.0f} days ago (limit {rules.stale_days})",
                    {"days": round(age, 1)},
                )

    if "capacity" in only and rules.max_memories > 0:
        left = [m for m in memories if m.id not in decided]
        over = len(left) - rules.max_memories
        if over > 0:
            left.sort(key=lambda m: _rank_key(m, use[m.id]))
            for m in left[:over]:
                decided[m.id] = Decision(
                    m.id,
                    "capacity",
                    f"the store holds more than {rules.max_memories} memories and this one has the "
                    f"lowest utility ({utility(use[m.id]):.2f})",
                    {"utility": round(utility(use[m.id]), 3)},
                )
    return sorted(decided.values(), key=lambda d: (RULES.index(d.rule), d.id))


def merge_groups(decisions: list[Decision]) -> dict[str, list[str]]:
    """Keeper id -> the duplicates merged into it."""
    merges: dict[str, list[str]] = {}
    for d in decisions:
        if d.merged_into:
            merges.setdefault(d.merged_into, []).append(d.id)
    return merges


@dataclass
class MergedScripts:
    """What a model made of each duplicate group (``memp prune --model``)."""

    scripts: dict[str, dict[str, Any]] = field(default_factory=dict)  # keeper -> merged script
    based_on: dict[str, dict[str, Any]] = field(default_factory=dict)  # keeper -> its script then
    failed: list[str] = field(default_factory=list)  # why a group kept the best-rated text
    model: str = ""


def llm_merges(
    store: MemoryStore,
    decisions: list[Decision],
    model: str,
    *,
    api_base: str | None = None,
    mock_response: str | None = None,
) -> MergedScripts:
    """Ask ``model`` to merge each group of duplicate scripts into one (no lock held). A group
    whose reply stays invalid after one repair keeps its best-rated text (reported)."""
    from memp_cli.backends import llm
    from memp_cli.build.prompting import load_prompt, merge_messages
    from memp_cli.errors import LLMError, MemoryFileError
    from memp_cli.model.script import SCRIPT_JSON_SCHEMA, script_from_reply
    from memp_cli.redact import for_config

    out = MergedScripts(model=model)
    from memp_cli.backends.llm.types import choose_api_base

    cfg = store.config.llm
    base, source = choose_api_base(api_base, cfg.api_base)
    settings = llm.LLMSettings(
        model=model, api_base=base, api_base_from=source, timeout=cfg.timeout, max_tokens=cfg.max_tokens
    )
    settings.redactor = for_config(store.config)
    prompt = load_prompt("merge", store.prompts_dir)
    cache = llm.ResponseCache(store.cache_dir / "llm")
    for keeper, dropped in merge_groups(decisions).items():
        try:
            group = [store.read_memory(m) for m in [keeper, *dropped]]
        except MemoryFileError as e:
            out.failed.append(f"{keeper}: {str(e).splitlines()[0]}")
            continue
        scripts = [m.script for m in group if m.script]
        if len(scripts) < 2 or not group[0].script:
            continue  # nothing to merge: the outcomes and runs are merged all the same
        try:
            merged, _ = llm.complete_json(
                merge_messages(scripts, prompt),
                settings,
                validate=script_from_reply,
                cache=cache,
                mock_response=mock_response,
                json_mode=True,
                schema=SCRIPT_JSON_SCHEMA,
            )
        except LLMError as e:
            if getattr(e, "is_settings_problem", False):
                raise
            out.failed.append(f"{keeper}: {str(e).splitlines()[0]} (kept the best-rated text)")
            continue
        out.scripts[keeper] = {**merged.to_dict(), "generator": f"{model} (LLM merge)"}
        out.based_on[keeper] = group[0].script
    return out


def apply(store: MemoryStore, decisions: list[Decision], merged: MergedScripts | None = None) -> None:
    """Carry out ``decisions`` (caller holds the store lock): merge the outcomes of duplicates
    into their keeper (and their runs into its provenance, and, with ``merged``, a model's merge
    of their scripts: a new version of the keeper), then move every decided memory to the trash
    with its rule and figures."""
    from memp_cli.update import trash

    merges = merge_groups(decisions)
    if merges:
        ledger = Ledger.of(store)
        moved = [
            Outcome(keeper, o.outcome, o.trajectory, source=f"merge:{o.memory}", time=o.time)
            for keeper, dropped in merges.items()
            for o in ledger
            if o.memory in dropped
        ]
        ledger.append(moved)
        for keeper, dropped in merges.items():
            mem = store.load_memory(keeper)
            runs = list(mem.provenance.trajectories)
            for mid in dropped:
                for t in store.load_memory(mid).provenance.trajectories:
                    if t not in runs:
                        runs.append(t)
            script = merged.scripts.get(keeper) if merged is not None else None
            if script is not None and merged is not None and mem.script != merged.based_on.get(keeper):
                script = None  # the keeper changed since the model saw it: keep it as it is
            if runs != mem.provenance.trajectories or script is not None:
                mem.provenance.trajectories = runs
                why = f"merged {', '.join(dropped)}"
                if script is not None and merged is not None:
                    mem.script = script
                    why += f" (scripts merged by {merged.model})"
                mem.version += 1
                store.save_memory(mem, event="prune.merge", why=why, merged=dropped)
    for d in decisions:
        trash.forget(store, d.id, by="memp prune", why=d.reason, details=d.to_dict())
    if decisions:
        store.journal(
            "prune",
            ids=[d.id for d in decisions],
            rules={r: sum(1 for d in decisions if d.rule == r) for r in RULES},
        )


def prune_store(store: MemoryStore) -> list[Decision]:
    """Sync the index and carry out the store's ``[prune]`` rules, under the lock (what
    ``memp cycle`` and ``memp eval replay`` run after their updates)."""
    from memp_cli.index import sync
    from memp_cli.store import store_embedder

    with store.lock:
        idx, _ = sync(store, store_embedder(store))
        decisions = plan(store, idx, store.config.prune)
        apply(store, decisions)
    return decisions
