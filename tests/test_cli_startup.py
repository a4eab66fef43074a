"""Start-up: what `memp --help` and `memp query` import (deterministic, unlike a timing).

`memp --help` is typer plus memp_cli.cli and the two small modules it needs; every command's
module and the library behind it load when that command runs (cli.COMMANDS lists them for the
help screen). benchmarks/bench_startup.py times it.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import subprocess_env

# What the help screen needs of memp; anything more is a start-up regression.
HELP_MEMP_MODULES = {"memp_cli", "memp_cli.cli", "memp_cli.cli.output", "memp_cli.errors"}
# Third-party and stdlib modules no help path needs (each costs 5-150 ms to import).
HELP_FORBIDDEN = {
    "numpy",
    "litellm",
    "hnswlib",
    "tomli_w",
    "tomlkit",
    "tomllib",
    "orjson",
    "rich",
    "tokenizers",
    "mcp",
}
# Never on the query path: the LLM client, the build side, the other commands, rich (JSON out).
QUERY_FORBIDDEN = {
    "litellm",
    "memp_cli.build",
    "memp_cli.cli.commands",
    "memp_cli.cli.maintenance",
    "rich",
    "mcp",
    "memp_cli.integrations",
}
# The MCP SDK (seconds to import) is for `memp mcp` alone: not even its --help loads it.
SDK = {"mcp", "mcp_types", "memp_cli.integrations.mcp_server"}

_PROBE = """
import contextlib, io, json, os, sys
sys.argv = ["memp", *json.loads(sys.argv[1])]
from memp_cli.cli import main
def _no_fast_exit(code):  # a query ends with os._exit: raise instead, to print the modules
    raise SystemExit(code)
os._exit = _no_fast_exit
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(*args: str, code: int = 0) -> set[str]:
    """The modules a fresh ``memp ARGS`` process has imported when it exits with ``code``."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(args))],
        capture_output=True,
        env=subprocess_env(),
        timeout=60,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert (out["code"] or 0) == code, proc.stderr
    return set(out["modules"])


def _top(modules: set[str]) -> set[str]:
    """Each module and its parent packages' names (``rich.console`` counts as ``rich``)."""
    names = set()
    for m in modules:
        parts = m.split(".")
        names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


@pytest.mark.parametrize(
    ("args", "code"), [(["--help"], 0), (["--version"], 0), ([], 2)], ids=["help", "version", "no-args"]
)
def test_help_imports_only_what_it_needs(args: list[str], code: int) -> None:
    mods = imported_by(*args, code=code)
    memp_mods = {m for m in mods if m.split(".")[0] == "memp_cli"}
    assert memp_mods <= HELP_MEMP_MODULES, (
        f"`memp {' '.join(args)}` imports {sorted(memp_mods - HELP_MEMP_MODULES)}"
    )
    assert not _top(mods) & HELP_FORBIDDEN, (
        f"`memp {' '.join(args)}` imports {sorted(_top(mods) & HELP_FORBIDDEN)}"
    )


def test_query_imports_no_build_side_and_no_llm(built: Path) -> None:
    mods = _top(imported_by("query", "heat some egg and put it in garbagecan.", "--json"))
    assert "memp_cli.retrieve.retriever" in mods  # the probe ran a real query
    assert not mods & QUERY_FORBIDDEN, sorted(mods & QUERY_FORBIDDEN)


def test_a_subcommand_help_imports_only_its_module() -> None:
    mods = imported_by("query", "--help")
    assert "memp_cli.cli.query_cmd" in mods
    assert not _top(mods) & QUERY_FORBIDDEN, sorted(_top(mods) & QUERY_FORBIDDEN)


def test_command_table_matches_the_commands() -> None:
    """cli.COMMANDS (what `memp --help` shows without importing) agrees with the commands."""
    from memp_cli.cli import COMMANDS, app, load_all_commands

    load_all_commands()
    root = typer.main.get_command(app)
    real = root.commands  # type: ignore[attr-defined]
    assert set(real) == set(COMMANDS), (
        f"add to / remove from memp_cli.cli.COMMANDS: {sorted(set(real) ^ set(COMMANDS))}"
    )
    for name, (module, summary) in COMMANDS.items():
        cmd = real[name]
        first = " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())
        assert summary == first, f"COMMANDS[{name!r}]: the help of `memp {name}` starts {first!r}"
        if cmd.callback is not None and not isinstance(cmd, typer.core.TyperGroup):
            defined_in = cmd.callback.__module__
            assert defined_in == module, f"COMMANDS[{name!r}]: `memp {name}` is defined in {defined_in}"


def test_lazy_help_equals_the_help_of_the_loaded_commands() -> None:
    """The command list `memp --help` prints from the table is the one the commands give."""

    def help_text(code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code, "--help"],
            capture_output=True,
            env=subprocess_env(),
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and "Commands:" in proc.stdout, proc.stderr
        return proc.stdout

    lazy = help_text("from memp_cli.cli import main; main()")
    loaded = help_text("from memp_cli.cli import load_all_commands, main; load_all_commands(); main()")
    assert lazy == loaded


def test_a_query_process_ends_fast_and_says_everything(built: Path) -> None:
    """`memp query` ends with os._exit after flushing (no interpreter teardown): every result
    line still arrives, piped or not, and the exit codes are the usual ones."""
    from conftest import memp_subprocess

    many = memp_subprocess(
        "query", "put a mug in the fridge", "-k", "40", "--json", "--no-collapse", "--min-score", "-1"
    )
    assert len(many.jsonl()) == 40
    lines = memp_subprocess("query", "-", "--json", input='"put a mug"\n' * 50).jsonl()
    assert len(lines) == 50 and all(len(x["results"]) == 3 for x in lines)
    r = memp_subprocess("--store", built / "nope", "query", "x", expect=4)
    assert "no memp store" in r.stderr


@pytest.mark.parametrize(
    "args",
    [["list", "--json"], ["stats", "--json"], ["feedback", "--success", "mnope"], ["mcp", "--help"]],
    ids=["list", "stats", "feedback", "mcp-help"],
)
def test_only_memp_mcp_imports_the_mcp_sdk(built: Path, args: list[str]) -> None:
    mods = _top(imported_by(*args, code=4 if args[0] == "feedback" else 0))
    assert not mods & SDK, sorted(mods & SDK)
