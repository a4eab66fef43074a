"""``memp hook``: ingest a coding agent's session from its hook event (always exits 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memp_cli.cli import G, app
from memp_cli.cli.output import env

hook_app = typer.Typer(
    help="Ingest the session a coding agent's hook event names (JSON on stdin); always exits 0.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(hook_app, name="hook")

SuccessOpt = Annotated[
    bool | None,
    typer.Option("--success/--failure", help="Outcome of the session (default unknown)."),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--lock-wait", envvar="MEMP_HOOK_LOCK_WAIT", help="Seconds to wait for a busy store before queueing."
    ),
]


def _hook(fmt: str, success: bool | None, lock_wait: float) -> None:
    from memp_cli.ingest.transcripts.hook import run_hook, stdin_bytes

    data = stdin_bytes(env.stdin)
    store = Path(G.store) if G.store else None
    trouble = run_hook(fmt, data, store_root=store, lock_wait=lock_wait if G.wait else 0.0, success=success)
    if trouble:
        env.stderr.write(f"memp hook {fmt}: {trouble}\n")
        env.stderr.flush()


@hook_app.command("claude-code")
def hook_claude_code(success: SuccessOpt = None, lock_wait: WaitOpt = 2.0) -> None:
    """A Claude Code SessionEnd hook: ingest the session of the event on stdin.

    The store: --store / MEMP_STORE, else the nearest .memp above the event's cwd, else none (the
    hook does nothing). A busy store: the session is queued for the next ingest or distill.

    Example: echo '{"hook_event_name": "SessionEnd", "transcript_path": "s.jsonl", "cwd": "."}' | memp hook claude-code
    """
    _hook("claude-code", success, lock_wait)


@hook_app.command("gemini-cli")
def hook_gemini_cli(success: SuccessOpt = None, lock_wait: WaitOpt = 2.0) -> None:
    """A Gemini CLI SessionEnd hook: ingest the session of the event on stdin (as claude-code)."""
    _hook("gemini-cli", success, lock_wait)
