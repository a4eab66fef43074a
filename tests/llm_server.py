"""A scriptable OpenAI-compatible server on 127.0.0.1, for tests and benchmarks (no network).

    with serve() as server:
        server.script(["hello", ("status", 429), ("sleep", 2.0, "late"), '{"a": 1}'])
        complete(msgs, LLMSettings("openai/test-model", api_base=server.url))
        server.requests  # the JSON bodies received, in order

Each reply pops the next scripted item; when the queue is empty ``default(body)`` answers.
Items: a ``str`` (200 with a chat.completion body and usage), ``("status", code)`` or
``("status", code, {header: value}, message)`` (an OpenAI-style error body; 429 carries
``Retry-After: 0`` unless headers are given), ``("sleep", seconds, content)`` (a slow reply),
``("json", body)`` (200 with exactly ``body``, e.g. a malformed reply).
``/v1/embeddings`` consumes the same queue: status and sleep items apply, a text item is
ignored; vectors are a deterministic function of each text (``dim`` floats).

Run standalone for benchmarks: ``python tests/llm_server.py --port 8123 --delay 0.2``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

Item = str | tuple[Any, ...]
Handler = Callable[[dict[str, Any]], str]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 16+ concurrent clients must not hit the listen backlog

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a test kills memp mid-call on purpose) is no server error:
        socketserver would print its traceback to stderr, which an in-process ``memp`` call
        running at that moment captures as its own (and fails the no-traceback check)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _default_handler(body: dict[str, Any]) -> str:
    return "ok"


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit-free vector for ``text`` (the same on every machine)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()


class LLMServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay: float = 0.0,
        dim: int = 64,
        default: Handler | None = None,
    ) -> None:
        self.delay = delay
        self.dim = dim
        self.default: Handler = default or _default_handler
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._queue: deque[Item] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), self._make_handler())
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, items: Iterable[Item]) -> None:
        with self._lock:
            self._queue.extend(items)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.paths.clear()
            self.headers.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def start(self) -> LLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="llm-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # ------------------------------------------------------------------ request handling

    def _next(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Item | None:
        with self._lock:
            self.requests.append(body)
            self.paths.append(path)
            self.headers.append(headers)
            return self._queue.popleft() if self._queue else None

    def _chat_body(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt = sum(len(str(m.get("content") or "").split()) + 3 for m in body.get("messages", []))
        completion = max(1, len(content.split()))
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _embedding_body(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(str(t), self.dim)}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(len(str(t).split()) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "test-embed"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.close_connection = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "bad JSON", "type": "invalid_request_error"}})
                    return
                path = self.path.split("?", 1)[0].rstrip("/")
                if not path.endswith(("/chat/completions", "/embeddings")):
                    self._send(404, {"error": {"message": f"no route {path}", "type": "not_found_error"}})
                    return
                item = server._next(path, body, {k.lower(): v for k, v in self.headers.items()})
                if server.delay:
                    time.sleep(server.delay)
                content: str | None = None
                if isinstance(item, tuple) and item and item[0] == "status":
                    code = int(item[1])
                    headers = (
                        dict(item[2]) if len(item) > 2 else ({"Retry-After": "0"} if code == 429 else {})
                    )
                    err = {
                        "error": {
                            "message": str(item[3]) if len(item) > 3 else f"scripted error {code}",
                            "type": _ERROR_TYPES.get(code, "server_error"),
                            "param": None,
                            "code": str(code),
                        }
                    }
                    self._send(code, err, headers)
                    return
                if isinstance(item, tuple) and item and item[0] == "json":
                    self._send(200, item[1])
                    return
                if isinstance(item, tuple) and item and item[0] == "sleep":
                    time.sleep(float(item[1]))
                    content = str(item[2]) if len(item) > 2 else None
                elif isinstance(item, str):
                    content = item
                elif item is not None:
                    raise ValueError(f"unknown scripted item {item!r}")
                if path.endswith("/embeddings"):
                    self._send(200, server._embedding_body(body))
                    return
                if content is None:
                    content = server.default(body)
                self._send(200, server._chat_body(body, content))

        return Handler


@contextlib.contextmanager
def serve(
    *,
    delay: float = 0.0,
    dim: int = 64,
    default: Handler | None = None,
    port: int = 0,
) -> Iterator[LLMServer]:
    """Run an :class:`LLMServer` on a free port for the duration of the ``with`` block."""
    server = LLMServer(port=port, delay=delay, dim=dim, default=default).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    args = parser.parse_args(argv)
    server = LLMServer(port=args.port, delay=args.delay, dim=args.dim).start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
