"""The ``memp`` command line: thin commands over the library in ``memp_cli``.

Errors from the library (:class:`memp_cli.errors.MempError`) are turned into a
message on stderr and an exit code in exactly one place, :class:`MempGroup`.

Start-up: ``memp --help`` imports typer and this package only. A command's module (and the
library behind it) is imported when that command runs; :data:`COMMANDS` lists each command's
module and summary for the help screen (pip's ``commands_dict``). tests/test_cli_startup.py
checks the list against the commands and the modules ``--help`` and ``query`` import.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer import _click  # typer vendors click: its Context and exceptions live here
from typer._click.core import ParameterSource
from typer.core import TyperCommand, TyperGroup, TyperOption

from memp_cli import __version__
from memp_cli.cli import output
from memp_cli.cli.output import env
from memp_cli.errors import ExitCode, MempError

if TYPE_CHECKING:
    from memp_cli.store import Store

DEFAULT_STORE = ".memp"

# Command name -> (the module that registers it, the first paragraph of its help).
# In help order. A new command adds a line here (a test fails until it does).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("memp_cli.cli.commands", "Create a memp store."),
    "ingest": ("memp_cli.cli.commands", "Store trajectories from JSONL (one run per line)."),
    "distill": ("memp_cli.cli.commands", "Build memories from ingested trajectories that have none yet."),
    "list": (
        "memp_cli.cli.commands",
        "List memories (a table on a terminal, JSON lines otherwise or with --json).",
    ),
    "show": ("memp_cli.cli.commands", "Print one memory: its TOML file, or JSON with --json."),
    "edit": (
        "memp_cli.cli.commands",
        "Edit a memory in $EDITOR; it is validated before it replaces the file.",
    ),
    "stats": ("memp_cli.cli.commands", "Counts: trajectories, memories by kind, index state, size on disk."),
    "doctor": ("memp_cli.cli.maintenance", "Check that config, memory files, trajectories and index agree."),
    "scrub": (
        "memp_cli.cli.maintenance",
        "Remove secrets already stored: trajectories, memories and their history, trash, cache, journal, index.",
    ),
    "query": ("memp_cli.cli.query_cmd", "Find the memories most relevant to a task."),
    "index": ("memp_cli.cli.maintenance", "The derived vector and lexical index."),
    "model": ("memp_cli.cli.maintenance", "The local embedding model (all-MiniLM-L6-v2)."),
    "feedback": (
        "memp_cli.cli.update_cmd",
        'Count one use of each memory and its outcome (for logs without "memories_used").',
    ),
    "reflect": (
        "memp_cli.cli.update_cmd",
        "Correct memories from the failed runs that used them (the paper's adjustment).",
    ),
    "prune": (
        "memp_cli.cli.update_cmd",
        "Discard memories by the rules in memp.toml [prune]; each goes to the trash with its reason.",
    ),
    "cycle": (
        "memp_cli.cli.update_cmd",
        "One learning cycle for cron: ingest -> distill -> reflect -> prune, with the store's settings.",
    ),
    "history": (
        "memp_cli.cli.update_cmd",
        "The versions of a memory: when, by which command or a hand edit, and why.",
    ),
    "diff": ("memp_cli.cli.update_cmd", "A unified diff between two versions of a memory."),
    "revert": (
        "memp_cli.cli.update_cmd",
        "Restore an earlier version byte for byte; the revert is itself a new version.",
    ),
    "forget": (
        "memp_cli.cli.update_cmd",
        "Move memories to the trash: never returned by a query, never rebuilt by distill.",
    ),
    "restore": (
        "memp_cli.cli.update_cmd",
        "Bring memories back from the trash, whole (a new version in their history).",
    ),
    "trash": ("memp_cli.cli.update_cmd", "The trash: forgotten and pruned memories."),
    "eval": ("memp_cli.cli.eval_cmd", "Measure memp: replay recorded runs, or let an agent play new games."),
    "mcp": (
        "memp_cli.cli.mcp_cmd",
        "Serve the store to agents over MCP (stdio): query, show, list, feedback, record.",
    ),
    "hook": (
        "memp_cli.cli.hook_cmd",
        "Ingest the session a coding agent's hook event names (JSON on stdin); always exits 0.",
    ),
    "export": ("memp_cli.cli.export_cmd", "Write the store's procedures where agents read them."),
}

# Root options that are not settings: they stay before the command.
_ROOT_ONLY = {"version", "help", "install_completion", "show_completion"}


def load_all_commands() -> None:
    """Import every command module (docs, completion and tests want the whole tree)."""
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        importlib.import_module(module)


class MempGroup(TyperGroup):
    """The root group: loads commands lazily, accepts the global options after a command too,
    and maps library exceptions to exit codes, in one place."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for cmd in self.commands.values():
            self._adopt(cmd)

    # -- lazy commands

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])
            full = typer.main.get_command(app)  # converts what is registered by now
            for name, cmd in getattr(full, "commands", {}).items():
                self.commands.setdefault(name, cmd)  # adopted by full's __init__
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`, without importing the commands."""
        rows: list[tuple[str, _click.Command]] = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None:
                cmd = TyperCommand(name, help=COMMANDS[name][1])
            if not cmd.hidden:
                rows.append((name, cmd))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])

    # -- global options after the command

    def _adopt(self, cmd: _click.Command) -> None:
        """Give ``cmd`` (and the commands below it) hidden copies of the root's settings options,
        so ``memp distill -q`` works like ``memp -q distill``. An option the command defines
        itself (``init --embedder``) stays the command's."""
        taken = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        added: list[str] = []
        for p in self.params:
            if not isinstance(p, TyperOption) or p.name in _ROOT_ONLY or p.name is None:
                continue
            opts = [o for o in p.opts if o not in taken]
            if not opts or any(o in taken for o in p.secondary_opts):
                continue
            decls = [f"{opts[0]}/{p.secondary_opts[0]}"] if p.secondary_opts else opts
            cmd.params.append(
                TyperOption(
                    param_decls=[*decls, f"global_{p.name}"],
                    is_flag=p.is_flag,
                    type=None if p.is_flag else p.type,
                    default=None,
                    expose_value=False,
                    hidden=True,
                    callback=_setter(p.name),
                    help=p.help,
                )
            )
            added.append("/".join([*opts, *p.secondary_opts]))
        if added:
            note = f"Global options may also follow the command: {', '.join(added)} (see memp --help)."
            cmd.epilog = f"{cmd.epilog}\n\n{note}" if cmd.epilog else note
        for sub in getattr(cmd, "commands", {}).values():
            self._adopt(sub)

    # -- errors

    def invoke(self, ctx: _click.Context) -> Any:
        _say_endpoints(quiet=True)  # calls made before this command (in-process callers) are not its
        try:
            return self._invoke(ctx)
        finally:
            _say_endpoints()

    def _invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MempError as e:
            if env.traceback:
                import traceback

                traceback.print_exc(file=env.stderr)
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
        except OSError as e:
            if env.traceback:
                raise
            mapped = os_error(e)
            if mapped is None:
                _unexpected(e)
            output.error(str(mapped))
            raise typer.Exit(int(mapped.exit_code)) from None
        except Exception as e:
            if env.traceback:
                raise
            _unexpected(e)


def _say_endpoints(*, quiet: bool = False) -> None:
    """The run summary says where LLM and embedding calls went (a warning for an endpoint only
    memp.toml named: it got no API key); nothing when no call was made."""
    endpoints = sys.modules.get("memp_cli.backends.llm.endpoints")  # never imported just for this
    if endpoints is not None:
        for ep in endpoints.endpoints_used():
            if not quiet:
                (output.info if ep.confirmed else output.warn)(ep.note())


def _unexpected(e: BaseException) -> NoReturn:
    output.error(f"unexpected {type(e).__name__}: {e}")
    env.stderr.write("  hint: this is a bug in memp; run again with --traceback and report it\n")
    raise typer.Exit(int(ExitCode.ERROR)) from None


# errno -> (what it means, what to do); a file of the store or an input file.
_OS_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "memp needs to read and write the store's files"),
    errno.EPERM: ("operation not permitted", "memp needs to read and write the store's files"),
    errno.EROFS: ("read-only file system", "write commands need a writable store"),
    errno.ENOSPC: ("no space left on the device", "free some space, then run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, then run the command again"),
}


def os_error(e: OSError) -> MempError | None:
    """A permission, read-only or full-disk error as a store problem (exit 5) that names the path
    and what to do; None for other OS errors (a bug)."""
    from memp_cli.errors import StoreError

    if e.errno not in _OS_PROBLEMS:
        return None
    what, todo = _OS_PROBLEMS[e.errno]
    name = e.filename
    path = Path(os.fsdecode(name)) if isinstance(name, str | bytes | os.PathLike) and name else None
    root = store_path().absolute()
    in_store = path is not None and (path.absolute() == root or root in path.absolute().parents)
    where = f"{path}: " if path is not None else ""
    if e.errno in (errno.EACCES, errno.EPERM) and in_store:
        hint = (
            f"{todo}: ask the owner of {root} for write access (e.g. a shared group with "
            "`chmod -R g+w`), or use a store of your own with --store / MEMP_STORE"
        )
    elif e.errno in (errno.EACCES, errno.EPERM):
        hint = "check the file's permissions"
    else:
        hint = todo
    return StoreError(f"{where}{what}", hint=hint)


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


def _set_global(name: str, value: Any) -> None:
    if name in ("quiet", "traceback"):
        setattr(env, name, bool(value))
    else:
        setattr(G, name, value)


def _setter(name: str) -> Callable[[_click.Context, _click.Parameter, Any], None]:
    """The callback of a global option given after the command: it overrides the root's value
    only when typed on the command line (an env var is read once, by the root option)."""

    def callback(ctx: _click.Context, param: _click.Parameter, value: Any) -> None:
        if param.name is not None and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            _set_global(name, value)

    return callback


def choice(values: Iterable[str]) -> Callable[[Any], str | None]:
    """An option callback accepting only ``values`` (None passes: the store's default): an
    invalid value is a usage error (exit 2) that lists the valid ones."""
    allowed = tuple(values)

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def version_callback(value: bool) -> None:
    if value:
        output.write(f"memp {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_callback(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            "-s",
            envvar="MEMP_STORE",
            help="Store directory (default: .memp here or in the nearest parent directory that has one).",
        ),
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
    env.fast_exit = False  # only a command that asks for it (query) ends with os._exit
    for name, value in (
        ("store", store),
        ("embedder", embedder),
        ("wait", wait),
        ("quiet", quiet),
        ("traceback", traceback),
    ):
        _set_global(name, value)


def find_store(start: Path | None = None) -> Path:
    """The nearest ``.memp`` directory at or above ``start`` (the cwd), as git finds ``.git``;
    ``./.memp`` when there is none (where ``memp init`` creates it)."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_STORE
        if candidate.is_dir():
            return candidate if folder != Path.cwd().absolute() else Path(DEFAULT_STORE)
    return Path(DEFAULT_STORE)


def store_path(*, discover: bool = True) -> Path:
    """--store, else MEMP_STORE, else the nearest .memp at or above the cwd (``discover``) or
    ./.memp (where ``memp init`` creates a store)."""
    if G.store:
        return Path(G.store)
    if os.environ.get("MEMP_STORE"):
        return Path(os.environ["MEMP_STORE"])
    return find_store() if discover else Path(DEFAULT_STORE)


def open_store(command: str) -> Store:
    from memp_cli.store import Store

    s = Store.open(store_path(), wait=G.wait)
    s.command = command
    return s


def main() -> None:
    """The console entry point. A read-only command that asked for it (``env.fast_exit``: a
    query) ends the process with ``os._exit`` once its output is flushed: tearing down the
    interpreter (numpy, the index's arrays) costs ~60 ms of a ~300 ms query at 100k memories,
    and such a command has nothing to clean up. Every other command exits normally."""
    try:
        app(prog_name="memp")
    except SystemExit as e:
        if not env.fast_exit:
            raise
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, OSError):
            raise e from None  # let the interpreter report it as it would have
        os._exit(code)
