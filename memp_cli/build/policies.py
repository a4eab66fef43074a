"""Build policies: how one trajectory becomes one memory.

- ``trajectory``: the memory keeps the task and the concrete steps (trimmed
  to ``[distill] max_steps``, long observations cut). No LLM.
- ``script``: a model turns the run into an abstract procedure (numbered general
  steps with the specifics lifted into ``{variables}``, preconditions, pitfalls,
  keywords): :mod:`memp_cli.model.script` holds the schema, :mod:`memp_cli.build.prompting`
  the prompt.
- ``proceduralization`` (the default): one memory holding both the script and the
  trimmed concrete steps.

The model is any litellm model string, or ``builtin``:
:func:`memp_cli.build.builtin.distiller.builtin_script`, a deterministic rule-based
distiller (no network, no key), labelled as such in every memory it writes.

A memory's id derives from the policy and the trajectory id. A memory built with
another model or prompt version is rebuilt as a new ``version`` of the same memory,
except that the builtin distiller never replaces what an LLM built (:func:`is_current`).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from memp_cli.errors import InputError, MemoryFileError
from memp_cli.model.memory import Memory, Provenance, load_memory_file, read_memory_bytes
from memp_cli.model.trajectory import Trajectory
from memp_cli.store.protocol import MemoryStore

if TYPE_CHECKING:  # the CLI imports this module for `memp --help`: build code loads when used
    from memp_cli.model.script import Script

POLICIES = ("trajectory", "script", "proceduralization")
KIND_OF_POLICY = {"trajectory": "trajectory", "script": "script", "proceduralization": "procedure"}
BUILTIN_MODEL = "builtin"
# Bump when builtin_script changes what it writes: stores then rebuild its memories.
BUILTIN_VERSION = "builtin-v1"
BUILTIN_GENERATOR = "builtin (rule-based, not an LLM)"


def memory_id(policy: str, trajectory_id: str) -> str:
    return "m" + hashlib.sha256(f"{policy}:{trajectory_id}".encode()).hexdigest()[:12]


def kept_steps(t: Trajectory, store: MemoryStore) -> list[dict[str, str]]:
    """The concrete steps a memory keeps of ``t``, trimmed by the store's ``[distill]`` settings."""
    from memp_cli.model.steps import trim_steps

    cfg = store.config.distill
    return trim_steps([s.to_dict() for s in t.steps], cfg.max_steps, cfg.max_observation_chars)


def trajectory_memory(t: Trajectory, store: MemoryStore) -> Memory:
    """A ``trajectory`` memory: the task and the steps of the run (no LLM)."""
    from memp_cli.build.builtin.keywords import extract_keywords

    return Memory(
        id=memory_id("trajectory", t.id),
        kind="trajectory",
        task=t.task,
        keys=[t.task],
        keywords=extract_keywords(t.task),
        task_type=t.task_type or "",
        success=t.success,
        steps=kept_steps(t, store),
        provenance=Provenance(trajectories=[t.id], policy="trajectory"),
    )


def script_memory(
    t: Trajectory, script: Script, store: MemoryStore, *, policy: str, model: str, prompt_version: str
) -> Memory:
    """A ``script`` or ``procedure`` memory from a :class:`Script`."""
    body = script.to_dict()
    body["generator"] = BUILTIN_GENERATOR if model == BUILTIN_MODEL else f"{model} (LLM)"
    kind = KIND_OF_POLICY[policy]
    return Memory(
        id=memory_id(policy, t.id),
        kind=kind,
        task=t.task,
        keys=[t.task],
        keywords=list(script.keywords),
        task_type=t.task_type or "",
        success=t.success,
        script=body,
        steps=kept_steps(t, store) if kind == "procedure" else [],
        provenance=Provenance(trajectories=[t.id], policy=policy, model=model, prompt_version=prompt_version),
    )


_PROV_SECTION = re.compile(r"^\[provenance\][ \t]*\r?\n(.*?)(?=^\s*\[|\Z)", re.MULTILINE | re.DOTALL)


def built_with(path: Path) -> tuple[str, str, str]:
    """(policy, model, prompt_version) recorded in a memory file. Raises MemoryFileError if
    broken.

    Reads only the ``[provenance]`` table when it can (fast for big stores); falls back
    to a full validated parse.
    """
    try:
        text = read_memory_bytes(path).decode("utf-8")  # never a FIFO or /dev/zero
        m = _PROV_SECTION.search(text)
        if m:
            prov = tomllib.loads(m.group(1))
            got = (prov.get("policy", ""), prov.get("model", ""), prov.get("prompt_version", ""))
            if all(isinstance(x, str) for x in got):
                return got
    except (OSError, MemoryFileError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        pass  # the full parse below names what is wrong
    mem = load_memory_file(path)
    return mem.provenance.policy, mem.provenance.model, mem.provenance.prompt_version


def needs_rebuild(built: tuple[str, str, str], policy: str, model: str, prompt_version: str) -> bool:
    """Whether a memory built with ``built`` = (policy, model, prompt version) is rebuilt for
    this run: another policy always (as a new version of the same memory: one memory per run,
    whatever the policy); the same policy by :func:`is_current`'s rule."""
    built_policy, built_model, built_version = built
    if built_policy and built_policy != policy:
        return True
    if policy == "trajectory":
        return False
    return not is_current((built_model, built_version), model, prompt_version)


def is_current(built: tuple[str, str], model: str, prompt_version: str) -> bool:
    """Whether a memory built with ``built`` = (model, prompt version) needs no rebuilding.

    The same model and prompt version: current. The builtin distiller never replaces what an
    LLM built (a cron ``memp distill`` with the default model must not downgrade memories
    built with ``--model``); any other change of model or prompt version rebuilds.
    """
    if built == (model, prompt_version):
        return True
    return model == BUILTIN_MODEL and built[0] not in ("", BUILTIN_MODEL)


def resolve_policy(store: MemoryStore, policy: str | None) -> str:
    pol = policy or store.config.distill.policy
    if pol not in POLICIES:
        raise InputError(f"unknown policy {pol!r}", hint=f"choose one of {', '.join(POLICIES)}")
    return pol
