"""The ``memp`` command line: thin commands over the library in ``memp_cli``.

Errors from the library (:class:`memp_cli.errors.MempError`) are turned into a
message on stderr and an exit code in exactly one place, :class:`MempGroup`.
"""

from __future__ import annotations

import sys
import traceback as tb
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click  # typer vendors click: its Context and exceptions live here
from typer.core import TyperGroup

from memp_cli import __version__
from memp_cli.cli import output
from memp_cli.cli.output import env
from memp_cli.errors import ExitCode, MempError
from memp_cli.store import Store, resolve_store_path


class MempGroup(TyperGroup):
    """Maps library exceptions to exit codes, in one place."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MempError as e:
            if env.traceback:
                tb.print_exc()
            output.error(str(e))
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            output.error("interrupted; the store is left as it was before the unfinished step")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            # Usage errors (typer._click's UsageError and friends) are TyperExceptions.
            raise
        except Exception as e:
            if env.traceback:
                raise
            output.error(f"unexpected {type(e).__name__}: {e}")
            sys.stderr.write("  hint: this is a bug in memp; run again with --traceback and report it\n")
            raise typer.Exit(int(ExitCode.ERROR)) from None


app = typer.Typer(
    cls=MempGroup,
    # Plain click help: typer's rich renderer costs ~100 ms of imports on every --help.
    rich_markup_mode=None,
    name="memp",
    help=(
        "Procedural memory for LLM agents: turn agent trajectories into memories, "
        "retrieve the right one for a new task.\n\n"
        "\b\nExample:\n  memp init && memp ingest runs.jsonl && memp distill\n"
        "  memp query 'put a clean mug in the microwave'"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Globals:
    store: str | None = None
    embedder: str | None = None
    wait: bool = True


G = Globals()


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"memp {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    store: Annotated[
        str | None,
        typer.Option("--store", "-s", envvar="MEMP_STORE", help="Store directory (default: ./.memp)."),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            envvar="MEMP_EMBEDDER", help="Embedder: minilm, hash or litellm/<model> (default: the store's)."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            envvar="MEMP_WAIT",
            help="When another memp process is writing: wait for it, or exit with code 6.",
        ),
    ] = True,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", envvar="MEMP_QUIET", help="No progress or summary on stderr.")
    ] = False,
    traceback: Annotated[
        bool, typer.Option("--traceback", envvar="MEMP_TRACEBACK", help="Show tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """memp: procedural memory for LLM agents."""
    G.store, G.embedder, G.wait = store, embedder, wait
    env.quiet, env.traceback = quiet, traceback


def store_path() -> Path:
    return resolve_store_path(G.store)


def open_store(command: str) -> Store:
    s = Store.open(store_path(), wait=G.wait)
    s.command = command
    return s


from memp_cli.cli import commands, eval_cmd, maintenance, query_cmd, update_cmd  # noqa: E402,F401  (register commands)


def main() -> None:
    app(prog_name="memp")
