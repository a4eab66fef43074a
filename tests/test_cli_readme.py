"""Every command line the README shows runs (the cron line failed on every run: `distill -q`).

The lines are taken from the README itself: lines invoking memp in shell code blocks, the
indented `$ ` quick start, and inline spans that are a whole command line (the cron line). They
run in README order through bash, in a sandbox holding the README's input files (made from
examples/alfworld/train.jsonl and the test data); the block runs with the hash embedder
(MEMP_EMBEDDER=hash) to stay quick, the quick start with the default model when it is cached.
Placeholders are replaced: the example memory id by a real one, /data/memp and /logs by
folders of the sandbox. Lines that need an API key or a model server are skipped, with the reason.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, REPO, subprocess_env

README = REPO / "README.md"
TRAIN = REPO / "examples" / "alfworld" / "train.jsonl"
SHELL_FENCES = {"sh", "bash", "shell", "console", ""}
EXAMPLE_ID = "m1a2b3c4d5e6"


MEMP_CALL = re.compile(r"(^|[\s|&;(])memp\s")


def readme_command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each memp command line the README shows, in order."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence is not None:
            cmd = stripped.removeprefix("$ ")
            if fence in SHELL_FENCES and cmd and not cmd.startswith("#") and MEMP_CALL.search(cmd):
                out.append((n, cmd))
        elif line.startswith("    $ ") and MEMP_CALL.search(line):  # an indented block with a prompt
            out.append((n, line[len("    $ ") :].strip()))
        else:
            out.extend(
                (n, span) for span in re.findall(r"`([^`]+)`", line) if re.match(r"[A-Z_]+=\S+ memp ", span)
            )
    return out


def skip_reason(cmd: str) -> str | None:
    if "eval agent" in cmd and (
        importlib.util.find_spec("textworld_express") is None or shutil.which("java") is None
    ):
        return "memp eval agent needs textworld-express and Java 17 (pip install 'memp[agent]')"
    if "ollama/" in cmd or re.search(r"--api-base http://localhost", cmd):
        return "needs a local model server (Ollama, vLLM)"
    if re.search(r"(OPENAI|ANTHROPIC)_API_KEY=", cmd) or (
        re.search(r"--model (openai|anthropic)/", cmd) and "--dry-run" not in cmd
    ):
        return "calls a hosted LLM: needs an API key and the network"
    return None


def test_the_readme_shows_the_lines_this_test_runs() -> None:
    lines = [cmd for _, cmd in readme_command_lines(README.read_text(encoding="utf-8"))]
    assert any("memp distill -q" in c and c.startswith("MEMP_STORE=") for c in lines)  # the cron line
    assert any("pip install" in c and "memp query" in c for c in lines)  # the quick start
    assert "memp list" in lines and any(c.startswith("memp query - ") or "| memp query -" in c for c in lines)
    assert len(lines) >= 20


def _sandbox(root: Path) -> Path:
    """The README's input files, by the names it uses."""
    (root / "runs").mkdir(parents=True)
    shutil.copy(TRAIN, root / "runs" / "2026-11-01.jsonl")
    with gzip.open(root / "old-runs.jsonl.gz", "wb") as gz:
        gz.write(b"".join((DATA / "webshop.jsonl").read_bytes().splitlines(keepends=True)[:5]))
    shutil.copy(DATA / "openai_webshop.jsonl", root / "chats.jsonl")
    shutil.copy(REPO / "examples" / "alfworld" / "new_tasks.jsonl", root / "new_tasks.jsonl")
    (root / "logs").mkdir()
    shutil.copy(DATA / "memp_alfworld.jsonl", root / "logs" / "today.jsonl")
    (root / "examples").symlink_to(REPO / "examples")
    return root


def _run(cmd: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_every_readme_command_line_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "memp").exists():
        pytest.skip(f"no memp console script next to {sys.executable} (pip install -e .)")
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (the README pipes memp's JSON lines into it)")
    monkeypatch.delenv("MEMP_STORE")  # the README's lines use ./.memp, found from the cwd
    box = _sandbox(tmp_path / "box")
    env = {
        **subprocess_env(),
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "MEMP_EMBEDDER": "hash",
        "MEMP_EDITOR": "true",  # `memp edit`: an editor that changes nothing
        "MEMP_OFFLINE": "1",
    }
    env.pop("MEMP_STORE", None)
    from memp_cli.backends.embedders import modelfetch

    model_cached = modelfetch.cache_is_valid(modelfetch.cached_model_dir())
    ran, skipped, failed = [], [], []
    for n, cmd in readme_command_lines(README.read_text(encoding="utf-8")):
        reason = skip_reason(cmd)
        cwd, line_env = box, env
        if "pip install" in cmd:  # the quick start: memp is installed; run the rest, as written
            cmd = re.sub(r"^.*?pip install \S+ && ", "", cmd)
            if not model_cached:
                reason = "the quick start uses the default MiniLM model, not in the cache (no network here)"
            cwd = tmp_path / "quickstart"
            cwd.mkdir()
            (cwd / "examples").symlink_to(REPO / "examples")
            line_env = {k: v for k, v in env.items() if k != "MEMP_EMBEDDER"}
        if reason:
            skipped.append(f"README.md:{n}: {cmd}  ({reason})")
            continue
        if EXAMPLE_ID in cmd:
            real = _run("memp list --json -n 1 | jq -r .id", box, env).stdout.strip()
            cmd = cmd.replace(EXAMPLE_ID, real)
        if "/data/memp" in cmd and not (box / "data" / "memp").exists():
            shutil.copytree(box / ".memp", box / "data" / "memp")
        cmd = cmd.replace("/data/memp", str(box / "data" / "memp")).replace("/logs/", str(box / "logs") + "/")
        proc = _run(cmd, cwd, line_env)
        ran.append(cmd)
        if proc.returncode != 0:
            failed.append(f"README.md:{n}: {cmd}\n  exit {proc.returncode}\n  {proc.stderr.strip()[-800:]}")
    print("skipped:\n  " + "\n  ".join(skipped))
    assert not failed, "\n".join(failed)
    assert len(ran) >= 15, ran
