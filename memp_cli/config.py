"""The store's settings file, ``memp.toml``.

It is written once by ``memp init`` from a commented template and then
belongs to the user: memp reads it, validates every value it knows and says
``memp.toml:LINE: ...`` about what is wrong. ``schema_version`` lets future
memp versions upgrade it with small per-version migrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from memp_cli.errors import ConfigError, InputError, MempError
from memp_cli.model.tomlutil import line_of_key, parse_toml
from memp_cli.redact import shown

SCHEMA_VERSION = 1
CONFIG_NAME = "memp.toml"


class _ConfigFileError(InputError):
    pass


@dataclass
class EmbedderConfig:
    name: str = "minilm"
    dim: int = 384
    model_path: str = ""
    api_base: str = ""


@dataclass
class IndexConfig:
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 128


@dataclass
class RetrievalConfig:
    k: int = 3
    # The floor: a memory scoring below it is not a match for the task, and is not returned.
    # At 0.15, every held-out ALFWorld task (canonical and paraphrased) keeps its best memory in
    # an ALFWorld store, and 76% of tasks of other domains (WebShop, ScienceWorld, TravelPlanner,
    # chat) get nothing (benchmarks/eval_defaults.py).
    min_score: float = 0.15
    key: str = "query"
    lexical_weight: float = 0.25
    procedure_weight: float = 0.5
    family_weight: float = 0.5
    utility_weight: float = 0.0


@dataclass
class LLMConfig:
    model: str = "builtin"
    api_base: str = ""
    timeout: float = 60.0
    max_tokens: int = 1500


@dataclass
class DistillConfig:
    policy: str = "proceduralization"
    max_steps: int = 40
    max_observation_chars: int = 300


@dataclass
class UpdateConfig:
    """How outcomes change the store (Mem^p's update policies)."""

    policy: str = "adjustment"


@dataclass
class PruneConfig:
    """``memp prune`` rules (see memp_cli/update/prune.py); 0 turns a rule off."""

    min_uses: int = 3
    min_success_rate: float = 0.5
    confidence: float = 0.8
    duplicate_similarity: float = 0.95
    stale_days: int = 0
    max_memories: int = 0


@dataclass
class RedactConfig:
    """Secrets replaced before anything is stored or sent (memp_cli/redact.py)."""

    enabled: bool = True
    patterns: list[str] = field(default_factory=list)


@dataclass
class Config:
    schema_version: int = SCHEMA_VERSION
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    redact: RedactConfig = field(default_factory=RedactConfig)


_SECTIONS: dict[str, type] = {
    "embedder": EmbedderConfig,
    "index": IndexConfig,
    "retrieval": RetrievalConfig,
    "llm": LLMConfig,
    "distill": DistillConfig,
    "update": UpdateConfig,
    "prune": PruneConfig,
    "redact": RedactConfig,
}

_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("embedder", "dim"): (8, 65536),
    ("index", "M"): (2, 256),
    ("index", "ef_construction"): (8, 10000),
    ("index", "ef_search"): (1, 10000),
    ("retrieval", "k"): (1, 1000),
    ("retrieval", "min_score"): (-1.0, 1.0),
    ("retrieval", "lexical_weight"): (0.0, 1.0),
    ("retrieval", "procedure_weight"): (0.0, 1.0),
    ("retrieval", "family_weight"): (0.0, 1.0),
    ("retrieval", "utility_weight"): (0.0, 1.0),
    ("llm", "timeout"): (0.1, 3600),
    ("llm", "max_tokens"): (16, 1_000_000),
    ("distill", "max_steps"): (1, 10000),
    ("distill", "max_observation_chars"): (0, 1_000_000),
    ("prune", "min_uses"): (0, 1_000_000),
    ("prune", "min_success_rate"): (0.0, 1.0),
    ("prune", "confidence"): (0.5, 0.999),
    ("prune", "duplicate_similarity"): (0.0, 1.0),
    ("prune", "stale_days"): (0, 100_000),
    ("prune", "max_memories"): (0, 1_000_000_000),
}

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("retrieval", "key"): ("query", "avefact", "random"),
    ("distill", "policy"): ("trajectory", "script", "proceduralization"),
    ("update", "policy"): ("vanilla", "validation", "adjustment"),
}


def render_config(cfg: Config) -> str:
    """The commented ``memp.toml`` written by ``memp init``."""
    e, i, r, llm, d, p = cfg.embedder, cfg.index, cfg.retrieval, cfg.llm, cfg.distill, cfg.prune

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"""\
# memp store settings. Edit by hand; `memp doctor` checks this file.
schema_version = {cfg.schema_version}

[embedder]
# minilm (all-MiniLM-L6-v2, local, no key), hash (no model), or litellm/<model>.
# Changing it needs `memp index rebuild`.
name = {q(e.name)}
dim = {e.dim}
# A local sentence-transformers all-MiniLM-L6-v2 folder (skips the download).
model_path = {q(e.model_path)}
# For litellm/<model> embedders served locally (Ollama, vLLM, ...).
api_base = {q(e.api_base)}

[index]
# hnswlib parameters. M and ef_construction apply at the next `memp index rebuild`.
M = {i.M}
ef_construction = {i.ef_construction}
ef_search = {i.ef_search}

[retrieval]
k = {r.k}
# A memory scoring below min_score is not a match and is not returned (0.15: see the README).
min_score = {r.min_score}
# query (the task text), avefact (task keywords) or random (baseline).
key = {q(r.key)}
# The score of a memory for a task (docs in memp_cli/retrieve/retriever.py), each part in [0, 1]:
#   task      = (1 - lexical_weight) * cosine + lexical_weight * BM25 of the task text
#   base      = (1 - procedure_weight) * task + procedure_weight * BM25 of the procedure
#   score     = (1 - family_weight) * base + family_weight * mean of the best 3 bases of
#               its procedure family (its task type, else its procedure)
# The procedure is the script title without its {{variables}}: what is done, not what to.
# Tuned on held-out ALFWorld tasks and paraphrases (benchmarks/eval_retrieval.py).
lexical_weight = {r.lexical_weight}
procedure_weight = {r.procedure_weight}
family_weight = {r.family_weight}
# Weight of the outcome term: + w * (success rate with a uniform prior - 0.5), so a memory
# that keeps failing ranks below an equally similar one that keeps succeeding; unused
# memories are not punished. 0 = off (`memp query --explain` shows every part of a score).
utility_weight = {r.utility_weight}

[llm]
# Any litellm model string (openai/gpt-4o-mini, anthropic/..., ollama/...), or builtin
# (a rule-based distiller: no network, no key). Keys come from the environment only.
model = {q(llm.model)}
api_base = {q(llm.api_base)}
timeout = {llm.timeout}
# The longest reply asked for (a script of ~40 steps fits in 1500).
max_tokens = {llm.max_tokens}

[distill]
# trajectory (the run's steps), script (an abstract procedure) or proceduralization (both).
policy = {q(d.policy)}
max_steps = {d.max_steps}
max_observation_chars = {d.max_observation_chars}

[update]
# What a finished run does to the store (Mem^p): vanilla (every run becomes a memory),
# validation (only successful runs do), adjustment (only successful runs do, and a failed
# run corrects the memory it used, or the nearest procedure of its task family, through
# `memp reflect`: the paper's best).
policy = {q(cfg.update.policy)}

[prune]
# `memp prune` (the trash keeps what it removes; `memp restore ID`). 0 turns a rule off.
# failing: used at least min_uses times and even the upper confidence bound of its success
# rate is below min_success_rate (0 successes of 3 goes; 1 of 3 stays).
min_uses = {p.min_uses}
min_success_rate = {p.min_success_rate}
confidence = {p.confidence}
# duplicate: same kind, key vectors at least this alike; the best-rated one is kept.
# memp query shows such near-duplicates as one hit (their best-rated run) too.
duplicate_similarity = {p.duplicate_similarity}
# stale: not used for this many days. capacity: at most this many memories.
stale_days = {p.stale_days}
max_memories = {p.max_memories}

[redact]
# Secrets (API keys, tokens, passwords, private keys: the README's table) are replaced by
# [REDACTED:kind] before a trajectory is stored or a prompt sent. More patterns: Python regular
# expressions; a group named secret marks the part to hide, e.g. 'ticket=(?P<secret>\\w+)'.
enabled = {str(cfg.redact.enabled).lower()}
patterns = [{", ".join(q(x) for x in cfg.redact.patterns)}]
"""


# The embedders whose vector width is fixed by their model (all-MiniLM-L6-v2: 384, tested
# against memp_cli.backends.embedders.minilm.DIM); the others take [embedder] dim's range.
_EMBEDDER_DIM = {"minilm": 384}


def validate_config(cfg: Config, *, path: Path | None = None, text: str = "") -> None:
    """Check every setting: type, range, choice, and the embedder against its dimension.

    The one check for settings, run by ``memp init`` before anything is written and by
    every load of ``memp.toml``. Values are normalised in place (a whole number where a
    float is wanted becomes a float). With ``path`` (settings read from that file, whose
    ``text`` locates the line) the error is a ConfigError naming ``path:line``; without,
    the settings were given directly (``memp init`` options) and the error is an InputError.
    """
    for section, kind in _SECTIONS.items():
        values, defaults = getattr(cfg, section), kind()
        for key in (f.name for f in fields(values)):
            value = _check(section, key, getattr(values, key), getattr(defaults, key), text, path)
            setattr(values, key, value)
    name, dim = cfg.embedder.name, cfg.embedder.dim
    if not _known_embedder(name):
        from memp_cli.backends.embedders import REGISTRY

        names = ", ".join(f"{k}<model>" if k.endswith("/") else k for k in REGISTRY)
        raise _fail("embedder", "name", f"must be one of {names}, got {shown(name)}", text, path)
    if name in _EMBEDDER_DIM and dim != _EMBEDDER_DIM[name]:
        raise _fail(
            "embedder", "dim", f"must be {_EMBEDDER_DIM[name]} for the {name} embedder, got {dim}", text, path
        )


def _known_embedder(name: str) -> bool:
    """``name`` is a registered embedder; a ``prefix/`` entry needs a model name after it
    (checks the registry's names only: imports no embedder module)."""
    from memp_cli.backends.embedders import lookup
    from memp_cli.errors import ModelError

    try:
        key, model = lookup(name)
    except ModelError:
        return False
    return not key.endswith("/") or bool(model.strip())


def _fail(section: str, key: str, msg: str, text: str, path: Path | None) -> MempError:
    if path is None:
        return InputError(f"[{section}] {key} {msg}", hint="choose another value (see `memp init --help`)")
    line = line_of_key(text, key, section)
    where = f"{path}:{line}: " if line else f"{path}: "
    return ConfigError(where + f"[{section}] {key} {msg}", hint=f"fix it by hand in {path}")


def _check(section: str, key: str, value: Any, default: Any, text: str, path: Path | None) -> Any:
    def fail(msg: str) -> MempError:
        return _fail(section, key, msg, text, path)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail(f"must be true or false, got {shown(value)}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"must be a whole number, got {shown(value)}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"must be a number, got {shown(value)}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise fail(f"must be a string, got {shown(value)}")
    elif isinstance(default, list):
        return _check_patterns(value, fail)
    rng = _RANGES.get((section, key))
    if rng and not (rng[0] <= value <= rng[1]):
        raise fail(f"must be between {rng[0]} and {rng[1]}, got {value!r}")
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise fail(f"must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def _check_patterns(value: Any, fail: Any) -> list[str]:
    """``[redact] patterns``: a list of regular expressions that compile and match something."""
    from memp_cli.redact import compile_pattern

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("must be a list of strings (regular expressions)")
    for i, pattern in enumerate(value, 1):
        try:
            compile_pattern(pattern)
        except ValueError as e:
            raise fail(f"pattern {i} {e}") from None
    return list(value)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found", hint="create the store with `memp init`") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})", hint="fix or restore the file") from None
    try:
        data = parse_toml(text, path, _ConfigFileError)
    except _ConfigFileError as e:
        raise ConfigError(e.message, hint=e.hint) from None
    cfg = Config()
    version = data.get("schema_version", None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(
            f"{path}: schema_version is missing or not a number",
            hint=f"add `schema_version = {SCHEMA_VERSION}` at the top",
        )
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema_version {version} is newer than this memp understands ({SCHEMA_VERSION})",
            hint="upgrade memp (pip install -U memp)",
        )
    for key, value in data.items():
        if key == "schema_version":
            continue
        if key not in _SECTIONS:
            line = line_of_key(text, key)
            raise ConfigError(
                f"{path}:{line or '?'}: unknown setting or section {key!r}",
                hint=f"known sections: {', '.join(_SECTIONS)}",
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{path}:{line_of_key(text, key) or '?'}: {key!r} must be a [{key}] section")
        section = getattr(cfg, key)
        for k, v in value.items():
            if not hasattr(section, k):
                line = line_of_key(text, k, key)
                known = ", ".join(section.__dataclass_fields__)
                raise ConfigError(
                    f"{path}:{line or '?'}: unknown setting [{key}] {k}", hint=f"known: {known}"
                )
            setattr(section, k, v)
    validate_config(cfg, path=path, text=text)
    return cfg
