"""Shared fixtures: an isolated store per test, and two ways to run the real CLI.

- :func:`memp` runs ``memp ...`` in-process with typer's ``CliRunner`` (fast; stdout
  and stderr are captured separately).
- :func:`memp_subprocess` runs ``python -m memp_cli ...`` in a child process (the real
  entry point, real stdin/stdout, signals).

Both return a :class:`Run` and check what every memp command promises: no
traceback on stderr unless ``--traceback`` was given.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# Real trajectory slices (see tests/data/README.md), by input shape.
FILES = {
    "native": DATA / "alfworld_train.jsonl",
    "native_webshop": DATA / "webshop.jsonl",
    "openai": DATA / "openai_webshop.jsonl",
    "memp": DATA / "memp_alfworld.jsonl",
    "conversations": DATA / "conversations_agentinstruct.jsonl",
}

_ENV_VARS = (
    "MEMP_STORE",
    "MEMP_EMBEDDER",
    "MEMP_WAIT",
    "MEMP_QUIET",
    "MEMP_TRACEBACK",
    "MEMP_EDITOR",
    "MEMP_MODEL",
    "MEMP_API_BASE",
    "MEMP_EMBEDDER_API_BASE",
    "MEMP_CONCURRENCY",
    "MEMP_LLM_TIMEOUT",
    "MEMP_DEBUG",
    "VISUAL",
    "EDITOR",
)


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def jsonl(self) -> list[Any]:
        """stdout as JSON lines; fails if any line is not JSON (stdout carries data only)."""
        out = []
        for n, line in enumerate(self.stdout.splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"stdout line {n} of memp {' '.join(self.args)} is not JSON: {line!r}")
        return out

    def __repr__(self) -> str:
        return (
            f"Run(memp {' '.join(self.args)} -> {self.code})\n--- stdout\n{self.stdout[:3000]}"
            f"\n--- stderr\n{self.stderr[:3000]}"
        )


def _check(run: Run, expect: int | None) -> Run:
    if expect is not None:
        assert run.code == expect, repr(run)
    if "--traceback" not in run.args:
        assert "Traceback" not in run.stderr, repr(run)
    return run


def _as_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    return data.encode("utf-8") if isinstance(data, str) else data


def memp(*args: Any, input: bytes | str | None = None, expect: int | None = 0) -> Run:
    """Run the CLI in-process. ``expect``: the exit code to assert (None: don't)."""
    from typer.testing import CliRunner

    from memp_cli.cli import app
    from memp_cli.cli.output import env

    argv = [str(a) for a in args]
    data = _as_bytes(input)
    with env.swap(stdin=io.BytesIO(data)):  # the CLI reads `-` from env.stdin
        result = CliRunner().invoke(app, argv, input=data, catch_exceptions=False)
    return _check(Run(argv, result.exit_code, result.stdout, result.stderr), expect)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("COLUMNS", "120")
    return env


def memp_subprocess(
    *args: Any, input: bytes | str | None = None, expect: int | None = 0, timeout: float = 60
) -> Run:
    """Run ``python -m memp_cli`` as a child process."""
    argv = [str(a) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "memp_cli", *argv],
        input=_as_bytes(input),
        capture_output=True,
        env=subprocess_env(),
        timeout=timeout,
    )
    run = Run(argv, proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))
    return _check(run, expect)


@pytest.fixture(params=["inprocess", "subprocess"])
def cli(request: pytest.FixtureRequest) -> Any:
    """The CLI both ways: in-process (CliRunner) and as ``python -m memp_cli``."""
    return memp if request.param == "inprocess" else memp_subprocess


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test: its own cwd and store (``MEMP_STORE``), no memp settings from outside.

    The directory is not inside ``tmp_path``, which stays the test's own. HOME and
    XDG_CACHE_HOME are left alone (the MiniLM model cache lives there).
    """
    work = tmp_path_factory.mktemp("work")
    monkeypatch.chdir(work)
    for var in _ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MEMP_STORE", str(work / ".memp"))
    monkeypatch.setenv("COLUMNS", "120")
    yield work


@pytest.fixture
def store_dir(isolated: Path) -> Path:
    return isolated / ".memp"


@pytest.fixture
def store(store_dir: Path) -> Path:
    """An empty store with the ``hash`` embedder (no model needed)."""
    memp("init", "--embedder", "hash")
    return store_dir


def set_update_policy(store_dir: Path, policy: str) -> None:
    """Set ``[update] policy`` in a store's memp.toml (as a user would, by hand)."""
    cfg = store_dir / "memp.toml"
    text = cfg.read_text(encoding="utf-8")
    assert 'policy = "adjustment"' in text
    cfg.write_text(text.replace('policy = "adjustment"', f'policy = "{policy}"'), encoding="utf-8")


@pytest.fixture
def vanilla_store(store_dir: Path) -> Path:
    """An empty hash store whose ``[update] policy`` is vanilla: every run, failed ones too,
    becomes a memory (tests of distill's mechanics count them all; the default, adjustment,
    builds successful runs only and is tested in test_update_*)."""
    memp("init", "--embedder", "hash")
    set_update_policy(store_dir, "vanilla")
    return store_dir


@pytest.fixture(scope="session")
def _built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built once per session: 40 ALFWorld train runs ingested and distilled."""
    root = tmp_path_factory.mktemp("template") / ".memp"
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV_VARS:
            mp.delenv(var, raising=False)
        memp("--store", root, "init", "--embedder", "hash")
        memp("--store", root, "ingest", FILES["native"])
        memp("--store", root, "distill", "--policy", "trajectory", "--with-failures")
    return root


@pytest.fixture
def built(store_dir: Path, _built_template: Path) -> Path:
    """A copy of the built store for this test (index included, fresh)."""
    shutil.copytree(_built_template, store_dir)
    return store_dir


def memory_ids(store_dir: Path) -> list[str]:
    return sorted(p.stem for p in (store_dir / "memories").glob("*.toml"))


def segments(store_dir: Path) -> list[Path]:
    return sorted(p for p in (store_dir / "trajectories").glob("*.jsonl") if not p.name.startswith(".tmp-"))


def stored_trajectories(store_dir: Path) -> list[dict[str, Any]]:
    out = []
    for seg in segments(store_dir):
        out.extend(read_records(seg))
    return out


def tmp_files(store_dir: Path) -> list[Path]:
    return sorted(store_dir.rglob(".tmp-*"))


def editor_command(script: Path) -> str:
    """A MEMP_EDITOR value running a Python script on the file to edit."""
    import shlex

    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


def write_script(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


def first_id(run: Run) -> str:
    return run.jsonl()[0]["id"]


def as_args(seq: Sequence[Any]) -> list[str]:
    return [str(a) for a in seq]


_LOCAL = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: any in-process connection or DNS lookup to a
    host other than loopback fails the test. (The one download memp makes, the
    MiniLM wheel, runs in a pip subprocess, once per machine.)"""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in _LOCAL:
            raise AssertionError(f"test tried to reach the network: {address!r}")
        real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOCAL and host is not None:
            raise AssertionError(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def state_json_before_7(index_dir: Path, version: int) -> dict[str, Any]:
    """The store's state.json laid out as index formats 2-6 wrote it (every column inline: ids,
    labels, kind and family codes), marked ``version``: how older tests turn a current index into
    an older one. The ``columns-<gen>.*.npy`` files are removed (no older memp wrote them)."""
    from memp_cli.index.state import COLUMNS, column_file_name, read_state
    from memp_cli.store import Store

    state = read_state(Store.open(index_dir.parent))
    assert state is not None
    d = json.loads((index_dir / "state.json").read_bytes())
    kinds, families = d.pop("kind_names"), d.pop("family_names")
    del d["count"]
    d.update(
        index_version=version,
        ids=state.ids,
        labels=state.labels,
        kind_names=kinds,
        kind_codes=[kinds.index(k) for k in state.kinds],
        family_names=families,
        family_codes=[families.index(f) for f in state.families],
    )
    for name in COLUMNS:
        (index_dir / column_file_name(state.generation, name)).unlink()
    return d
