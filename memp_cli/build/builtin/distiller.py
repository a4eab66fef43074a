"""The built-in distiller: a script from a trajectory without an LLM (deterministic, offline).

A floor, not an LLM: entity names and numbers become variables
(:mod:`memp_cli.build.builtin.entities`), fruitless navigation collapses into one
search step, the action skeleton stays, failures and loops become pitfalls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from memp_cli.build.builtin.actions import LOOK_RE, NAV_DIR_RE, SCAN_RE, Act
from memp_cli.build.builtin.entities import STEP_CHARS, Abstractor
from memp_cli.build.builtin.keywords import PROCEDURE_WORDS, extract_keywords, is_number
from memp_cli.model.script import MAX_SCRIPT_STEPS, Script
from memp_cli.model.text import cut, one_line
from memp_cli.model.trajectory import Trajectory

_MAX_PITFALLS = 10


class _Distiller(Abstractor):
    """The steps, pitfalls and preconditions of one builtin_script run."""

    # -- the step skeleton ----------------------------------------------------

    def _task_terms(self) -> list[str]:
        terms: dict[str, None] = dict.fromkeys(self.roles)
        for kw in extract_keywords(self.t.task, 12):
            for w in kw.split():
                if len(w) >= 3 and not is_number(w) and w not in PROCEDURE_WORDS:
                    terms[w] = None
        return list(terms)

    def astray(self) -> tuple[int | None, int | None]:
        """(index into acts of the last step that made progress, of the first step after it)."""
        terms = self._task_terms()
        term_res = [re.compile(rf"\b{re.escape(w)}", re.IGNORECASE) for w in terms]
        seen_actions: set[str] = set()
        seen_terms: set[int] = set()
        last: int | None = None
        for k, a in enumerate(self.acts):
            if a.kind == "think":
                continue
            key = a.raw.lower()
            new = key not in seen_actions
            seen_actions.add(key)
            if a.kind == "fail":
                continue
            mentions = any(r.search(a.raw) for r in term_res)
            newly_seen = [j for j, r in enumerate(term_res) if j not in seen_terms and r.search(a.obs)]
            seen_terms.update(newly_seen)
            tool_call = bool(re.match(r"^[\w.]+\s*\[", a.raw))  # search[...], click[...], Tool[...]
            if (new and mentions) or newly_seen or (new and tool_call):
                last = k
        start = 0 if last is None else last + 1
        nxt = next((k for k in range(start, len(self.acts)) if self.acts[k].kind != "think"), None)
        return last, nxt

    def _sought(self, a: Act) -> str:
        low = a.raw
        patterns = (
            r"^(?:take|pick up|get|grab)\s+(.+?)(?:\s+from\s+.+)?$",
            r"^(?:put|move|place|drop)\s+.+?\s+(?:in/on|in|on|into|onto|to)\s+(.+)$",
            r"^(?:clean|heat|cool|slice|wash|cut)\s+.+?\s+with\s+(.+)$",
            r"^(?:use|examine|open|toggle|turn on|activate|read|eat|focus on)\s+(.+)$",
        )
        for p in patterns:
            m = re.match(p, low, re.IGNORECASE)
            if m:
                return self.abstract(m.group(1).strip())
        return "target"

    @staticmethod
    def _group_end(acts: list[Act], k: int) -> int:
        """Index after the visit that starts with the nav act ``k`` (its open/close/examine/look)."""
        place = acts[k].place
        j = k + 1
        while j < len(acts):
            a = acts[j]
            if a.kind == "act":
                m = SCAN_RE.match(a.raw)
                if (m and m.group(1).strip().lower() == place) or LOOK_RE.match(a.raw):
                    j += 1
                    continue
            if a.kind == "fail":
                j += 1
                continue
            break
        return j

    def skeleton(self, acts: list[Act]) -> list[str]:
        steps: list[str] = []
        # leading thoughts: the plan, before the first real action
        for a in acts:
            if a.kind != "think":
                break
            if a.text and len(steps) < 2:
                steps.append("think: " + cut(self.abstract(a.text), 300))
        n = len(acts)
        k = 0
        while k < n:
            a = acts[k]
            if a.kind in ("think", "fail"):
                k += 1
                continue
            if a.kind != "nav":
                steps.append(self.abstract_action(a.raw))
                k += 1
                continue
            # a run of visits: [(start, end, fruitful)]
            visits: list[tuple[int, int, bool]] = []
            j = k
            while j < n and acts[j].kind == "nav":
                end = self._group_end(acts, j)
                nxt = next((x for x in range(end, n) if acts[x].kind not in ("think", "fail")), None)
                fruitful = nxt is not None and acts[nxt].kind == "act"
                visits.append((j, end, fruitful))
                if fruitful:
                    break
                # skip thoughts between visits
                j = end
                while j < n and acts[j].kind in ("think", "fail"):
                    j += 1
                if j < n and acts[j].kind != "nav":
                    break
            if len(visits) == 1:
                s, e, _ = visits[0]
                steps.extend(
                    self.abstract_action(x.raw) for x in acts[s:e] if x.kind == "act" or x is acts[s]
                )
            else:
                steps.append(self._search_step(acts, visits))
            k = visits[-1][1]
        return steps

    def _search_step(self, acts: list[Act], visits: list[tuple[int, int, bool]]) -> str:
        places: list[str] = []
        opened = False
        for s, e, _ in visits:
            label = self.abstract(acts[s].place)
            if label not in places:
                places.append(label)
            opened = opened or any(x.raw.lower().startswith("open ") for x in acts[s + 1 : e])
        s_last, e_last, fruitful = visits[-1]
        sought = "target"
        if fruitful:
            nxt = next((x for x in acts[e_last:] if x.kind not in ("think", "fail")), None)
            if nxt is not None:
                sought = self._sought(nxt)
        found = self.abstract(acts[s_last].place)
        shown = [p for p in places if p not in (sought, found)] or places
        listing = ", ".join(shown[:6]) + (", ..." if len(shown) > 6 else "")
        opening = ", opening any that are closed," if opened else ""
        if all(NAV_DIR_RE.match(acts[s].raw) for s, _, _ in visits):
            dirs = "/".join(dict.fromkeys(acts[s].place for s, _, _ in visits))
            what = f"the {sought} is found" if fruitful else "something useful turns up"
            return f"move ({dirs}) from room to room until {what}"
        where = found if re.fullmatch(r"\{location\d*\}", found) else "place"
        if not fruitful:
            return f"go to each likely {where} ({listing}){opening} looking for what the task needs"
        return f"go to each likely {where} ({listing}){opening} until the {sought} is found"

    # -- pitfalls and preconditions -----------------------------------------

    def pitfalls(self, astray: tuple[int | None, int | None]) -> list[str]:
        out: list[str] = []
        t = self.t
        if t.success is False:
            reward = f" (reward {t.reward:g})" if t.reward is not None else ""
            last, nxt = astray
            if nxt is None:
                end = next((a for a in reversed(self.acts) if a.kind != "think"), None)
                where = "it took no actions"
                if end is not None:
                    action = self.abstract_action(end.raw)
                    where = f"it ended at step {end.index + 1} (`{action}`) without reaching the goal"
                out.append(
                    f"the run did not succeed{reward}: {where}; check every requirement before finishing"
                )
            else:
                a = self.acts[nxt]
                since = "from the start" if last is None else "after that"
                action = self.abstract_action(a.raw) if a.kind != "fail" else cut(self.abstract(a.raw), 80)
                out.append(
                    f"the run did not succeed{reward}: it went astray at step {a.index + 1} "
                    f"(`{action}`) and made no progress {since}"
                )
            out.extend(self._unused_sightings())
        if t.success is not True:
            out.extend(self._loops())
        # failed actions, grouped by command and answer ("FlightSearch[...]" x 6: "There is no flight")
        groups: dict[tuple[str, str], list[Act]] = {}
        for a in self.acts:
            if a.kind == "fail" and a.raw:
                head = re.split(r"[\s\[(:]", a.raw.lower(), maxsplit=1)[0]
                answer = " ".join(re.findall(r"[a-z']+", a.obs.lower())[:3])
                groups.setdefault((head, answer), []).append(a)
        for group in groups.values():
            a = group[0]
            action = cut(self.abstract(a.raw, register=False), 80)
            obs = cut(one_line(self.abstract(a.obs[:600], register=False)), 160) or "(no answer)"
            times = f" ({len(group)} similar attempts, first at step {a.index + 1})" if len(group) > 1 else ""
            out.append(f"`{action}` did nothing here{times}: {obs}")
        return _dedupe(out)[:_MAX_PITFALLS]

    def _unused_sightings(self) -> list[str]:
        """Task objects the failed run saw but never acted on."""
        out: list[str] = []
        for noun, role in self.roles.items():
            if role != "object":
                continue
            word = re.compile(rf"\b{re.escape(noun)}\b", re.IGNORECASE)
            if any(word.search(a.raw) for a in self.acts if a.kind not in ("think", "fail")):
                continue
            seen_at = next((a for a in self.acts if a.kind != "think" and word.search(a.obs)), None)
            if seen_at is not None:
                out.append(
                    f"the {self.noun_ref[noun]} was in sight after step {seen_at.index + 1} "
                    f"(`{self.abstract_action(seen_at.raw)}`) but the run never took it"
                )
        return out

    def _loops(self) -> list[str]:
        seq = [(self.abstract_action(a.raw), one_line(a.obs)) for a in self.acts if a.kind not in ("think",)]
        out: list[str] = []
        i = 0
        while i < len(seq):
            best: tuple[int, int] | None = None
            for size in range(1, 5):
                if i + 2 * size > len(seq):
                    break
                block = seq[i : i + size]
                reps = 1
                while seq[i + reps * size : i + (reps + 1) * size] == block:
                    reps += 1
                need = 3 if size == 1 else 2
                if reps >= need and (best is None or reps * size > best[0] * best[1]):
                    best = (reps, size)
            if best is None:
                i += 1
                continue
            reps, size = best
            actions = " then ".join(f"`{a}`" for a, _ in seq[i : i + size])
            out.append(
                f"repeating {actions} ({reps} times, same result each time) got nowhere: change approach"
            )
            i += reps * size
        return out

    def preconditions(self) -> list[str]:
        out: list[str] = []
        for a in self.acts:
            if a.kind != "act":
                continue
            m = re.match(r"^(clean|heat|cool|slice|wash|cut)\s+(.+?)\s+with\s+(.+)$", a.raw, re.IGNORECASE)
            if m:
                out.append(
                    f"a {self.abstract(m.group(3))} is available to {m.group(1).lower()} "
                    f"the {self.abstract(m.group(2))}"
                )
                continue
            mu = re.match(r"^use\s+(.+)$", a.raw, re.IGNORECASE)
            if mu and self.entity_world:
                out.append(f"a {self.abstract(mu.group(1))} is in the room and can be used")
        first = next((a for a in self.acts if a.kind not in ("think",)), None)
        if first is not None and first.raw.lower().startswith("search["):
            out.append("you start on the search page")
        return _dedupe(out)[:10]

    def title(self) -> str:
        text = one_line(self.t.task)
        text = re.sub(r"^(?:your (?:first |next )?task is to:?|task:|instruction:)\s*", "", text, flags=re.I)
        text = self.abstract(text).rstrip(" .")
        return cut(text, 200) or "the task"


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _merge_steps(steps: list[str]) -> list[str]:
    """Merge consecutive duplicates; fold blocks repeated 3+ times into one step."""
    out: list[str] = []
    i = 0
    n = len(steps)
    while i < n:
        best: tuple[int, int] | None = None
        for size in range(1, 5):
            if i + 2 * size > n:
                break
            block = steps[i : i + size]
            reps = 1
            while steps[i + reps * size : i + (reps + 1) * size] == block:
                reps += 1
            if (reps >= 3 or (size == 1 and reps >= 2)) and (best is None or reps * size > best[0] * best[1]):
                best = (reps, size)
        if best is None:
            out.append(steps[i])
            i += 1
            continue
        reps, size = best
        block = steps[i : i + size]
        if size == 1:
            out.append(block[0] if reps < 3 else f"{block[0]} ({reps} times)")
        else:
            out.append(cut(f"repeat ({reps} times): " + "; then ".join(block), STEP_CHARS * 2))
        i += reps * size
    if len(out) > MAX_SCRIPT_STEPS:
        head = MAX_SCRIPT_STEPS // 2
        tail = MAX_SCRIPT_STEPS - head - 1
        out = [*out[:head], f"(… {len(out) - head - tail} more steps like these …)", *out[-tail:]]
    return out


def builtin_script(t: Trajectory) -> Script:
    """Distill a script from a trajectory without an LLM: deterministic, offline.

    A floor, not an LLM: entity names and numbers become variables, fruitless
    navigation collapses into one search step, failed actions and loops become
    pitfalls, and a failed run keeps only its steps up to where it went astray.
    """
    d = _Distiller(t)
    astray = d.astray() if t.success is False else (None, None)
    acts = d.acts
    if t.success is False and astray[1] is not None:
        prefix = acts[: astray[1]]
        if any(a.kind not in ("think", "fail") for a in prefix):
            acts = prefix
    title = d.title()
    steps = _merge_steps([s for s in d.skeleton(acts) if s.strip()])
    if not steps:
        steps = ["(the run took no usable actions)"]
    preconditions = d.preconditions()
    pitfalls = d.pitfalls(astray)
    texts = [title, *steps, *preconditions, *pitfalls]
    used = {m.group(1) for s in texts for m in re.finditer(r"\{([A-Za-z_]\w*)\}", s)}
    variables = {k: v for k, v in d.vars.values.items() if k in used}
    keywords = extract_keywords(t.task)
    return Script(title, steps, variables, preconditions, pitfalls, keywords)
