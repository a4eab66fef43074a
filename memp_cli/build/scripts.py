"""Scripts: the abstract procedures memp distills from trajectories (Mem^p).

A :class:`Script` is what an LLM (or the built-in offline distiller) makes of one
finished run: a general title with ``{variables}``, ordered general steps, what
each variable stood for, preconditions, pitfalls and the task's key phrases.

This module holds

- the schema (:class:`Script`, :data:`SCRIPT_JSON_SCHEMA`) and the validation of
  an LLM's reply (:func:`script_from_reply`, :func:`keywords_from_reply`);
- :func:`builtin_script`, a deterministic distiller that needs no network and no
  key: a floor that abstracts entities into variables, collapses fruitless
  navigation, keeps the action skeleton and turns failures into pitfalls;
- :func:`extract_keywords`, the built-in keyword extractor;
- the prompts shipped in ``memp_cli/build/prompts/`` (:func:`load_prompt`,
  :func:`script_messages`, :func:`keyword_messages`) and :func:`trim_steps`,
  the concrete steps kept in a proceduralization memory.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from memp_cli.errors import ConfigError
from memp_cli.model.trajectory import Trajectory

MAX_SCRIPT_STEPS = 40
MAX_TEXT_CHARS = 2000
MAX_LIST_ITEMS = 40
MAX_KEYWORDS = 6

# --------------------------------------------------------------------------
# The script schema
# --------------------------------------------------------------------------

SCRIPT_KEYS = ("title", "steps", "variables", "preconditions", "pitfalls", "keywords")


@dataclass(slots=True)
class Script:
    """An abstract procedure distilled from one trajectory."""

    title: str
    steps: list[str]
    variables: dict[str, str] = field(default_factory=dict)
    preconditions: list[str] = field(default_factory=list)
    pitfalls: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "steps": list(self.steps),
            "variables": dict(self.variables),
            "preconditions": list(self.preconditions),
            "pitfalls": list(self.pitfalls),
            "keywords": list(self.keywords),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Script:
        """Strict inverse of :meth:`to_dict`: every key, exact types, nothing else."""
        if not isinstance(d, dict):
            raise ValueError(f"a script must be an object, got {type(d).__name__}")
        missing = [k for k in SCRIPT_KEYS if k not in d]
        if missing:
            raise ValueError(f"script is missing {', '.join(repr(k) for k in missing)}")
        # "generator" is provenance memp adds to a memory's [script] (who wrote it).
        unknown = sorted(str(k) for k in d if k not in SCRIPT_KEYS and k != "generator")
        if unknown:
            raise ValueError(f"script has unknown key(s) {', '.join(repr(k) for k in unknown)}")
        title = d["title"]
        if not isinstance(title, str) or not title.strip():
            raise ValueError('"title" must be a non-empty string')
        steps = d["steps"]
        if not _is_str_list(steps) or not steps:
            raise ValueError('"steps" must be a non-empty list of strings')
        variables = d["variables"]
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise ValueError('"variables" must be an object mapping names to strings')
        for key in ("preconditions", "pitfalls", "keywords"):
            if not _is_str_list(d[key]):
                raise ValueError(f'"{key}" must be a list of strings')
        return cls(
            title=title,
            steps=list(steps),
            variables=dict(variables),
            preconditions=list(d["preconditions"]),
            pitfalls=list(d["pitfalls"]),
            keywords=list(d["keywords"]),
        )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_STR_LIST = {"type": "array", "items": {"type": "string"}}

SCRIPT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {
            "type": "string",
            "description": "one line: the general task with {variables}, "
            'e.g. "clean a {object} and put it in/on a {receptacle}"',
        },
        "steps": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": MAX_SCRIPT_STEPS,
            "description": "ordered general steps using the {variables}",
        },
        "variables": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "variable name (no braces) -> what it stood for in this run, "
            'e.g. {"object": "mug", "receptacle": "coffeemachine 1"}',
        },
        "preconditions": {**_STR_LIST, "description": "what must hold before the procedure applies"},
        "pitfalls": {**_STR_LIST, "description": "mistakes the run shows or invites, and how to avoid them"},
        "keywords": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": MAX_KEYWORDS,
            "description": "2-6 short key phrases of the task, lowercase",
        },
    },
    "required": list(SCRIPT_KEYS),
    "additionalProperties": False,
}

# --------------------------------------------------------------------------
# Validating an LLM's reply
# --------------------------------------------------------------------------

_NUMBERING_RE = re.compile(
    r"^\s*(?:(?:step\s*)?\d{1,3}\s*[.):\-]|step\s*\d{1,3}\b|[-*•·]\s)\s*", re.IGNORECASE
)
_ITEM_KEYS = ("step", "text", "action", "description", "instruction", "content", "value")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][\w\-]*$")


def _check_len(text: str, what: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is {len(text)} characters long (the limit is {MAX_TEXT_CHARS})")
    return text


def _reply_items(value: Any, key: str, *, strip_numbers: bool) -> list[str]:
    """A list of strings from a reply field, tolerating small deviations."""
    if value is None:
        return []
    if isinstance(value, str):
        lines = value.splitlines() if strip_numbers else [value]
        value = [ln for ln in lines if ln.strip()]
    if not isinstance(value, list):
        raise ValueError(f'"{key}" must be a list of strings, got {type(value).__name__}')
    if len(value) > MAX_LIST_ITEMS:
        raise ValueError(f'"{key}" has {len(value)} items (the limit is {MAX_LIST_ITEMS})')
    out: list[str] = []
    for i, item in enumerate(value, 1):
        if isinstance(item, dict):
            texts = [item[k] for k in _ITEM_KEYS if isinstance(item.get(k), str)]
            if not texts:
                raise ValueError(f'"{key}" item {i} is an object without a "step" or "text" string')
            item = texts[0]
        if not isinstance(item, str):
            raise ValueError(f'"{key}" must be a list of strings (item {i} is {type(item).__name__})')
        _check_len(item, f'"{key}" item {i}')
        text = " ".join(item.split())
        if strip_numbers:
            text = _NUMBERING_RE.sub("", text, count=1).strip()
        if not text:
            raise ValueError(f'"{key}" item {i} is empty')
        out.append(text)
    return out


def script_from_reply(obj: Any) -> Script:
    """Validate an LLM's parsed JSON reply as a :class:`Script`.

    Tolerated: the script wrapped as ``{"script": {...}}``; steps given as
    ``{"step": ...}`` objects, as numbered or bulleted strings, or as one
    multi-line string; missing or null optional lists; a keyword string with
    commas; variable names written with braces; numeric variable values;
    missing keywords (derived from the title). Raises :class:`ValueError` with
    a short, precise reason otherwise.
    """
    if isinstance(obj, dict) and "title" not in obj and isinstance(obj.get("script"), dict):
        obj = obj["script"]
    if not isinstance(obj, dict):
        raise ValueError(f"the reply must be a JSON object, got {type(obj).__name__}")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ValueError('"title" must be a non-empty string')
    _check_len(title, '"title"')
    title = " ".join(title.split())

    if "steps" not in obj or obj["steps"] is None:
        raise ValueError('"steps" is missing: it must be a non-empty list of strings')
    steps = _reply_items(obj["steps"], "steps", strip_numbers=True)
    if not steps:
        raise ValueError('"steps" must be a non-empty list of strings')
    if len(steps) > MAX_SCRIPT_STEPS:
        raise ValueError(f'"steps" has {len(steps)} items (the limit is {MAX_SCRIPT_STEPS})')

    raw_vars = obj.get("variables")
    variables: dict[str, str] = {}
    if raw_vars is not None:
        if not isinstance(raw_vars, dict):
            raise ValueError('"variables" must be an object mapping names to strings')
        for name, value in raw_vars.items():
            clean = str(name).strip().strip("{}").strip()
            if not _VAR_NAME_RE.match(clean):
                raise ValueError(f'"variables" has an invalid name {name!r}')
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f'"variables" value for {clean!r} must be a string')
            variables[clean] = _check_len(str(value), f'"variables" value for {clean!r}')

    preconditions = _reply_items(obj.get("preconditions"), "preconditions", strip_numbers=True)
    pitfalls = _reply_items(obj.get("pitfalls"), "pitfalls", strip_numbers=True)

    raw_kw = obj.get("keywords")
    if isinstance(raw_kw, str):
        raw_kw = [k for k in re.split(r"[,;\n]", raw_kw) if k.strip()]
    keywords = _dedupe_keywords(_reply_items(raw_kw, "keywords", strip_numbers=False))
    if not keywords:
        keywords = extract_keywords(fill_variables(title, variables))
    return Script(title, steps, variables, preconditions, pitfalls, keywords[:MAX_KEYWORDS])


def _dedupe_keywords(words: Iterable[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for w in words:
        k = " ".join(w.split()).strip(" .,;:").lower()
        if k and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def keywords_from_reply(obj: Any) -> list[str]:
    """Validate ``{"keywords": [...]}`` (or a bare list); :class:`ValueError` with the reason."""
    if isinstance(obj, dict):
        if "keywords" not in obj:
            raise ValueError('the reply must be an object with a "keywords" list')
        obj = obj["keywords"]
    if isinstance(obj, str):
        obj = [k for k in re.split(r"[,;\n]", obj) if k.strip()]
    if not isinstance(obj, list):
        raise ValueError(f'"keywords" must be a list of strings, got {type(obj).__name__}')
    for i, k in enumerate(obj, 1):
        if not isinstance(k, str):
            raise ValueError(f'"keywords" must be a list of strings (item {i} is {type(k).__name__})')
        if len(k) > 200:
            raise ValueError(f'"keywords" item {i} is {len(k)} characters long (the limit is 200)')
    keywords = _dedupe_keywords(obj)
    if not keywords:
        raise ValueError('"keywords" is empty')
    return keywords[:MAX_KEYWORDS]


def fill_variables(text: str, variables: dict[str, str]) -> str:
    """Put each variable's recorded value back in place of ``{name}``."""
    return re.sub(r"\{([A-Za-z_][\w\-]*)\}", lambda m: variables.get(m.group(1), m.group(1)), text)


# --------------------------------------------------------------------------
# Built-in keyword extraction
# --------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _words(
    """a an the and or but if then than so as at by for from in into on onto of off to with without
    within under over up down out about above below between through during before after again also
    it its it's itself them they their there here this that these those which who whom what when where
    why how all any each every both either some such no nor not only own same too very just can could
    should would will shall may might must do does did done doing be is are was were been being am
    has have had having i i'm me my mine we our ours us you your yours he him his she her hers
    let's lets please help want wanted need needs needed like would looking look for get got give
    make sure put place take move go going use using used located found provided helpful one's
    something thing things kind sort while until once first second next finally also again whether
    there's that's let know tell show s t n pick spanning covering choose around exactly starting
    heading departing traveling travelling towards toward assist crafting arrange ordering focus
    different"""
)
# Words that say HOW the task is done: kept even though some are common verbs.
_PROCEDURE_WORDS = _words(
    """clean heat cool hot cold warm chill wash examine look slice cut chop dice find buy purchase
    order boil melt freeze cook fry bake grow mix measure sort compare plan book search read open
    close turn two three four pair couple dozen both"""
)
_NUMBER_WORDS = _words("two three four five six seven eight nine ten pair couple dozen")
_UNITS = _words(
    """fl oz ounce ounces inch inches in ft foot feet yard yards pack packs count ct pcs pc piece pieces
    lb lbs pound pounds ml l liter liters litre gallon gallons gb tb mb mm cm m meter meters kg g gram
    grams mg x w watt watts v volt volts mah hz day days night nights week weeks hour hours people
    person persons adults sets set cups cup"""
)
_BOILERPLATE = re.compile(
    r"^(?:your (?:first |next )?task is to:?|task:|instruction:|please|can you|could you|"
    r"i(?:'m| am) looking for|i(?: would|'d) like(?: to (?:buy|get|have))?|i (?:want|need)(?: to buy)?|"
    r"buy me|find me|get me|help me)\s+",
    re.IGNORECASE,
)
_PRICE_CLAUSE = re.compile(r",?\s*and price (?:lower|less) than \$?[\d.,]+ dollars\b", re.IGNORECASE)
_ABBREV = frozenset({"st", "ste", "mt", "ft", "dr", "mr", "mrs", "ms", "vs", "no"})
_TOKEN_EDGE = "\"'“”‘’()[]<>*_`"


def _is_number(tok: str) -> bool:
    return bool(re.fullmatch(r"[$#]?\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|x|%)?", tok)) or tok in _NUMBER_WORDS


def extract_keywords(task: str, max_keywords: int = MAX_KEYWORDS) -> list[str]:
    """2-6 short key phrases of a task, in task order, deduplicated.

    ``"heat some egg and put it in garbagecan."`` -> ``["heat", "egg", "garbagecan"]``.
    Stopwords and boilerplate go; verbs that carry the procedure (clean, heat,
    cool, examine, slice, find, buy, ...) and counts (two, pair) stay as their
    own keys; a number keeps its unit ("6.76 fl oz"); longer runs of content
    words are cut into phrases of at most three words.
    """
    text = _PRICE_CLAUSE.sub("", task.lower().replace("’", "'"))
    text = _DATE_RE.sub(",", text)  # dates are specifics, not keys
    text = re.sub(r"[()\[\]{}]", " , ", text)
    text = " ".join(text.split())
    while True:
        stripped = _BOILERPLATE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    chunks: list[list[str]] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            chunks.append(list(current))
            current.clear()

    tokens = text.split()
    i = 0
    while i < len(tokens):
        raw = tokens[i]
        i += 1
        tok = raw.strip(_TOKEN_EDGE)
        boundary = bool(re.search(r"[,.;:!?)\]]['\"”’]?$", tok)) and not _is_number(tok)
        word = tok.rstrip(",.;:!?")
        word = word.strip(_TOKEN_EDGE)
        if word in _ABBREV and tok.endswith(".") and i < len(tokens):
            current.append(word + ".")  # "st. petersburg"
            continue
        if not word or not re.search(r"[a-z0-9]", word):
            flush()
            continue
        if word == "look" and i < len(tokens) and tokens[i].strip(_TOKEN_EDGE) == "at":
            flush()
            chunks.append(["look"])
        elif word in _STOPWORDS and word not in _PROCEDURE_WORDS:
            flush()
        elif _is_number(word.rstrip(".")) or word.startswith("$"):
            flush()
            phrase = [word.rstrip(".")]
            while i < len(tokens) and len(phrase) < 3 and not boundary:
                nxt_raw = tokens[i].strip(_TOKEN_EDGE)
                nxt = nxt_raw.rstrip(",.;:!?")
                if nxt not in _UNITS:
                    break
                phrase.append(nxt)
                i += 1
                boundary = nxt_raw != nxt
            chunks.append(phrase)
        elif word in _PROCEDURE_WORDS:
            flush()
            chunks.append([word])
        elif len(word) > 1 or word.isdigit():
            current.append(word)
        if boundary:
            flush()
    flush()

    phrases: list[str] = []
    for chunk in chunks:
        if len(chunk) <= 3:
            phrases.append(" ".join(chunk))
            continue
        # the head noun phrase comes last in English: keep the last three words
        # together and cut the modifiers before them into pairs
        rest = chunk[:-3]
        phrases.extend(" ".join(rest[j : j + 2]) for j in range(0, len(rest), 2))
        phrases.append(" ".join(chunk[-3:]))
    return _dedupe_keywords(phrases)[: max(0, max_keywords)]


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    """Cut to at most ``limit`` characters, marking the cut with "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    return text[: limit - 1].rstrip() + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------
# The built-in distiller
# --------------------------------------------------------------------------

_FAIL_START = re.compile(
    r"^(?:nothing happens|invalid action|no known action|you can't|you cannot|can't |cannot |"
    r"i don't understand|i don't know|i'm not sure what you mean|unknown (?:action|command)|"
    r"that's not a |there is no |no valid information|ambiguous request|error\b|no results|not found)",
    re.IGNORECASE,
)
_FAIL_ANY = re.compile(
    r"\bis not (?:a )?valid\b|\bis already (?:open|closed|on|off|activated|deactivated)\b", re.IGNORECASE
)


def _is_failed(observation: str) -> bool:
    obs = observation.strip()
    return bool(_FAIL_START.match(obs) or _FAIL_ANY.search(obs[:200]))


_THINK_RE = re.compile(r"^\s*think\s*(?::|\[)\s*(.*?)\s*\]?\s*$", re.IGNORECASE | re.DOTALL)
_DIRECTIONS = "north|south|east|west|northeast|northwest|southeast|southwest|up|down|left|right|forward|back"
_NAV_DIR_RE = re.compile(rf"^(?:go|move|walk|run|head)\s+(?:to\s+the\s+)?({_DIRECTIONS})\b", re.IGNORECASE)
_NAV_RE = re.compile(r"^(?:go to|goto|teleport to|walk to|travel to|enter)\s+(?:the\s+)?(.+)$", re.IGNORECASE)
_SCAN_RE = re.compile(r"^(?:open|close|examine|look at|look in|search)\s+(?:the\s+)?(.+)$", re.IGNORECASE)
_LOOK_RE = re.compile(r"^(?:look|look around|inventory|i)$", re.IGNORECASE)

# ALFWorld-style entities: "<noun> <number>" in actions of the ALFWorld grammar.
_ENTITY_ACTION_RE = re.compile(
    r"^(?:go to|take|put|move|open|close|use|examine|clean|heat|cool|slice|toggle|pick up|focus on|"
    r"look at|pour|connect|disconnect|drop|place|mix|activate|deactivate)\b",
    re.IGNORECASE,
)
_ENTITY_RE = re.compile(r"\b([a-z][a-z\-]*) (\d{1,3})(?![\d.,]?\d)\b")
_NOT_ENTITY = _words(
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
_ITEM_RE = re.compile(r"\bB0[0-9A-Z]{8}\b")
_DATE_RE = re.compile(
    r"\b\d{4}-\d{2}-\d{2}\b|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? "
    r"\d{1,2}(?:st|nd|rd|th)?(?:,? \d{4})?\b|\b\d{1,2}(?:st|nd|rd|th)? of "
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*(?:,? \d{4})?\b",
    re.IGNORECASE,
)
_TIME_RE = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
_PRICE_RE = re.compile(r"\$\s?\d[\d,]*(?:\.\d+)?|\b\d[\d,]*(?:\.\d+)? (?:dollars|usd)\b", re.IGNORECASE)
_ID_RE = re.compile(r"\b[A-Z]{1,3}\d{5,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_QUOTED_RE = re.compile(r"'([^'\n{}]{1,60})'(?!\w)|\"([^\"\n{}]{1,60})\"")
_NAME_RE = re.compile(r"(?:(?:St|Mt|Ft)\.\s+)?[A-Z][\w'’\-]*(?:\s+(?:(?:St|Mt|Ft)\.\s+)?[A-Z][\w'’\-]*)*")
_NUMBER_IN_TASK_RE = re.compile(r"(?<![\w.{$\-])(\d+(?:\.\d+)?)[\s-]+([a-z]{3,})")
_MONTHS = _words("january february march april may june july august september october november december")
_BUTTONS = frozenset(
    {"buy now", "< prev", "next >", "back to search", "description", "features", "reviews",
     "attributes", "prev", "next", "search", "< back", "buy"}
)  # fmt: skip
_MAX_VARS_PER_KIND = 9
_MAX_PITFALLS = 10
_STEP_CHARS = 240


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


@dataclass(slots=True)
class _Act:
    index: int  # position in the trajectory (0-based)
    raw: str  # the action, one line
    obs: str
    kind: str  # think | fail | nav | scan | act
    place: str = ""  # nav target (entity, room or direction)
    text: str = ""  # the thought for "think"


def _classify(t: Trajectory) -> list[_Act]:
    acts: list[_Act] = []
    for i, s in enumerate(t.steps):
        raw = _one_line(s.action)
        m = _THINK_RE.match(s.action)
        if m or (not raw and s.thought):
            acts.append(_Act(i, raw, s.observation, "think", text=_one_line(m.group(1) if m else s.thought)))
        elif _is_failed(s.observation) or not raw:
            acts.append(_Act(i, raw, s.observation, "fail"))
        elif (md := _NAV_DIR_RE.match(raw)) is not None:
            acts.append(_Act(i, raw, s.observation, "nav", place=md.group(1).lower()))
        elif (mn := _NAV_RE.match(raw)) is not None:
            acts.append(_Act(i, raw, s.observation, "nav", place=mn.group(1).strip().lower()))
        else:
            acts.append(_Act(i, raw, s.observation, "act"))
    return acts


class _Distiller:
    """The state of one builtin_script run: entity roles, variables, abstraction."""

    def __init__(self, t: Trajectory) -> None:
        self.t = t
        self.acts = _classify(t)
        self.vars = _Vars()
        task_l = " ".join(t.task.lower().split()).rstrip(".!? ")
        task_l = _BOILERPLATE.sub("", task_l, count=1)
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
        text = _DATE_RE.sub(" ", self.t.task)
        for m in _NAME_RE.finditer(text):
            name = m.group(0).strip()
            before = text[: m.start()].rstrip()
            sentence_start = not before or before[-1] in ".!?:\n"
            words = name.split()
            if sentence_start and (len(words) == 1 or words[0].lower() in _STOPWORDS):
                words = words[1:]
            while words and words[0].lower() in _STOPWORDS | _MONTHS:
                words = words[1:]
            name = " ".join(words)
            if len(name) >= 2 and name.lower() not in _STOPWORDS | _MONTHS and name != "I":
                names[name] = None
        self.names = sorted(names, key=lambda n: (-len(n), n))
        self.name_re = (
            re.compile(r"(?<![\w{])(" + "|".join(re.escape(n) for n in self.names) + r")(?![\w}])")
            if self.names
            else None
        )
        units: dict[tuple[str, str], None] = {}
        for m in _NUMBER_IN_TASK_RE.finditer(_PRICE_RE.sub(" ", _DATE_RE.sub(" ", self.t.task))):
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
        text = _ITEM_RE.sub(kind_ref("item"), text)
        text = _DATE_RE.sub(kind_ref("date"), text)
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
            if _ITEM_RE.fullmatch(arg):
                return f"click[{self.vars.ref('item', arg, '<item>')}]"
            if arg.lower() in _BUTTONS:
                return f"click[{arg}]"
            return f"click[{self.vars.ref('option', arg, '<option>')}]"
        return _cut(self.abstract(raw), _STEP_CHARS)

    # -- the step skeleton ----------------------------------------------------

    def _task_terms(self) -> list[str]:
        terms: dict[str, None] = dict.fromkeys(self.roles)
        for kw in extract_keywords(self.t.task, 12):
            for w in kw.split():
                if len(w) >= 3 and not _is_number(w) and w not in _PROCEDURE_WORDS:
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

    def _sought(self, a: _Act) -> str:
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
    def _group_end(acts: list[_Act], k: int) -> int:
        """Index after the visit that starts with the nav act ``k`` (its open/close/examine/look)."""
        place = acts[k].place
        j = k + 1
        while j < len(acts):
            a = acts[j]
            if a.kind == "act":
                m = _SCAN_RE.match(a.raw)
                if (m and m.group(1).strip().lower() == place) or _LOOK_RE.match(a.raw):
                    j += 1
                    continue
            if a.kind == "fail":
                j += 1
                continue
            break
        return j

    def skeleton(self, acts: list[_Act]) -> list[str]:
        steps: list[str] = []
        # leading thoughts: the plan, before the first real action
        for a in acts:
            if a.kind != "think":
                break
            if a.text and len(steps) < 2:
                steps.append("think: " + _cut(self.abstract(a.text), 300))
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

    def _search_step(self, acts: list[_Act], visits: list[tuple[int, int, bool]]) -> str:
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
        if all(_NAV_DIR_RE.match(acts[s].raw) for s, _, _ in visits):
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
                action = self.abstract_action(a.raw) if a.kind != "fail" else _cut(self.abstract(a.raw), 80)
                out.append(
                    f"the run did not succeed{reward}: it went astray at step {a.index + 1} "
                    f"(`{action}`) and made no progress {since}"
                )
            out.extend(self._unused_sightings())
        if t.success is not True:
            out.extend(self._loops())
        # failed actions, grouped by command and answer ("FlightSearch[...]" x 6: "There is no flight")
        groups: dict[tuple[str, str], list[_Act]] = {}
        for a in self.acts:
            if a.kind == "fail" and a.raw:
                head = re.split(r"[\s\[(:]", a.raw.lower(), maxsplit=1)[0]
                answer = " ".join(re.findall(r"[a-z']+", a.obs.lower())[:3])
                groups.setdefault((head, answer), []).append(a)
        for group in groups.values():
            a = group[0]
            action = _cut(self.abstract(a.raw, register=False), 80)
            obs = _cut(_one_line(self.abstract(a.obs[:600], register=False)), 160) or "(no answer)"
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
        seq = [(self.abstract_action(a.raw), _one_line(a.obs)) for a in self.acts if a.kind not in ("think",)]
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
        text = _one_line(self.t.task)
        text = re.sub(r"^(?:your (?:first |next )?task is to:?|task:|instruction:)\s*", "", text, flags=re.I)
        text = self.abstract(text).rstrip(" .")
        return _cut(text, 200) or "the task"


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
            out.append(_cut(f"repeat ({reps} times): " + "; then ".join(block), _STEP_CHARS * 2))
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


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------

PROMPT_NAMES = ("script", "keywords")
# prompt name -> (placeholders it may use, placeholders it must use)
_PROMPT_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "script": (
        frozenset({"task", "initial_observation", "trajectory", "n_steps", "outcome", "schema"}),
        frozenset({"trajectory"}),
    ),
    "keywords": (frozenset({"task"}), frozenset({"task"})),
}
_MARKER_RE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_HEADER_LINE_RE = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*[:=]\s*(.*?)\s*$")
_SECTION_RE = re.compile(r"^##\s+(system|user)\s*$", re.IGNORECASE)


@dataclass(slots=True)
class Prompt:
    name: str
    version: str
    system: str
    user: str
    source: str  # "builtin" or the override file's path


def parse_prompt(name: str, text: str, source: str) -> Prompt:
    """Parse a prompt file; :class:`ValueError` says what is wrong.

    Format: a header between ``---`` lines with ``version: <name>`` (or
    ``version = "<name>"``), then a ``## system`` and a ``## user`` section.
    Placeholders are ``{{name}}`` markers; single braces are plain text.
    """
    lines = text.lstrip("\ufeff").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines or lines[0].strip() != "---":
        raise ValueError('it must start with a "---" header line holding "version: ..."')
    close = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
    if close is None:
        raise ValueError('the header is not closed by a "---" line')
    header: dict[str, str] = {}
    for i in range(1, close):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _HEADER_LINE_RE.match(line)
        if not m:
            raise ValueError(f"line {i + 1}: expected 'key: value' in the header, got {line.strip()!r}")
        header[m.group(1).lower()] = m.group(2).strip().strip("\"'")
    i = close
    version = header.get("version", "")
    if not version:
        raise ValueError('the header has no "version: ..." line')
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(lines[i + 1 :], i + 2):
        m = _SECTION_RE.match(line.strip())
        if m:
            current = m.group(1).lower()
            if current in sections:
                raise ValueError(f"line {lineno}: a second '## {current}' section")
            sections[current] = []
        elif current is None:
            if line.strip():
                raise ValueError(f"line {lineno}: text before the first '## system' or '## user' section")
        else:
            sections[current].append(line)
    if "user" not in sections:
        raise ValueError("there is no '## user' section")
    system = "\n".join(sections.get("system", [])).strip("\n").rstrip()
    user = "\n".join(sections["user"]).strip("\n").rstrip()
    if not user.strip():
        raise ValueError("the '## user' section is empty")
    allowed, required = _PROMPT_FIELDS[name]
    used = {m.group(1) for m in _MARKER_RE.finditer(system + "\n" + user)}
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; "
            f"this prompt can use {', '.join('{{' + a + '}}' for a in sorted(allowed))}"
        )
    missing = sorted(required - used)
    if missing:
        raise ValueError(f"it must use the placeholder(s) {', '.join('{{' + m + '}}' for m in missing)}")
    return Prompt(name=name, version=version, system=system, user=user, source=source)


def load_prompt(name: str, override_dir: Path | None = None) -> Prompt:
    """The prompt ``name``: ``<override_dir>/<name>.md`` if it exists, else the built-in one.

    A broken override raises :class:`ConfigError` naming the file and the problem.
    """
    if name not in _PROMPT_FIELDS:
        raise ValueError(f"unknown prompt {name!r}; choose from {', '.join(PROMPT_NAMES)}")
    if override_dir is not None:
        path = Path(override_dir) / f"{name}.md"
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"{path}: cannot read the prompt override ({e})",
                    hint="fix the file, or delete it to use the built-in prompt",
                ) from e
            try:
                return parse_prompt(name, text, str(path))
            except ValueError as e:
                raise ConfigError(
                    f"{path}: broken prompt override: {e}",
                    hint="fix the file, or delete it to use the built-in prompt",
                ) from e
    resource = importlib.resources.files("memp_cli.build.prompts").joinpath(f"{name}.md")
    text = resource.read_text(encoding="utf-8")
    try:
        return parse_prompt(name, text, "builtin")
    except ValueError as e:  # a packaging bug, not a user error
        raise ConfigError(f"built-in prompt {name}.md is broken: {e}") from e


def render_prompt(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` markers in one pass (values are never re-scanned)."""
    return _MARKER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _messages(prompt: Prompt, values: dict[str, str]) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if prompt.system.strip():
        messages.append({"role": "system", "content": render_prompt(prompt.system, values)})
    messages.append({"role": "user", "content": render_prompt(prompt.user, values)})
    return messages


def _select(n: int, max_steps: int) -> tuple[list[int], int, list[int]]:
    """(head indices, number omitted, tail indices) so that head + marker + tail <= max_steps."""
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    if n <= max_steps:
        return list(range(n)), 0, []
    keep = max_steps - 1
    head = (keep + 1) // 2
    tail = keep - head
    return list(range(head)), n - head - tail, list(range(n - tail, n))


def _outcome(t: Trajectory) -> str:
    reward = f" (reward {t.reward:g})" if t.reward is not None else ""
    if t.success is True:
        return "success" + reward
    if t.success is False:
        return "failure" + reward
    return "unknown: the run has no success label" + (
        f"; reward {t.reward:g}" if t.reward is not None else ""
    )


def _render_trajectory(t: Trajectory, max_steps: int, max_obs_chars: int) -> str:
    head, omitted, tail = _select(len(t.steps), max_steps)
    lines: list[str] = []

    def block(i: int) -> None:
        s = t.steps[i]
        prefix = f"{i + 1}. "
        pad = " " * len(prefix)
        if s.thought.strip():
            lines.append(prefix + "(thought: " + _cut(_one_line(s.thought), max_obs_chars) + ")")
            prefix = pad
        lines.append(prefix + "> " + _cut(_one_line(s.action), max(max_obs_chars, 1000)))
        obs = _cut(s.observation.strip(), max_obs_chars)
        obs_lines = [ln.strip() for ln in obs.splitlines() if ln.strip()] or ["(no observation)"]
        lines.extend(pad + ln for ln in obs_lines)

    for i in head:
        block(i)
    if omitted:
        first = len(head) + 1
        lines.append(f"… [{omitted} steps omitted: {first}-{first + omitted - 1}] …")
    for i in tail:
        block(i)
    return "\n".join(lines) if lines else "(no steps)"


def script_messages(
    t: Trajectory, prompt: Prompt, *, max_steps: int = 60, max_obs_chars: int = 300
) -> list[dict[str, str]]:
    """Chat messages asking an LLM to distill a script from ``t``."""
    initial = ""
    if t.initial_observation.strip():
        initial = "Initial observation: " + _cut(_one_line(t.initial_observation), max_obs_chars * 2) + "\n\n"
    values = {
        "task": _one_line(t.task),
        "initial_observation": initial,
        "trajectory": _render_trajectory(t, max_steps, max_obs_chars),
        "n_steps": str(len(t.steps)),
        "outcome": _outcome(t),
        "schema": orjson.dumps(SCRIPT_JSON_SCHEMA, option=orjson.OPT_INDENT_2).decode(),
    }
    return _messages(prompt, values)


def keyword_messages(task: str, prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages asking an LLM for the keywords of ``task``."""
    return _messages(prompt, {"task": _one_line(task)})


def trim_steps(t: Trajectory, max_steps: int, max_obs_chars: int) -> list[dict[str, str]]:
    """The concrete steps kept in a proceduralization memory.

    Observations (and thoughts) longer than ``max_obs_chars`` are cut with "…";
    a run longer than ``max_steps`` keeps its head and tail around one marker
    step ``{"action": "…", "observation": "[N steps omitted]"}``.
    """
    head, omitted, tail = _select(len(t.steps), max_steps)

    def one(i: int) -> dict[str, str]:
        s = t.steps[i]
        d = {
            "action": _cut(s.action, max(max_obs_chars, 1000)),
            "observation": _cut(s.observation, max_obs_chars),
        }
        if s.thought:
            d["thought"] = _cut(s.thought, max_obs_chars)
        return d

    out = [one(i) for i in head]
    if omitted:
        out.append({"action": "…", "observation": f"[{omitted} steps omitted]"})
    out.extend(one(i) for i in tail)
    return out
