"""Abstraction for the built-in distiller: the run's specifics become ``{variables}``.

Entities of ALFWorld-style worlds ("mug 1"), the nouns a task names (with their
role: object, receptacle, tool), places, URLs, items, dates, prices, ids, quoted
text, proper names and numbers with a unit are each given a variable name, in
order of first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from memp_cli.build.builtin.actions import classify
from memp_cli.build.builtin.keywords import BOILERPLATE, DATE_RE, STOPWORDS, words
from memp_cli.model.text import cut
from memp_cli.model.trajectory import Trajectory

# ALFWorld-style entities: "<noun> <number>" in actions of the ALFWorld grammar.
_ENTITY_ACTION_RE = re.compile(
    r"^(?:go to|take|put|move|open|close|use|examine|clean|heat|cool|slice|toggle|pick up|focus on|"
    r"look at|pour|connect|disconnect|drop|place|mix|activate|deactivate)\b",
    re.IGNORECASE,
)
_ENTITY_RE = re.compile(r"\b([a-z][a-z\-]*) (\d{1,3})(?![\d.,]?\d)\b")
_NOT_ENTITY = words(
    """go to take put move open close use examine clean heat cool slice toggle pick up focus on look at in
    from with the a an of and or for into onto than by is are day page wait step level number version
    index option size pack hours hour minutes x then under over about approximately"""
)

_TASK_TEMPLATES: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (
        re.compile(
            r"^(?:put|place) (?:a|an|some|the) (?:clean|hot|heated|cool|cold|cooled|warm|washed) (\w+) "
            r"(?:in|on|in/on|into|onto) (?:a |an |the |some )?(\w+)"
        ),
        ("object", "receptacle"),
    ),
    (
        re.compile(
            r"^(?:clean|heat|cool|wash|warm|chill) (?:a |an |some |the )?(\w+) and put (?:it|them) "
            r"(?:in|on|in/on|into|onto) (?:a |an |the |some )?(\w+)"
        ),
        ("object", "receptacle"),
    ),
    (
        re.compile(
            r"^(?:find |put |place )?two (\w+?)s? (?:and put them )?(?:in|on|in/on|into|onto) "
            r"(?:a |an |the |some )?(\w+)"
        ),
        ("object", "receptacle"),
    ),
    (
        re.compile(
            r"^(?:look at|examine) (?:a |an |the |some )?(\w+) (?:under|with|using|by) (?:a |an |the )?(\w+)"
        ),
        ("object", "tool"),
    ),
    (
        re.compile(
            r"^(?:find |take |get |put |place )(?:a |an |some |the )?(\w+) (?:and put it )?"
            r"(?:in|on|in/on|into|onto) (?:a |an |the |some )?(\w+)"
        ),
        ("object", "receptacle"),
    ),
]

_URL_RE = re.compile(r"\bhttps?://[^\s\]\)>,;\"']+")
ITEM_RE = re.compile(r"\bB0[0-9A-Z]{8}\b")
_TIME_RE = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
_PRICE_RE = re.compile(r"\$\s?\d[\d,]*(?:\.\d+)?|\b\d[\d,]*(?:\.\d+)? (?:dollars|usd)\b", re.IGNORECASE)
_ID_RE = re.compile(r"\b[A-Z]{1,3}\d{5,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_QUOTED_RE = re.compile(r"'([^'\n{}]{1,60})'(?!\w)|\"([^\"\n{}]{1,60})\"")
_NAME_RE = re.compile(r"(?:(?:St|Mt|Ft)\.\s+)?[A-Z][\w'’\-]*(?:\s+(?:(?:St|Mt|Ft)\.\s+)?[A-Z][\w'’\-]*)*")
_NUMBER_IN_TASK_RE = re.compile(r"(?<![\w.{$\-])(\d+(?:\.\d+)?)[\s-]+([a-z]{3,})")
_MONTHS = words("january february march april may june july august september october november december")
_BUTTONS = frozenset(
    {"buy now", "< prev", "next >", "back to search", "description", "features", "reviews",
     "attributes", "prev", "next", "search", "< back", "buy"}
)  # fmt: skip
_MAX_VARS_PER_KIND = 9
STEP_CHARS = 240


class _Vars:
    """Variables in order of first use; one name per (kind, value)."""

    def __init__(self) -> None:
        self.by_value: dict[tuple[str, str], str] = {}
        self.values: dict[str, str] = {}
        self.count: dict[str, int] = {}

    def name(self, kind: str, value: str) -> str | None:
        key = (kind, value)
        if key in self.by_value:
            return self.by_value[key]
        n = self.count.get(kind, 0) + 1
        if n > _MAX_VARS_PER_KIND:
            return None
        self.count[kind] = n
        name = kind if n == 1 else f"{kind}{n}"
        self.by_value[key] = name
        self.values[name] = value
        return name

    def ref(self, kind: str, value: str, fallback: str) -> str:
        name = self.name(kind, value)
        return "{" + name + "}" if name else fallback


class Abstractor:
    """One run's entity roles and variables, and the abstraction of its text."""

    def __init__(self, t: Trajectory) -> None:
        self.t = t
        self.acts = classify(t)
        self.vars = _Vars()
        task_l = " ".join(t.task.lower().split()).rstrip(".!? ")
        task_l = BOILERPLATE.sub("", task_l, count=1)
        # entity nouns seen in ALFWorld-grammar actions
        nouns: dict[str, None] = {}
        for a in self.acts:
            if a.kind == "think":
                continue
            if _ENTITY_ACTION_RE.match(a.raw) and "[" not in a.raw:
                for m in _ENTITY_RE.finditer(a.raw.lower()):
                    if m.group(1) not in _NOT_ENTITY:
                        nouns[m.group(1)] = None
        self.entity_world = bool(nouns)
        if self.entity_world:  # the other entities the run saw ("you see a countertop 1, ...")
            seen = " ".join([t.initial_observation, *(a.obs for a in self.acts)]).lower()
            for m in re.finditer(r"\b(?:a|an|the) ([a-z][a-z\-]*) (\d{1,3})\b", seen):
                if m.group(1) not in _NOT_ENTITY:
                    nouns[m.group(1)] = None
        # roles of the nouns the task names
        self.roles: dict[str, str] = {}
        for pattern, roles in _TASK_TEMPLATES:
            tm = pattern.match(task_l)
            if tm:
                for noun, role in zip(tm.groups(), roles, strict=True):
                    self.roles.setdefault(noun, role)
                break
        if not self.roles and self.entity_world:
            task_words = re.findall(r"[a-z][a-z\-]*", task_l)
            for noun in nouns:
                if noun in task_words:
                    self.roles[noun] = self._usage_role(noun)
        for noun in self.roles:
            nouns.setdefault(noun, None)
        self.nouns = sorted(nouns, key=lambda n: (-len(n), n))
        self.locations: dict[str, str] = {}  # entity instance -> variable reference
        self._task_refs()
        self._find_locations()
        self._compile()

    # -- roles and variables ------------------------------------------------

    def _usage_role(self, noun: str) -> str:
        for a in self.acts:
            low = a.raw.lower()
            if re.match(rf"^(?:take|pick up)\s+{noun}\b", low):
                return "object"
            if re.match(rf"^(?:put|move|place)\s+.+?\s+(?:in/on|in|on|to|into|onto)\s+{noun}\b", low):
                return "receptacle"
            if re.match(rf"^use\s+{noun}\b", low) or re.search(rf"\bwith\s+{noun}\b", low):
                return "tool"
        return "object"

    def _role_instance(self, noun: str, role: str) -> str:
        """The instance ("drawer 1") that played the role: put target, used tool; else the first seen."""
        n = re.escape(noun)
        if role == "receptacle":
            pattern = rf"^(?:put|move|place)\s+.+?\s+(?:in/on|in|on|to|into|onto)\s+({n} \d+)\b"
        else:
            pattern = rf"^(?:use\s+|(?:clean|heat|cool|slice)\s+.+?\s+with\s+)({n} \d+)\b"
        for a in self.acts:
            if a.kind != "fail" and (m := re.match(pattern, a.raw.lower())):
                return m.group(1)
        for a in self.acts:
            if m := re.search(rf"\b{n} \d+\b", a.raw.lower()):
                return m.group(0)
        return noun

    def _task_refs(self) -> None:
        self.noun_ref: dict[str, str] = {}
        # receptacles and tools are one instance ("drawer 1"); other drawers stay "drawer"
        self.instance_of: dict[str, str] = {}
        order = sorted(self.roles, key=lambda n: (self.t.task.lower().find(n), n))
        for noun in order:
            role = self.roles[noun]
            value = noun if role == "object" else self._role_instance(noun, role)
            self.noun_ref[noun] = self.vars.ref(role, value, noun)
            if value != noun:
                self.instance_of[noun] = value

    def _find_locations(self) -> None:
        """Places where the agent did something with a task entity become {location}s."""
        if not self.entity_world:
            return
        here = ""
        for a in self.acts:
            low = a.raw.lower()
            if a.kind == "nav":
                here = a.place
                continue
            if a.kind in ("think", "fail"):
                continue
            m = re.match(r"^(?:take|pick up)\s+([a-z][a-z\-]*)(?: \d+)?\s+from\s+(?:the\s+)?(.+)$", low)
            place = ""
            if m and m.group(1) in self.roles:
                place = m.group(2).strip()
            elif (mu := re.match(r"^use\s+([a-z][a-z\-]*)", low)) and mu.group(1) in self.roles:
                place = here
            if not place or not re.fullmatch(r"[a-z][a-z\-]* \d+", place):
                continue
            if place.split()[0] in self.roles or place in self.locations:
                continue
            self.locations[place] = self.vars.ref("location", place, place.split()[0])

    def _compile(self) -> None:
        alt = "|".join(re.escape(n) for n in self.nouns)
        self.entity_re = re.compile(rf"\b({alt}) (\d+)\b", re.IGNORECASE) if alt else None
        # "cabinet (1-4)", "fridges (1)", "a spraybottle (2)" in ReAct thoughts
        self.entity_paren_re = (
            re.compile(r"\b([a-z][a-z\-]*) \(\d+(?:\s*-\s*\d+)?\)", re.IGNORECASE) if alt else None
        )
        role_alt = "|".join(re.escape(n) for n in sorted(self.roles, key=lambda n: (-len(n), n)))
        self.bare_re = (
            re.compile(rf"(?<![{{\w])({role_alt})(s|es)?(?![\w}}])", re.IGNORECASE) if role_alt else None
        )
        # proper names and numbers (with their unit) from the task
        names: dict[str, None] = {}
        text = DATE_RE.sub(" ", self.t.task)
        for m in _NAME_RE.finditer(text):
            name = m.group(0).strip()
            before = text[: m.start()].rstrip()
            sentence_start = not before or before[-1] in ".!?:\n"
            words = name.split()
            if sentence_start and (len(words) == 1 or words[0].lower() in STOPWORDS):
                words = words[1:]
            while words and words[0].lower() in STOPWORDS | _MONTHS:
                words = words[1:]
            name = " ".join(words)
            if len(name) >= 2 and name.lower() not in STOPWORDS | _MONTHS and name != "I":
                names[name] = None
        self.names = sorted(names, key=lambda n: (-len(n), n))
        self.name_re = (
            re.compile(r"(?<![\w{])(" + "|".join(re.escape(n) for n in self.names) + r")(?![\w}])")
            if self.names
            else None
        )
        units: dict[tuple[str, str], None] = {}
        for m in _NUMBER_IN_TASK_RE.finditer(_PRICE_RE.sub(" ", DATE_RE.sub(" ", self.t.task))):
            units[(m.group(1), m.group(2)[:3].lower())] = None
        self.task_numbers = list(units)

    # -- abstraction ----------------------------------------------------------

    def abstract(self, text: str, *, register: bool = True) -> str:
        """Replace the run's specifics in ``text`` with variables (or bare types)."""
        v = self.vars

        def kind_ref(kind: str) -> Callable[[re.Match[str]], str]:
            def repl(m: re.Match[str]) -> str:
                value = m.group(0)
                if not register and (kind, value) not in v.by_value:
                    return "<" + kind + ">"
                return v.ref(kind, value, "<" + kind + ">")

            return repl

        text = _URL_RE.sub(kind_ref("url"), text)
        text = ITEM_RE.sub(kind_ref("item"), text)
        text = DATE_RE.sub(kind_ref("date"), text)
        text = _TIME_RE.sub(kind_ref("time"), text)
        text = _PRICE_RE.sub(kind_ref("price"), text)
        text = _ID_RE.sub(kind_ref("id"), text)
        if self.entity_re is not None:
            text = self.entity_re.sub(self._entity_repl, text)
        if self.entity_paren_re is not None:
            text = self.entity_paren_re.sub(lambda m: self._noun_repl(m.group(1)), text)
        if self.bare_re is not None:
            text = self.bare_re.sub(lambda m: self.noun_ref[m.group(1).lower()] + (m.group(2) or ""), text)

        def quoted(m: re.Match[str]) -> str:
            value = m.group(1) if m.group(1) is not None else m.group(2)
            if "{" in value or not re.search(r"[A-Za-z0-9]", value):
                return m.group(0)
            ref = v.ref("text", value, "") if register or ("text", value) in v.by_value else ""
            return ref or m.group(0)

        text = _QUOTED_RE.sub(quoted, text)
        if self.name_re is not None:
            text = self.name_re.sub(lambda m: v.ref("name", m.group(1), m.group(1)), text)
        for number, unit in self.task_numbers:
            pattern = rf"(?<![\w.{{$\-]){re.escape(number)}(?=[\s-]+{unit})"
            text = re.sub(pattern, lambda m: v.ref("number", m.group(0), m.group(0)), text)
        return text

    def _noun_repl(self, noun: str) -> str:
        low = noun.lower()
        for stem, suffix in ((low, ""), (low[:-1], "s"), (low[:-2], "es")):
            if stem in self.noun_ref:
                return self.noun_ref[stem] + suffix
        return noun

    def _entity_repl(self, m: re.Match[str]) -> str:
        noun = m.group(1).lower()
        instance = f"{noun} {m.group(2)}"
        if noun in self.noun_ref and self.instance_of.get(noun, instance) == instance:
            return self.noun_ref[noun]
        if instance in self.locations:
            return self.locations[instance]
        return m.group(1)

    def abstract_action(self, raw: str) -> str:
        """An action in general form: WebShop-style commands get their own variables."""
        m = re.match(r"^(search|click)\s*\[(.*)\]\s*$", raw, re.IGNORECASE | re.DOTALL)
        if m:
            verb, arg = m.group(1).lower(), m.group(2).strip()
            if verb == "search":
                return f"search[{self.vars.ref('query', arg, '<query>')}]"
            if ITEM_RE.fullmatch(arg):
                return f"click[{self.vars.ref('item', arg, '<item>')}]"
            if arg.lower() in _BUTTONS:
                return f"click[{arg}]"
            return f"click[{self.vars.ref('option', arg, '<option>')}]"
        return cut(self.abstract(raw), STEP_CHARS)
