"""Docs and completion scripts come from the code and must not go stale."""

from __future__ import annotations

from pathlib import Path

import typer

from memp_cli.cli import app
from memp_cli.cli.gendocs import _commands, expected_files, subcommand

REPO = Path(__file__).resolve().parents[1]


def test_generated_files_are_current() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, text in expected_files(REPO).items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"regenerate with `python -m memp_cli.cli.gendocs`: {stale}"


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    missing = []
    for path in _commands(root, []):
        cmd = root
        for name in path:
            sub = subcommand(cmd, name)
            assert sub is not None
            cmd = sub
        if not (cmd.help or "").strip():
            missing.append(" ".join(path))
        for param in cmd.params:
            is_option = param.param_type_name == "option"
            if (
                is_option
                and not getattr(param, "hidden", False)
                and not (getattr(param, "help", "") or "").strip()
            ):
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert not missing, f"commands/options without help: {missing}"
    assert len(_commands(root, [])) >= 12  # the walk reaches every subcommand


def test_every_global_option_has_env_var() -> None:
    root = typer.main.get_command(app)
    for param in root.params:
        if param.param_type_name == "option" and param.name not in {
            "version",
            "install_completion",
            "show_completion",
            "help",
        }:
            assert param.envvar and str(param.envvar).startswith("MEMP_"), param.name
