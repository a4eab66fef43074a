"""Generate ``docs/cli.md`` and ``completions/`` from the CLI itself.

Run ``python -m memp_cli.cli.gendocs`` after changing a command; a test fails
while the committed files differ from what this writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from typer._click.core import Command, Context  # typer 0.28 vendors its own click
from typer._completion_shared import get_completion_script
from typer.testing import CliRunner

from memp_cli.cli import app

SHELLS = {"bash": "memp.bash", "zsh": "_memp", "fish": "memp.fish"}


def completion_scripts() -> dict[str, str]:
    return {
        fname: get_completion_script(prog_name="memp", complete_var="_MEMP_COMPLETE", shell=shell).rstrip()
        + "\n"
        for shell, fname in SHELLS.items()
    }


def subcommand(cmd: Command, name: str) -> Command | None:
    get = getattr(cmd, "get_command", None)
    return get(Context(cmd), name) if get else None


def _commands(cmd: Command, path: list[str]) -> list[list[str]]:
    """Every command path below ``cmd`` (groups included), depth first."""
    out = [path]
    names = getattr(cmd, "list_commands", None)
    for name in names(Context(cmd)) if names else []:
        sub = subcommand(cmd, name)
        if sub is not None and not sub.hidden:
            out.extend(_commands(sub, [*path, name]))
    return out


def cli_reference() -> str:
    runner = CliRunner()
    root = typer.main.get_command(app)
    parts = [
        "# memp command reference\n",
        "Generated from `--help` by `python -m memp_cli.cli.gendocs`; do not edit by hand.\n",
    ]
    env = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    for path in _commands(root, []):
        res = runner.invoke(app, [*path, "--help"], env=env, prog_name="memp", color=False)
        if res.exit_code != 0:
            raise SystemExit(f"memp {' '.join(path)} --help failed: {res.output}")
        title = "memp " + " ".join(path) if path else "memp"
        text = "\n".join(line.rstrip() for line in res.output.strip("\n").splitlines())
        parts.append(f"## {title}\n\n```\n{text}\n```\n")
    return "\n".join(parts)


def expected_files(repo: Path) -> dict[Path, str]:
    files = {repo / "docs" / "cli.md": cli_reference()}
    for name, text in completion_scripts().items():
        files[repo / "completions" / name] = text
    return files


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    for path, text in expected_files(repo).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(repo) if path.is_relative_to(repo) else path}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "100")
    main()
