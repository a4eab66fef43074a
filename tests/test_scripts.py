"""Scripts: schema, reply validation, the built-in distiller, keywords and prompts.

The trajectories in tests/data/distill_*.jsonl are verbatim records from the shared
test-data folder (each carries "copied_from" and its original "source"/licence).
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from memp_cli.build.builtin.distiller import builtin_script
from memp_cli.build.builtin.keywords import extract_keywords
from memp_cli.build.prompting import Prompt, keyword_messages, load_prompt, script_messages
from memp_cli.errors import ConfigError
from memp_cli.ingest import parse_record
from memp_cli.model.memory import Memory
from memp_cli.model.script import (
    SCRIPT_JSON_SCHEMA,
    SCRIPT_KEYS,
    Script,
    keywords_from_reply,
    script_from_reply,
)
from memp_cli.model.steps import omitted_count, omitted_step, trim_steps
from memp_cli.model.trajectory import Step, Trajectory
from memp_cli.retrieve.render import PROMPT_HEADER, estimate_tokens, render_memory, render_prompt
from memp_cli.retrieve.retriever import Hit

DATA = Path(__file__).parent / "data"
ENTITY_NUMBER = re.compile(r"\b[a-z]+ \d+\b")  # "mug 1", "countertop 2"
VAR = re.compile(r"\{([A-Za-z_]\w*)\}")


def _load(name: str) -> dict[str, Trajectory]:
    out = {}
    for line in (DATA / name).read_bytes().splitlines():
        if line.strip():
            obj = orjson.loads(line)
            out[obj["task_id"]] = parse_record(obj)
    return out


ALF = _load("distill_alfworld.jsonl")
REACT = _load("distill_react.jsonl")
WEB = _load("distill_webshop.jsonl")
MISC = _load("distill_misc.jsonl")
ALL = {**ALF, **REACT, **WEB, **MISC}


def _alf(task_type: str, *, perturbed: bool = False, success: bool = True) -> Trajectory:
    for t in ALF.values():
        if (
            t.task_type == task_type
            and t.success is success
            and ("#perturbed" in (t.task_id or "")) is perturbed
            and t.task_id
            and t.task_id.startswith("alfworld/train/")
        ):
            return t
    raise AssertionError(f"no {task_type} trajectory in the slice")


def _texts(s: Script) -> list[str]:
    return [s.title, *s.steps, *s.preconditions, *s.pitfalls]


# --------------------------------------------------------------------------
# Schema and reply validation
# --------------------------------------------------------------------------

GOOD = {
    "title": "clean a {object} and put it in/on a {receptacle}",
    "steps": ["go to each likely place for the {object} until you see one", "take the {object}"],
    "variables": {"object": "mug", "receptacle": "coffeemachine 1"},
    "preconditions": ["a sinkbasin is available"],
    "pitfalls": ["opening the microwave does nothing useful"],
    "keywords": ["clean", "mug", "coffeemachine"],
}


def test_script_round_trip_and_strict_from_dict() -> None:
    s = script_from_reply(GOOD)
    assert s.to_dict() == GOOD
    assert Script.from_dict(s.to_dict()) == s
    assert list(s.to_dict()) == list(SCRIPT_KEYS)
    with pytest.raises(ValueError, match="missing 'keywords'"):
        Script.from_dict({k: v for k, v in GOOD.items() if k != "keywords"})
    with pytest.raises(ValueError, match="unknown key"):
        Script.from_dict({**GOOD, "extra": 1})
    with pytest.raises(ValueError, match='"steps" must be a non-empty list of strings'):
        Script.from_dict({**GOOD, "steps": [{"step": "x"}]})


def test_schema_lists_every_field() -> None:
    assert set(SCRIPT_JSON_SCHEMA["properties"]) == set(SCRIPT_KEYS)
    assert SCRIPT_JSON_SCHEMA["required"] == list(SCRIPT_KEYS)
    assert SCRIPT_JSON_SCHEMA["properties"]["steps"]["maxItems"] == 40


def test_reply_deviations_are_tolerated() -> None:
    reply = {
        "script": {
            "title": "  heat a {object}\n and put it in {receptacle} ",
            "steps": [{"step": "1. go to the {object}"}, "2) take it", "Step 3: heat it", "- put it"],
            "variables": {"{object}": "egg", "receptacle": 1},
            "pitfalls": None,
            "keywords": "Heat, egg , heat",
        }
    }
    s = script_from_reply(reply)
    assert s.title == "heat a {object} and put it in {receptacle}"
    assert s.steps == ["go to the {object}", "take it", "heat it", "put it"]
    assert s.variables == {"object": "egg", "receptacle": "1"}
    assert s.preconditions == [] and s.pitfalls == []
    assert s.keywords == ["heat", "egg"]
    # missing keywords: derived from the title with the variables filled in
    s2 = script_from_reply(
        {
            "title": "heat some {object} and put it in {receptacle}",
            "steps": ["x"],
            "variables": {"object": "egg", "receptacle": "garbagecan"},
        }
    )
    assert s2.keywords == ["heat", "egg", "garbagecan"]
    # steps as one multi-line string
    assert script_from_reply({"title": "t", "steps": "1. a\n2. b\n"}).steps == ["a", "b"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        ({"steps": ["a"]}, '"title" must be a non-empty string'),
        ({"title": "t"}, '"steps" is missing'),
        ({"title": "t", "steps": []}, '"steps" must be a non-empty list of strings'),
        ({"title": "t", "steps": ["a", 3]}, r'"steps" must be a list of strings \(item 2 is int\)'),
        ({"title": "t", "steps": ["a", "  "]}, '"steps" item 2 is empty'),
        ({"title": "t", "steps": ["1."]}, '"steps" item 1 is empty'),
        ({"title": "t", "steps": [f"s{i}" for i in range(41)]}, r'"steps" has 41 items \(the limit is 40\)'),
        ({"title": "t", "steps": ["x" * 2001]}, '"steps" item 1 is 2001 characters long'),
        ({"title": "t" * 2001, "steps": ["a"]}, '"title" is 2001 characters long'),
        ({"title": "t", "steps": ["a"], "variables": ["object"]}, '"variables" must be an object'),
        ({"title": "t", "steps": ["a"], "variables": {"a b": "x"}}, '"variables" has an invalid name'),
        (
            {"title": "t", "steps": ["a"], "variables": {"o": ["x"]}},
            "\"variables\" value for 'o' must be a string",
        ),
        ({"title": "t", "steps": ["a"], "pitfalls": [None]}, r'"pitfalls" must be a list of strings'),
        ({"title": "t", "steps": ["a"], "keywords": [{"k": 1}]}, r'"keywords" item 1 is an object'),
    ],
)
def test_reply_rejections_are_precise(reply: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        script_from_reply(reply)


def test_keywords_from_reply() -> None:
    assert keywords_from_reply({"keywords": ["Clean", "mug", "clean", " coffeemachine "]}) == [
        "clean", "mug", "coffeemachine"]  # fmt: skip
    assert keywords_from_reply(["a", "b"]) == ["a", "b"]
    assert len(keywords_from_reply({"keywords": [f"k{i}" for i in range(10)]})) == 6
    with pytest.raises(ValueError, match='"keywords" list'):
        keywords_from_reply({"words": []})
    with pytest.raises(ValueError, match="is empty"):
        keywords_from_reply({"keywords": []})
    with pytest.raises(ValueError, match=r"item 2 is int"):
        keywords_from_reply({"keywords": ["a", 2]})


# --------------------------------------------------------------------------
# Keywords
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("heat some egg and put it in garbagecan.", ["heat", "egg", "garbagecan"]),
        ("put two cellphone in sofa.", ["two", "cellphone", "sofa"]),
        ("clean some mug and put it in coffeemachine.", ["clean", "mug", "coffeemachine"]),
        ("look at alarmclock under the desklamp.", ["look", "alarmclock", "desklamp"]),
        ("examine the bowl with the desklamp.", ["examine", "bowl", "desklamp"]),
        ("put a cool bowl in cabinet.", ["cool", "bowl", "cabinet"]),
        ("find two laptop and put them in bed.", ["find", "two", "laptop", "bed"]),
        ("Your task is to: put some spraybottle on toilet.", ["spraybottle", "toilet"]),
        (
            "i need a long lasting 6.76 fl oz bottle of l'eau d'issey, and price lower than 100.00 dollars",
            ["long lasting", "6.76 fl oz", "bottle", "l'eau d'issey"],
        ),
        (
            "i'm looking for black colored high quality hair removal cream it easy to use, "
            "and price lower than 30.00 dollars",
            ["black colored", "high quality", "hair removal cream", "easy"],
        ),
    ],
)
def test_extract_keywords(task: str, expected: list[str]) -> None:
    assert extract_keywords(task) == expected


def test_extract_keywords_limits_and_edge_cases() -> None:
    long_task = MISC["scienceworld/boil/train/var0"].task
    kws = extract_keywords(long_task)
    assert kws[:2] == ["boil", "water"] and len(kws) == 6
    assert extract_keywords(long_task, max_keywords=2) == ["boil", "water"]
    assert extract_keywords("") == []
    assert extract_keywords("the a of, and.") == []
    tp = extract_keywords(MISC["travelplanner/train/0#reference"].task)
    assert "st. petersburg" in tp and not any("march" in k for k in tp)  # dates are not keys


# --------------------------------------------------------------------------
# builtin_script
# --------------------------------------------------------------------------


def test_builtin_runs_on_every_record_of_the_slice() -> None:
    """Every data set in the shared folder is represented; none may crash or break the schema."""
    sources = {t.source for t in ALL.values()}
    assert len(ALL) >= 35 and len(sources) >= 8
    for tid, t in ALL.items():
        s = builtin_script(t)
        assert s == builtin_script(t), tid  # deterministic
        assert Script.from_dict(s.to_dict()) == s
        assert script_from_reply(s.to_dict()) == s, tid  # the builtin output is a valid reply
        assert s.title and s.steps and len(s.steps) <= 40, tid
        assert all(len(x) <= 2000 for x in _texts(s)), tid
        used = {v for x in _texts(s) for v in VAR.findall(x)}
        assert used == set(s.variables), tid  # every variable used is declared, and vice versa
        assert s.keywords == extract_keywords(t.task)


def test_alfworld_entities_are_abstracted() -> None:
    for tid, t in {**ALF, **REACT}.items():
        s = builtin_script(t)
        for text in [s.title, *s.steps]:
            assert not ENTITY_NUMBER.search(text), (tid, text)


def test_alfworld_clean() -> None:
    s = builtin_script(_alf("clean"))
    assert s.title == "clean some {object} and put it in {receptacle}"
    assert s.steps == [
        "go to {location}",
        "take {object} from {location}",
        "go to sinkbasin",
        "clean {object} with sinkbasin",
        "go to {receptacle}",
        "move {object} to {receptacle}",
    ]
    assert s.variables == {"object": "apple", "receptacle": "diningtable 1", "location": "countertop 1"}
    assert s.preconditions == ["a sinkbasin is available to clean the {object}"]
    assert s.pitfalls == []
    assert s.keywords == ["clean", "apple", "diningtable"]


@pytest.mark.parametrize(
    ("task_type", "verb", "appliance"), [("heat", "heat", "microwave"), ("cool", "cool", "fridge")]
)
def test_alfworld_heat_and_cool(task_type: str, verb: str, appliance: str) -> None:
    s = builtin_script(_alf(task_type))
    assert s.title == f"{verb} some {{object}} and put it in {{receptacle}}"
    assert f"{verb} {{object}} with {appliance}" in s.steps
    assert s.steps[-1] == "move {object} to {receptacle}"
    assert s.variables["object"] == "apple"


def test_alfworld_put_puttwo_examine() -> None:
    put = builtin_script(_alf("put"))
    assert put.title.startswith("put a {object}") or put.title.startswith("put some {object}")
    assert put.steps[-1] == "move {object} to {receptacle}"

    two = builtin_script(_alf("puttwo"))
    assert two.title == "put two {object} in {receptacle}"
    assert two.steps.count("move {object} to {receptacle}") == 2
    assert two.keywords[0] == "two"

    ex = builtin_script(_alf("examine"))
    assert ex.title == "look at {object} under the {tool}"
    assert ex.steps == ["go to {location}", "use {tool}", "take {object} from {location}"]
    assert ex.variables == {"object": "alarmclock", "tool": "desklamp 1", "location": "shelf 1"}


def test_fruitless_navigation_collapses() -> None:
    t = ALF["alfworld_0"]  # laptop 1 on the diningtable; laptop 2 after countertop/drawers/dresser
    s = builtin_script(t)
    nav = [x for x in s.steps if x.startswith("go to")]
    assert sum(1 for st in t.steps if st.action.startswith("go to")) == 8
    assert len(nav) == 4  # 5 visits (countertop, 2 drawers, dresser, armchair) became one step
    search = [x for x in s.steps if x.startswith("go to each likely")]
    assert search == [
        "go to each likely {location2} (countertop, drawer, dresser), opening any that are closed, "
        "until the {object} is found"
    ]
    assert s.steps[s.steps.index(search[0]) + 1] == "take {object} from {location2}"
    assert s.variables["location2"] == "armchair 1"


def test_react_exemplar_keeps_plan_thoughts_abstracted() -> None:
    s = builtin_script(REACT["react_prompt/react_put_0"])
    assert s.steps[0].startswith("think: To solve the task")
    assert s.steps[1].startswith("think: First I need to find a {object}.")
    assert "(1-4)" not in s.steps[1] and "cabinet 1" not in s.steps[1]
    assert not any(x.startswith("think: Now") for x in s.steps)  # narration is dropped
    assert s.steps[2:] == [
        "go to each likely {location} (cabinet), opening any that are closed, until the {object} is found",
        "take {object} from {location}",
        "go to {receptacle}",
        "put {object} in/on {receptacle}",
    ]
    assert s.variables == {"object": "spraybottle", "receptacle": "toilet 1", "location": "cabinet 2"}


def test_failed_step_becomes_pitfall() -> None:
    s = builtin_script(REACT["react_prompt/react_puttwo_2"])
    assert "`go to cabinet` did nothing here: Nothing happens." in s.pitfalls
    assert not any("Nothing" in x for x in s.steps)
    s9 = builtin_script(ALF["alfworld_9"])
    assert any(p.startswith("`Task failed.` did nothing here") for p in s9.pitfalls)


def test_failed_alfworld_run() -> None:
    t = _alf("heat", perturbed=True, success=False)
    s = builtin_script(t)
    assert s.pitfalls[0].startswith(
        "the run did not succeed (reward 0): it went astray at step 2 (`go to cabinet`)"
    )
    assert any("the {object} was in sight after step 1" in p for p in s.pitfalls)
    assert s.steps == ["go to {receptacle}"]  # only the part before it went astray
    loop = builtin_script(_alf("examine", perturbed=True, success=False))
    assert any(p.startswith("repeating `go to drawer` then `go to bed`") for p in loop.pitfalls)


def test_webshop_success() -> None:
    s = builtin_script(WEB["webshop/fixed_100"])
    assert s.steps == ["search[{query}]", "click[{item}]", "click[Buy Now]"]
    assert s.variables == {"price": "40.00 dollars", "query": "rca cable high def", "item": "B096Z1HH8R"}
    assert s.title == "i want a rca cable that is high def, and price lower than {price}"
    assert s.keywords == ["rca cable", "high def"]
    assert not any(re.search(r"B0[0-9A-Z]{8}", x) for x in _texts(s))


def test_webshop_failures() -> None:
    loop = builtin_script(WEB["webshop/fixed_105"])
    assert loop.pitfalls[0].startswith("the run did not succeed (reward 0): it went astray at step 7")
    assert any(p.startswith("repeating `click[{item}]` then `click[< Prev]`") for p in loop.pitfalls)
    assert loop.steps == ["search[{query}]", "click[{item}]", "click[< Prev]"]

    partial = builtin_script(WEB["webshop/fixed_110"])
    assert "reward 0.6667" in partial.pitfalls[0] and "click[Buy Now]" in partial.pitfalls[0]
    assert partial.steps[-1] == "click[Buy Now]"
    assert partial.variables["option"] == "black"

    invalid = builtin_script(WEB["webshop/fixed_107"])
    assert any("did nothing here" in p and "Invalid action!" in p for p in invalid.pitfalls)


def test_other_environments() -> None:
    boil = builtin_script(MISC["scienceworld/boil/train/var0"])
    assert any(x.startswith("repeat (") and "use thermometer" in x for x in boil.steps)
    assert any("You can't move something into itself" in p for p in boil.pitfalls)

    tp = builtin_script(MISC["travelplanner/train/0#gpt4_two_stage"])
    assert tp.variables["name"] == "St. Petersburg" and tp.variables["name2"] == "Rockford"
    assert any(p.startswith("`Thought 1:") and "Invalid Action" in p for p in tp.pitfalls)
    assert any("similar attempts" in p and "There is no flight" in p for p in tp.pitfalls)
    assert len(tp.pitfalls) <= 10


def test_builtin_edge_cases() -> None:
    empty = builtin_script(Trajectory(task="do the thing", steps=[], success=None))
    assert empty.steps and empty.title == "do the thing"
    thoughts = Trajectory(task="x", steps=[Step(action="", thought="hmm")], success=False, reward=0.0)
    s = builtin_script(thoughts)
    assert s.steps == ["think: hmm"]
    odd = Trajectory(
        task="put a mug 3 in {weird} 'box'",
        steps=[Step("go to {receptacle} 1", "Nothing happens."), Step("take mug 3 from desk 1", "")],
        success=True,
    )
    s = builtin_script(odd)
    assert Script.from_dict(s.to_dict()) == s


# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------


def test_builtin_prompts_load() -> None:
    p = load_prompt("script")
    assert (p.name, p.version, p.source) == ("script", "script-v1", "builtin")
    assert "{{trajectory}}" in p.user and "{{schema}}" in p.system
    k = load_prompt("keywords")
    assert (k.version, k.source) == ("keywords-v1", "builtin")
    with pytest.raises(ValueError, match="unknown prompt"):
        load_prompt("nope")


def test_prompt_override(tmp_path: Path) -> None:
    assert load_prompt("script", tmp_path).source == "builtin"  # no file: the built-in one
    (tmp_path / "keywords.md").write_text(
        '---\nversion = "kw-mine"\n---\n## system\nBe brief. JSON like {"keywords": []}.\n'
        "## user\nTask: {{task}} -- {{ task }}\n",
        encoding="utf-8",
    )
    p = load_prompt("keywords", tmp_path)
    assert (p.version, p.source) == ("kw-mine", str(tmp_path / "keywords.md"))
    msgs = keyword_messages("clean a {mug}\n now", p)
    assert msgs == [
        {"role": "system", "content": 'Be brief. JSON like {"keywords": []}.'},
        {"role": "user", "content": "Task: clean a {mug} now -- clean a {mug} now"},
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("## user\n{{task}}\n", 'must start with a "---" header'),
        ("---\nversion: v\n## user\n{{task}}\n", 'not closed by a "---" line'),
        ("---\nname: x\n---\n## user\n{{task}}\n", 'no "version: ..." line'),
        ("---\nversion: v\n---\n## system\nhi\n", "no '## user' section"),
        ("---\nversion: v\n---\n## user\n\n", "no '## user' section|'## user' section is empty"),
        ("---\nversion: v\n---\n## user\n{{task}} {{tsak}}\n", r"unknown placeholder\(s\) \{\{tsak\}\}"),
        ("---\nversion: v\n---\n## user\nno marker\n", r"must use the placeholder\(s\) \{\{task\}\}"),
        ("---\nversion: v\n---\nstray\n## user\n{{task}}\n", "text before the first"),
        ("---\nversion: v\n---\n## user\n{{task}}\n## user\n{{task}}\n", "a second '## user' section"),
        ("---\nthis is not a header\n---\n## user\n{{task}}\n", "expected 'key: value'"),
    ],
)
def test_broken_override_is_a_config_error(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "keywords.md"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=reason) as err:
        load_prompt("keywords", tmp_path)
    assert str(path) in str(err.value) and "built-in prompt" in str(err.value)


def test_override_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "script.md").write_bytes(b"---\nversion: \xff\n---\n")
    with pytest.raises(ConfigError, match="cannot read the prompt override"):
        load_prompt("script", tmp_path)


def test_script_messages_hold_schema_and_truncated_trajectory() -> None:
    t = MISC["scienceworld/grow-fruit/train/var0"]
    assert len(t.steps) > 60
    msgs = script_messages(t, load_prompt("script"))
    assert [m["role"] for m in msgs] == ["system", "user"]
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert orjson.dumps(SCRIPT_JSON_SCHEMA, option=orjson.OPT_INDENT_2).decode() in system
    assert "{{" not in system + user
    assert user.startswith("Task: Your task is to grow a")
    assert f"Trajectory ({len(t.steps)} steps):" in user
    numbered = re.findall(r"^(\d+)\. ", user, re.MULTILINE)
    assert len(numbered) == 59 and numbered[0] == "1" and numbered[-1] == str(len(t.steps))
    assert f"[{len(t.steps) - 59} steps omitted: 31-{len(t.steps) - 29}]" in user
    assert "Outcome: success (reward 1)" in user
    # observations are cut to ~300 characters
    look = user.split("3. > look around\n", 1)[1].split("\n4. ", 1)[0]
    assert look.endswith("…") and len("".join(ln.strip() for ln in look.splitlines())) <= 300

    small = script_messages(WEB["webshop/fixed_105"], load_prompt("script"), max_steps=4, max_obs_chars=40)
    body = small[1]["content"]
    assert "1. > search[black colored high quality hair removal cream easy to use]" in body
    assert "Outcome: failure (reward 0)" in body
    assert "steps omitted" in body


def test_script_messages_do_not_reinterpret_braces() -> None:
    t = Trajectory(
        task="say {{schema}} and {x}", steps=[Step("echo {{trajectory}}", "{{outcome}}")], success=None
    )
    user = script_messages(t, load_prompt("script"))[1]["content"]
    assert "Task: say {{schema}} and {x}" in user
    assert "> echo {{trajectory}}" in user and "   {{outcome}}" in user
    assert "Outcome: unknown" in user
    custom = Prompt("script", "v", "", "{{trajectory}}", "x")
    assert script_messages(t, custom) == [
        {"role": "user", "content": "1. > echo {{trajectory}}\n   {{outcome}}"}
    ]


def _steps(t: Trajectory) -> list[dict[str, str]]:
    return [s.to_dict() for s in t.steps]


def test_trim_steps() -> None:
    t = MISC["scienceworld/boil/train/var0"]
    n = len(t.steps)
    kept = trim_steps(_steps(t), max_steps=10, max_chars=50)
    assert len(kept) == 10
    assert kept[:5] == [
        {
            "action": s.action,
            "observation": s.observation if len(s.observation) <= 50 else kept[i]["observation"],
        }
        for i, s in enumerate(t.steps[:5])
    ]
    assert kept[5] == omitted_step(n - 9) == {"action": f"[... {n - 9} steps omitted ...]", "observation": ""}
    assert omitted_count(kept[5]) == n - 9
    assert [omitted_count(d) for d in kept if d is not kept[5]] == [None] * 9
    assert kept[6]["action"] == t.steps[n - 4].action and kept[-1]["action"] == t.steps[-1].action
    assert all(len(d["observation"]) <= 50 for d in kept)
    assert kept[2]["observation"].endswith("…")
    short = trim_steps(_steps(WEB["webshop/fixed_100"]), max_steps=60, max_chars=10_000)
    assert [d["action"] for d in short] == [s.action for s in WEB["webshop/fixed_100"].steps]
    assert short[0]["observation"] == WEB["webshop/fixed_100"].steps[0].observation
    react = trim_steps(_steps(Trajectory("t", [Step("a", "o", "why")])), 5, 300)
    assert react == [{"action": "a", "observation": "o", "thought": "why"}]
    with pytest.raises(ValueError):
        trim_steps(_steps(t), 0, 10)


def test_trim_steps_cuts_text_one_way() -> None:
    """Observations and thoughts are stripped, then cut (without trailing blanks) to max_chars."""
    long = Step("x" * 1500, "  " + "word " * 30 + " ", "\n" + "word " * 10)
    (d,) = trim_steps(_steps(Trajectory("t", [long])), 5, 21)
    assert d["observation"] == d["thought"] == "word word word word…"
    assert d["action"] == "x" * 999 + "…"  # actions are cut at 1000 characters (or max_chars if more)
    (d,) = trim_steps(_steps(Trajectory("t", [Step("go", "  short  ")])), 5, 21)
    assert d == {"action": "go", "observation": "short"}
    (d,) = trim_steps(_steps(Trajectory("t", [long])), 5, 0)
    assert (d["observation"], d["thought"]) == ("", "")
    # without max_chars nothing is cut: the render path cuts its own way
    assert trim_steps([{"action": "a", "observation": " o " * 900}], 5) == [
        {"action": "a", "observation": " o " * 900}
    ]
    # keys a hand edit added are kept
    assert trim_steps([{"action": "a", "observation": "o", "note": "n"}], 5, 10) == [
        {"action": "a", "observation": "o", "note": "n"}
    ]


def test_trimming_again_counts_the_steps_a_marker_stands_for() -> None:
    t = MISC["scienceworld/boil/train/var0"]
    full = trim_steps(_steps(t), 10_000, 300)
    for k in range(1, 12):
        once = trim_steps(full, k)
        for j in range(1, k + 1):
            assert trim_steps(once, j) == trim_steps(full, j), (k, j)
    # the marker of memory files written before (proceduralization policy) counts too
    legacy = [*full[:2], {"action": "…", "observation": f"[{len(full) - 4} steps omitted]"}, *full[-2:]]
    assert omitted_count(legacy[2]) == len(full) - 4
    assert trim_steps(legacy, 3) == trim_steps(full, 3)
    assert omitted_count({"action": "…", "observation": "it failed"}) is None
    assert omitted_count({"action": "[... 3 steps omitted ...]", "observation": "a real reply"}) is None


def test_render_and_distill_agree() -> None:
    """A memory cut to fit a prompt shows the steps distill would have kept, marker and all."""
    t = MISC["scienceworld/boil/train/var0"]
    full = trim_steps(_steps(t), 10_000, 300)

    def shown(steps: list[dict[str, str]], max_steps: int | None = None) -> str:
        m = Memory(id="m1", kind="trajectory", task=t.task, steps=steps)
        return render_memory(Hit(m, 0.5, 0.5, 0.0), 1, max_steps=max_steps)

    for k in (1, 2, 5, 10, len(full) - 1):
        assert shown(full, k) == shown(trim_steps(full, k)), k
        assert f"  [... {len(full) - k + 1} steps omitted ...]" in shown(full, k)
    assert "omitted" not in shown(full)


def test_render_prompt_shrinks_a_memory_to_its_budget() -> None:
    """Fewer steps (head and tail around the marker) and shorter observations, down to one step."""
    one = Memory(id="m1", kind="trajectory", task="t", steps=[{"action": "a", "observation": "o " * 500}])
    hit = Hit(one, 0.5, 0.5, 0.0)
    header = estimate_tokens(PROMPT_HEADER)
    whole = estimate_tokens(render_memory(hit, 1)) + 1
    short = estimate_tokens(render_memory(hit, 1, max_steps=1, obs_chars=120)) + 1
    assert short < whole
    packed = render_prompt([hit], max_tokens=header + short)
    assert "o o" in packed and len(packed) < len(render_prompt([hit], max_tokens=header + whole))
    # not even the shortest form fits: no block at all (not a header promising memories)
    assert render_prompt([hit], max_tokens=header + short - 1) == ""
    t = MISC["scienceworld/boil/train/var0"]
    many = Memory(id="m2", kind="trajectory", task=t.task, steps=trim_steps(_steps(t), 10_000, 300))
    packed = render_prompt([Hit(many, 0.5, 0.5, 0.0)], max_tokens=300)
    assert estimate_tokens(packed) <= 300
    assert re.search(r"\n  \[\.\.\. \d+ steps omitted \.\.\.\]\n", packed)
    assert f"  > {t.steps[-1].action}" in packed  # the last step stays
