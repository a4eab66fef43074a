"""``memp export skills DIR``: the store's procedures as Agent Skills (and ``--check DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import UsageError

from memp_cli.cli import app, open_store, output
from memp_cli.cli.commands import JsonOpt
from memp_cli.cli.output import env
from memp_cli.errors import ExitCode

export_app = typer.Typer(help="Write the store's procedures where agents read them.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("skills")
def skills_cmd(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="The skills folder: .claude/skills, .agents/skills, ~/.gemini/skills..."
        ),
    ],
    check: Annotated[
        bool, typer.Option("--check", help="Only validate every skill folder in DIR against the spec.")
    ] = False,
    min_success: Annotated[
        float,
        typer.Option(
            "--min-success",
            help="Export a family only when this share of its outcomes succeeded (unknown never "
            "counts as success); 0 also exports procedures whose outcome is unknown.",
            min=0.0,
            max=1.0,
        ),
    ] = 0.5,
    max_skills: Annotated[
        int | None, typer.Option("--max", help="At most this many skills: the best by evidence.", min=1)
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="Only memories of this kind: trajectory, script, procedure. Repeatable."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export each task family as one Agent Skill: DIR/<name>/SKILL.md.

    The best-rated memory of a family gives the procedure, its failed runs the pitfalls, and
    the family's pooled outcomes the statistics (under `metadata`). Re-export rewrites only the
    folders memp wrote (listed in DIR/.memp-skills.json) and removes those whose memories are
    gone; a folder created or edited by hand is left alone with a warning. The same store
    gives the same bytes.

    --check validates every skill folder in DIR (not only memp's) and prints one
    `file:line: problem` per broken rule; it exits 3 when any is found.

    Example: memp export skills .claude/skills --max 20
    """
    if check:
        if max_skills is not None or kind:
            raise UsageError(
                "--check validates DIR as it is: --max and --kind choose what to export; give one"
            )
        _check(directory, json_out)
        return
    from memp_cli.integrations.skills import export_skills
    from memp_cli.model.memory import KINDS

    kinds = tuple(dict.fromkeys(kind)) if kind else KINDS
    for k in kinds:
        if k not in KINDS:
            raise typer.BadParameter(f"{k!r} is not one of {', '.join(KINDS)}", param_hint="--kind")
    store = open_store("export")
    report = export_skills(store, directory, min_success=min_success, max_skills=max_skills, kinds=kinds)
    for w in report.warnings:
        output.warn(w)
    if json_out or not env.stdout_isatty:
        output.emit_json_lines(e.to_dict() for e in report.entries)
    else:
        rows = [
            [
                e.name,
                e.action,
                e.family,
                f"{e.success_rate:.2f}" if e.success_rate is not None else "",
                e.reason,
            ]
            for e in report.entries
        ]
        output.table(["skill", "action", "family", "success", "note"], rows, title=f"skills in {directory}")
    counts = ", ".join(
        f"{report.count(a)} {a}" for a in ("written", "unchanged", "removed", "skipped") if report.count(a)
    )
    output.info(f"export skills to {directory}: {counts or 'nothing to export'}")


def _check(directory: Path, json_out: bool) -> None:
    from memp_cli.integrations.skillspec import check_dir

    checked, problems = check_dir(directory)
    if json_out:
        output.emit_json_lines(p.to_dict() for p in problems)
    else:
        for p in problems:
            output.write(f"{p}\n")
    errors = [p for p in problems if not p.warning]
    found = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}" if errors else "all valid"
    output.info(f"checked {checked} skill folder{'s' if checked != 1 else ''} in {directory}: {found}")
    if errors:
        raise typer.Exit(int(ExitCode.BAD_INPUT))
