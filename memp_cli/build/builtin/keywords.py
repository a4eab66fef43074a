"""The built-in keyword extractor: the key phrases of a task, without an LLM."""

from __future__ import annotations

import re

from memp_cli.model.script import MAX_KEYWORDS, dedupe_keywords


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = words(
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
PROCEDURE_WORDS = words(
    """clean heat cool hot cold warm chill wash examine look slice cut chop dice find buy purchase
    order boil melt freeze cook fry bake grow mix measure sort compare plan book search read open
    close turn two three four pair couple dozen both"""
)
_NUMBER_WORDS = words("two three four five six seven eight nine ten pair couple dozen")
_UNITS = words(
    """fl oz ounce ounces inch inches in ft foot feet yard yards pack packs count ct pcs pc piece pieces
    lb lbs pound pounds ml l liter liters litre gallon gallons gb tb mb mm cm m meter meters kg g gram
    grams mg x w watt watts v volt volts mah hz day days night nights week weeks hour hours people
    person persons adults sets set cups cup"""
)
BOILERPLATE = re.compile(
    r"^(?:your (?:first |next )?task is to:?|task:|instruction:|please|can you|could you|"
    r"i(?:'m| am) looking for|i(?: would|'d) like(?: to (?:buy|get|have))?|i (?:want|need)(?: to buy)?|"
    r"buy me|find me|get me|help me)\s+",
    re.IGNORECASE,
)
_PRICE_CLAUSE = re.compile(r",?\s*and price (?:lower|less) than \$?[\d.,]+ dollars\b", re.IGNORECASE)
_ABBREV = frozenset({"st", "ste", "mt", "ft", "dr", "mr", "mrs", "ms", "vs", "no"})
_TOKEN_EDGE = "\"'“”‘’()[]<>*_`"


DATE_RE = re.compile(
    r"\b\d{4}-\d{2}-\d{2}\b|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? "
    r"\d{1,2}(?:st|nd|rd|th)?(?:,? \d{4})?\b|\b\d{1,2}(?:st|nd|rd|th)? of "
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*(?:,? \d{4})?\b",
    re.IGNORECASE,
)


def is_number(tok: str) -> bool:
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
    text = DATE_RE.sub(",", text)  # dates are specifics, not keys
    text = re.sub(r"[()\[\]{}]", " , ", text)
    text = " ".join(text.split())
    while True:
        stripped = BOILERPLATE.sub("", text, count=1)
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
        boundary = bool(re.search(r"[,.;:!?)\]]['\"”’]?$", tok)) and not is_number(tok)
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
        elif word in STOPWORDS and word not in PROCEDURE_WORDS:
            flush()
        elif is_number(word.rstrip(".")) or word.startswith("$"):
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
        elif word in PROCEDURE_WORDS:
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
    return dedupe_keywords(phrases)[: max(0, max_keywords)]
