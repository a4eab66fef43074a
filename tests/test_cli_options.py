"""Global options, option values and the small promises of the command layer."""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import pytest
from conftest import FILES, memp, memp_subprocess

from memp_cli.errors import ExitCode

HEAT = "heat some egg and put it in garbagecan."

# ----------------------------------------------------------- global options after the command


def test_quiet_after_the_command(store: Path) -> None:
    """The README's cron line: `memp distill -q` was "No such option" (exit 2)."""
    memp("ingest", FILES["native"])
    loud = memp("distill", "--policy", "trajectory", "--limit", "2")
    assert "memp: distill" in loud.stderr
    quiet = memp("distill", "--policy", "trajectory", "--limit", "2", "-q")
    assert quiet.stderr == ""
    assert memp("ingest", FILES["native"], "--quiet").stderr == ""


def test_store_after_the_command_wins(isolated: Path) -> None:
    other = isolated / "other"
    memp("--store", other, "init", "--embedder", "hash", "-q")  # MEMP_STORE names ./.memp, not this
    memp("ingest", FILES["native"], "--store", other)
    (st,) = memp("stats", "--json", "-s", other).jsonl()
    assert st["store"] == str(other) and st["trajectories"] > 0
    # after the command overrides before it; the env var is the default of both
    memp("--store", isolated / "nowhere", "stats", "--json", "--store", other)
    r = memp("stats", "--json", expect=ExitCode.NOT_FOUND)
    assert str(isolated / ".memp") in r.stderr


def test_init_keeps_its_own_embedder_option(isolated: Path) -> None:
    """`init --embedder` is init's option (the store's embedder), not a copy of the global one."""
    memp("init", "--embedder", "hash", "-q")
    assert 'name = "hash"' in (isolated / ".memp" / "memp.toml").read_text()


def test_other_global_options_after_the_command(store: Path) -> None:
    from memp_cli.cli import G

    memp("list", "--no-wait")
    assert G.wait is False
    memp("list")
    assert G.wait is True
    r = memp("show", "mnothere", "--traceback", expect=ExitCode.NOT_FOUND)
    assert "Traceback (most recent call last)" in r.stderr
    assert memp("index", "sync", "-q").stderr == ""  # a command inside a group too
    r = memp("query", "x", "--embedder", "minilm", expect=None)
    assert r.code != ExitCode.USAGE  # accepted (the index then says the embedder differs)


def test_global_option_env_vars_still_work(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memp("ingest", FILES["native"])
    monkeypatch.setenv("MEMP_QUIET", "1")
    assert memp("distill", "--policy", "trajectory", "--limit", "1").stderr == ""
    assert memp_subprocess("distill", "--policy", "trajectory", "--limit", "1").stderr == ""


def test_subcommand_help_mentions_the_global_options() -> None:
    r = memp("distill", "--help")
    assert "Global options may also follow the command: --store/-s" in " ".join(r.stdout.split())
    assert "--quiet/-q" in r.stdout


# ----------------------------------------------------------- small promises


def test_show_json_is_one_line(built: Path) -> None:
    mid = memp("list", "--json", "-n", 1).jsonl()[0]["id"]
    r = memp("show", mid, "--json")
    assert r.stdout.count("\n") == 1 and json.loads(r.stdout)["id"] == mid


def _count(built: Path) -> int:
    return len(list((built / "memories").glob("*.toml")))


def test_list_on_a_terminal_shows_50_and_says_so(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memp_cli.cli.commands as commands
    from memp_cli.cli.output import env

    monkeypatch.setattr(commands, "TERMINAL_LIST_LIMIT", 5)  # the template store has 40 memories
    total = _count(built)
    with env.swap(stdout_isatty=True):
        r = memp("list")
        assert r.stdout.count("trajectory") == 5
        assert f"memp: showing 5 of {total}; --limit 0 for all" in r.stderr
        r = memp("list", "--limit", 0)
        assert r.stdout.count("trajectory") == total and "showing" not in r.stderr
        r = memp("list", "--limit", 3)
        assert r.stdout.count("trajectory") == 3 and "showing" not in r.stderr
    assert len(memp("list").jsonl()) == total  # JSON lines: all by default
    assert len(memp("list", "-n", 2).jsonl()) == 2


def test_env_streams_can_be_swapped(built: Path) -> None:
    """Commands write through cli.output.env, not sys.stdout: a test can take their output."""
    from memp_cli.cli.output import env

    out, err = io.StringIO(), io.StringIO()
    with env.swap(stdout=out, stderr=err, stdout_isatty=False):
        r = memp("query", HEAT, "-k", 2, "--format", "prompt")
        memp("list", "-n", 1, "--store", built / "nowhere", expect=ExitCode.NOT_FOUND)
    assert r.stdout == "" and out.getvalue().startswith("Procedural memory")
    assert "memp: error: no memp store" in err.getvalue() or "nowhere" in err.getvalue()


def test_store_is_found_upward_from_the_cwd(
    built: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a subdirectory, memp uses the .memp above it (as git finds .git), not ./.memp."""
    monkeypatch.delenv("MEMP_STORE")
    sub = isolated / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    (st,) = memp("stats", "--json").jsonl()
    assert Path(st["store"]) == built
    assert not (sub / ".memp").exists()
    monkeypatch.chdir(isolated.parent)  # no .memp here or above (the test's own tmp tree)
    r = memp("stats", expect=ExitCode.NOT_FOUND)
    assert "memp init .memp" in r.stderr


def test_init_in_a_subdirectory_creates_the_store_there(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMP_STORE")
    memp("init", "--embedder", "hash", "-q")
    sub = isolated / "project"
    sub.mkdir()
    monkeypatch.chdir(sub)
    memp("init", "--embedder", "hash", "-q")
    assert (sub / ".memp" / "memp.toml").exists()


def test_library_log_lines_get_one_program_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """`memp model fetch` printed "memp: memp: ..." (the library's log lines carry the name)."""
    from memp_cli.cli import output
    from memp_cli.cli.output import env

    monkeypatch.setattr(env, "quiet", False)
    err = io.StringIO()
    with env.swap(stderr=err):
        output.info("memp: all-MiniLM-L6-v2 is already in /x")
        output.warn("memp: careful")
        output.info("plain")
    assert err.getvalue() == "memp: all-MiniLM-L6-v2 is already in /x\nmemp: warning: careful\nmemp: plain\n"


def test_model_fetch_prints_the_program_name_once() -> None:
    from memp_cli.backends.embedders import modelfetch

    if not modelfetch.cache_is_valid(modelfetch.cached_model_dir()):
        pytest.skip("the MiniLM model is not in the cache (memp model fetch needs the network)")
    r = memp("model", "fetch")
    assert "memp: memp:" not in r.stderr and "memp: all-MiniLM-L6-v2 is already in" in r.stderr


# ----------------------------------------------------------- permission problems


def _raise(exc: OSError):  # type: ignore[no-untyped-def]
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left on the device"),
    ],
)
def test_os_errors_in_the_store_are_store_problems(
    store: Path, monkeypatch: pytest.MonkeyPatch, err: int, says: str
) -> None:
    """A user without write access got "unexpected PermissionError ... a bug in memp" (exit 1)."""
    from memp_cli.store import Store

    target = store / "trajectories" / "seg-0001.jsonl"
    exc = (PermissionError if err in (errno.EACCES, errno.EPERM) else OSError)(err, "os message", str(target))
    monkeypatch.setattr(Store, "ingest", _raise(exc))
    r = memp("ingest", FILES["native"], expect=ExitCode.STORE)
    assert f"memp: error: {target}: {says}" in r.stderr
    assert "bug in memp" not in r.stderr
    if err in (errno.EACCES, errno.EPERM):
        assert f"ask the owner of {store} for write access" in r.stderr and "--store" in r.stderr


def test_permission_denied_on_an_input_file(
    store: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    import memp_cli.cli.output as output

    secret = isolated / "secret.jsonl"
    secret.write_text("{}\n")
    monkeypatch.setattr(
        output, "open", _raise(PermissionError(errno.EACCES, "denied", str(secret))), raising=False
    )
    r = memp("ingest", secret, expect=ExitCode.STORE)
    assert f"{secret}: permission denied" in r.stderr and "check the file's permissions" in r.stderr


def test_other_os_errors_are_still_bugs(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memp_cli.store import Store

    monkeypatch.setattr(Store, "ingest", _raise(OSError(errno.EIO, "I/O error", "/dev/x")))
    r = memp("ingest", FILES["native"], expect=ExitCode.ERROR)
    assert "unexpected OSError" in r.stderr and "bug in memp" in r.stderr
