"""The LLM layer, always through litellm: its ``mock_response``, or real HTTP to a local server.

No test touches the network: the server in ``llm_server.py`` listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import memp
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.errors import ExitCode, LLMError, ModelError

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-0123456789abcdef"
MSGS = [{"role": "system", "content": "You extract procedures."}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with serve() as s:
        yield s


@pytest.fixture(autouse=True)
def _fast_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def srv(server: LLMServer) -> LLMServer:
    server.clear()
    return server


def settings(srv: LLMServer, **kw: Any) -> llm.LLMSettings:
    return llm.LLMSettings("openai/test-model", api_base=srv.url, **{"max_retries": 2, **kw})


def validate_name(obj: Any) -> str:
    if not isinstance(obj.get("name"), str):
        raise ValueError("'name' must be a string")
    return obj["name"]


# --------------------------------------------------------------------------- import


def test_import_is_lazy_offline_and_ignores_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MEMP_DOTENV_PROBE=loaded\n")
    script = textwrap.dedent(
        """
        import os, socket, sys
        calls = []
        def deny(*a, **k):
            calls.append(a[1:2] or a[:1])
            raise OSError("network disabled in this test")
        socket.socket.connect = deny
        socket.getaddrinfo = deny
        import memp_cli.backends.llm as llm
        assert "litellm" not in sys.modules, "import memp_cli.backends.llm imported litellm"
        ll = llm._litellm()
        assert ll.suppress_debug_info is True
        out = llm.complete([{"role": "user", "content": "hi"}], llm.LLMSettings("openai/gpt-4o-mini"),
                           mock_response="mocked")
        assert out.text == "mocked", out
        print(json.dumps({"calls": [str(c) for c in calls], "dotenv": os.environ.get("MEMP_DOTENV_PROBE"),
                          "mode": os.environ.get("LITELLM_MODE"),
                          "cost_map": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "MEMP_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", "import json\n" + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"calls": [], "dotenv": None, "mode": "PRODUCTION", "cost_map": "True"}
    assert len(proc.stdout.strip().splitlines()) == 1  # litellm printed nothing to stdout


@pytest.mark.parametrize("debug", [False, True])
def test_litellm_logs_go_to_stderr_only_with_memp_debug(tmp_path: Path, debug: bool) -> None:
    code = (
        "from memp_cli.backends import llm\n"
        "out = llm.complete([{'role': 'user', 'content': 'hi'}], llm.LLMSettings('openai/gpt-4o-mini'),"
        " mock_response='mocked')\n"
        "print(out.text)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "MEMP_"))}
    env["PYTHONPATH"] = str(ROOT)
    if debug:
        env["MEMP_DEBUG"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "mocked\n"
    if debug:
        assert (
            "litellm DEBUG: " in proc.stderr
            and "litellm.completion(model='openai/gpt-4o-mini'" in proc.stderr
        )
    else:
        assert proc.stderr == ""


def test_only_the_client_imports_litellm() -> None:
    importing = re.compile(r"^\s*(?:import|from)\s+litellm\b", re.MULTILINE)
    found = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "memp_cli").rglob("*.py") if importing.search(p.read_text())
    )
    assert found == ["memp_cli/backends/llm/client.py"]


# --------------------------------------------------------------------------- mock_response


def test_complete_mock_response() -> None:
    out = llm.complete(MSGS, llm.LLMSettings("openai/gpt-4o-mini"), mock_response="hi!")
    assert out.text == "hi!"
    assert out.cached is False
    assert out.usage.calls == 1 and out.usage.cached_calls == 0
    assert out.usage.tokens_in > 0 and out.usage.tokens_out > 0
    assert out.usage.cost_usd is not None and out.usage.cost_usd > 0  # a priced model


def test_complete_json_mock_fenced() -> None:
    reply = 'Sure, here it is:\n```json\n{"name": "deploy", "steps": ["a", "b"]}\n```\nAnything else?'
    value, usage = llm.complete_json(
        MSGS, llm.LLMSettings("openai/gpt-4o-mini"), validate=validate_name, mock_response=reply
    )
    assert value == "deploy"
    assert usage.calls == 1


def test_complete_json_mock_invalid_twice() -> None:
    with pytest.raises(llm.LLMReplyError) as info:
        llm.complete_json(
            MSGS, llm.LLMSettings("openai/gpt-4o-mini"), validate=validate_name, mock_response="no json here"
        )
    err = info.value
    assert isinstance(err, LLMError)
    assert err.raw == "no json here"
    assert "no JSON object" in err.reason
    assert err.usage.calls == 2
    assert err.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Here you go: {"a": {"b": "}"}} hope it helps', {"a": {"b": "}"}}),
        ('<think>maybe {"x": 0}</think>\n{"a": 2}', {"a": 2}),
    ],
)
def test_extract_json(text: str, expected: Any) -> None:
    assert llm.extract_json(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "empty"), ("no braces", "no JSON object"), ('{"a": 1,, }', "does not parse")],
)
def test_extract_json_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        llm.extract_json(text)


def test_usage_add() -> None:
    total = llm.Usage()
    total.add(llm.Usage(calls=1, tokens_in=3, tokens_out=4, cost_usd=None))
    assert total.cost_usd is None
    total.add(llm.Usage(calls=1, tokens_in=1, tokens_out=1, cost_usd=0.5)).add(llm.Usage(cached_calls=1))
    assert (total.calls, total.cached_calls, total.tokens_in, total.tokens_out) == (2, 1, 4, 5)
    assert total.cost_usd == 0.5


def test_count_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    n = llm.count_tokens(MSGS, "openai/gpt-4o-mini")
    assert 5 < n < 40

    def boom(**kw: Any) -> int:
        raise RuntimeError("no tokenizer")

    monkeypatch.setattr(llm._litellm(), "token_counter", boom)
    assert llm.count_tokens([{"role": "user", "content": "x" * 400}], "whatever/model") == 104


def test_redact() -> None:
    assert KEY not in llm.errors.redact(f"bad key {KEY} given")
    assert "sk-***" in llm.errors.redact("Incorrect API key provided: sk-proj-abcdefghijklmnop")


# --------------------------------------------------------------------------- HTTP via litellm


def test_real_http_reply_and_usage(srv: LLMServer) -> None:
    srv.script(["the answer"])
    out = llm.complete(MSGS, settings(srv, temperature=0.0, max_tokens=77))
    assert out.text == "the answer"
    assert out.usage.calls == 1
    assert out.usage.tokens_in == 6 + 5  # the server counts words + 3 a message
    assert out.usage.tokens_out == 2
    assert out.usage.cost_usd is None  # an unpriced model
    body = srv.requests[0]
    assert body["model"] == "test-model" and body["messages"] == MSGS
    assert body["max_tokens"] == 77 and body["temperature"] == 0.0
    assert srv.headers[0]["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_error_is_retried(srv: LLMServer, status: int) -> None:
    srv.script([("status", status), "after"])
    out = llm.complete(MSGS, settings(srv))
    assert out.text == "after"
    assert len(srv.requests) == 2


def test_retry_after_and_backoff(srv: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 1.0)
    waits: list[float] = []
    srv.script([("status", 429, {"Retry-After": "3"}), ("status", 500), ("status", 500), "ok!"])
    out = llm.complete(MSGS, settings(srv, max_retries=4), sleep=waits.append)
    assert out.text == "ok!"
    assert waits[0] == 3.0  # the server's Retry-After
    assert 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0  # attempt 1, 2: base 0.5 * 2**n, jittered


def test_server_error_forever(srv: LLMServer) -> None:
    srv.script([("status", 500)] * 3)
    with pytest.raises(LLMError) as info:
        llm.complete(MSGS, settings(srv, max_retries=2))
    msg = str(info.value)
    assert "openai/test-model" in msg and "3 attempts" in msg and "500" in msg
    assert len(srv.requests) == 3


def test_timeout_is_retried_then_fails(srv: LLMServer) -> None:
    srv.script([("sleep", 0.6, "late"), "fast"])
    out = llm.complete(MSGS, settings(srv, timeout=0.25, max_retries=1))
    assert out.text == "fast" and len(srv.requests) == 2

    srv.clear()
    srv.script([("sleep", 0.6, "late")] * 2)
    with pytest.raises(LLMError, match=r"2 attempts: Timeout"):
        llm.complete(MSGS, settings(srv, timeout=0.25, max_retries=1))
    assert len(srv.requests) == 2


def test_auth_error_not_retried(srv: LLMServer, capfd: pytest.CaptureFixture[str]) -> None:
    srv.script([("status", 401, {}, f"Incorrect API key provided: {KEY}")])
    with pytest.raises(LLMError) as info:
        llm.complete(MSGS, settings(srv, max_retries=4))
    assert len(srv.requests) == 1
    err = info.value
    assert err.hint is not None and "OPENAI_API_KEY" in err.hint
    assert KEY not in str(err)
    out, errout = capfd.readouterr()
    assert out == "" and errout == ""  # litellm logs nothing by default


def test_missing_key_not_retried(srv: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(LLMError) as info:
        llm.complete(MSGS, settings(srv, max_retries=4))
    assert srv.requests == []
    assert "OPENAI_API_KEY" in (info.value.hint or "")


@pytest.mark.parametrize(("status", "hint"), [(404, "--model"), (400, "--model")])
def test_client_errors_not_retried(srv: LLMServer, status: int, hint: str) -> None:
    srv.script([("status", status)])
    with pytest.raises(LLMError) as info:
        llm.complete(MSGS, settings(srv, max_retries=4))
    assert len(srv.requests) == 1
    assert hint in (info.value.hint or "")


def test_unknown_provider_hint() -> None:
    with pytest.raises(LLMError) as info:
        llm.complete(MSGS, llm.LLMSettings("no-provider-model"))
    assert "provider prefix" in (info.value.hint or "")


# --------------------------------------------------------------------------- JSON + repair


def test_json_repair_then_success(srv: LLMServer, tmp_path: Path) -> None:
    cache = llm.ResponseCache(tmp_path)
    srv.script(["I think the name is deploy", '```json\n{"name": "deploy"}\n```'])
    value, usage = llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    assert value == "deploy"
    assert usage.calls == 2
    second = srv.requests[1]["messages"]
    assert second[: len(MSGS)] == MSGS
    assert second[-2] == {"role": "assistant", "content": "I think the name is deploy"}
    assert second[-1]["role"] == "user"
    assert second[-1]["content"].startswith("Your reply was not valid: no JSON object")
    assert second[-1]["content"].endswith("Reply with only the JSON object, matching the schema.")
    # the repaired reply is cached under the original request: a re-run costs nothing
    value2, usage2 = llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    assert value2 == "deploy" and usage2.calls == 0 and usage2.cached_calls == 1
    assert len(srv.requests) == 2


def test_json_validation_reason_in_repair(srv: LLMServer) -> None:
    srv.script(['{"name": 5}', '{"name": "five"}'])
    value, _ = llm.complete_json(MSGS, settings(srv), validate=validate_name)
    assert value == "five"
    assert "'name' must be a string" in srv.requests[1]["messages"][-1]["content"]


def test_json_invalid_twice(srv: LLMServer, tmp_path: Path) -> None:
    cache = llm.ResponseCache(tmp_path)
    long_reply = "nope " * 300
    srv.script(["not json", long_reply])
    with pytest.raises(llm.LLMReplyError) as info:
        llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    err = info.value
    assert err.raw == long_reply
    assert len(str(err)) < 900  # the raw reply is cut to 500 characters
    assert err.usage.calls == 2
    assert list(tmp_path.rglob("*.json")) == []  # nothing invalid was cached
    assert len(srv.requests) == 2


def test_json_mode_sends_response_format(srv: LLMServer) -> None:
    srv.script(['{"name": "x"}', '{"name": "y"}'])
    llm.complete_json(MSGS, settings(srv), validate=validate_name)
    assert "response_format" not in srv.requests[0]
    llm.complete_json(MSGS, settings(srv), validate=validate_name, json_mode=True)
    assert srv.requests[1].get("response_format") == {"type": "json_object"}


# --------------------------------------------------------------------------- cache


def test_cache_hit_sends_no_request(srv: LLMServer, tmp_path: Path) -> None:
    cache = llm.ResponseCache(tmp_path / "cache" / "llm")
    srv.script(["first", "second"])
    a = llm.complete(MSGS, settings(srv), cache=cache)
    b = llm.complete(MSGS, settings(srv), cache=cache)
    assert (a.text, a.cached, b.text, b.cached) == ("first", False, "first", True)
    assert b.usage.calls == 0 and b.usage.cached_calls == 1 and b.usage.tokens_in == 0
    assert len(srv.requests) == 1
    key = llm.ResponseCache.key(MSGS, settings(srv))
    assert (tmp_path / "cache" / "llm" / key[:2] / f"{key}.json").is_file()
    # the key covers what determines the reply, and normalises the api base
    assert llm.ResponseCache.key(MSGS, settings(srv, timeout=5.0)) == key
    assert llm.ResponseCache.key(MSGS, llm.LLMSettings("openai/test-model", api_base=srv.url + "/")) == key
    assert llm.ResponseCache.key(MSGS, settings(srv, temperature=0.7)) != key
    assert llm.ResponseCache.key(MSGS, settings(srv), mock_response="x") != key
    c = llm.complete(MSGS, settings(srv, temperature=0.7), cache=cache)
    assert c.text == "second" and len(srv.requests) == 2


def test_corrupt_cache_file_is_a_miss(srv: LLMServer, tmp_path: Path) -> None:
    cache = llm.ResponseCache(tmp_path)
    key = cache.key(MSGS, settings(srv))
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text('{"text": "trunc')
    srv.script(["fresh"])
    out = llm.complete(MSGS, settings(srv), cache=cache)
    assert out.text == "fresh" and not out.cached and len(srv.requests) == 1
    hit = cache.get(key)
    assert hit is not None and hit[0] == "fresh"  # overwritten
    assert [p.name for p in cache.path(key).parent.iterdir()] == [f"{key}.json"]  # no temp files left


def test_cache_put_is_the_stores_durable_atomic_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memp_cli.store import fsutil

    synced: list[Path] = []
    monkeypatch.setattr(fsutil, "fsync_dir", synced.append)
    cache = llm.ResponseCache(tmp_path / "llm")
    key = cache.key(MSGS, llm.LLMSettings("openai/gpt-4o-mini"))
    cache.put(key, "reply", llm.Usage(tokens_in=3))
    assert synced == [cache.path(key).parent]  # the rename itself is made durable
    hit = cache.get(key)
    assert hit is not None and hit[0] == "reply" and hit[1].tokens_in == 3


def test_cached_reply_failing_validation_is_asked_again(srv: LLMServer, tmp_path: Path) -> None:
    cache = llm.ResponseCache(tmp_path)
    key = cache.key(MSGS, settings(srv))
    cache.put(key, "garbage", llm.Usage())
    srv.script(['{"name": "good"}'])
    value, usage = llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    assert value == "good" and usage.calls == 1 and len(srv.requests) == 1
    hit = cache.get(key)
    assert hit is not None and hit[0] == '{"name": "good"}'


# --------------------------------------------------------------------------- embeddings


def test_embed_through_server(srv: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.client, "EMBED_BATCH", 2)
    texts = ["alpha", "beta", "", "alpha", "gamma"]
    vecs = llm.embed(texts, "openai/test-embed", api_base=srv.url)
    assert vecs.shape == (5, srv.dim) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[3]) and not np.allclose(vecs[0], vecs[1])
    assert len(srv.requests) == 3 and srv.paths[0].endswith("/embeddings")
    assert srv.requests[1]["input"] == [" ", "alpha"]  # empty texts are sent as one space


def test_embed_retries_and_auth(srv: LLMServer) -> None:
    srv.script([("status", 500), ("status", 429)])
    assert llm.embed(["x"], "openai/test-embed", api_base=srv.url).shape == (1, srv.dim)
    assert len(srv.requests) == 3  # no hidden SDK retries on top of memp's
    srv.clear()
    srv.script([("status", 401)])
    with pytest.raises(ModelError, match="test-embed"):
        llm.embed(["x"], "openai/test-embed", api_base=srv.url)
    assert len(srv.requests) == 1


def test_litellm_embedder(srv: LLMServer) -> None:
    from memp_cli.backends.embedders import Embedder, get_embedder

    emb = get_embedder("litellm/openai/test-embed", api_base=srv.url)
    assert emb.name == "litellm/openai/test-embed"
    assert srv.requests == []  # construction is offline
    assert emb.dim == srv.dim  # probed once
    assert len(srv.requests) == 1
    assert isinstance(emb, Embedder)  # (on Python 3.11 this reads .dim, so it would probe too)
    assert emb.embed(["a", "b"]).shape == (2, srv.dim)
    assert emb.embed([]).shape == (0, srv.dim)
    assert len(srv.requests) == 2

    fixed = get_embedder("litellm/openai/test-embed", api_base=srv.url, dim=32)
    assert fixed.dim == 32
    with pytest.raises(ModelError, match="expected 32"):
        fixed.embed(["a"])


# --------------------------------------------------------------------------- exit codes through the CLI
# The rule (memp_cli/errors.py): anything about the embedder exits 7 (MODEL), whether it is a
# setting, a refusal, an unreachable API or a reply that is not vectors; the chat LLM exits 8.

EMBEDDER = "litellm/openai/test-embed"


@pytest.fixture
def remote_store(srv: LLMServer, store_dir: Path) -> Path:
    """A store embedding through the local server, holding one ingested trajectory."""
    memp("init", "--embedder", EMBEDDER, "--dim", srv.dim)
    config = store_dir / "memp.toml"
    text = config.read_text()
    assert text.count('api_base = ""') == 2  # [embedder] comes first, then [llm]
    config.write_text(text.replace('api_base = ""', f'api_base = "{srv.url}"', 1))
    first = (ROOT / "tests" / "data" / "distill_alfworld.jsonl").read_text().splitlines()[0]
    memp("ingest", "-", input=first + "\n")
    return store_dir


BAD_REPLIES = {
    "no vectors": {"object": "list", "data": [], "model": "test-embed"},
    "strings": {"object": "list", "data": [{"index": 0, "embedding": ["a", "b"]}], "model": "test-embed"},
}


@pytest.mark.parametrize("reply", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_malformed_embedding_reply_exits_7(srv: LLMServer, remote_store: Path, reply: Any) -> None:
    srv.script([("json", reply)])
    run = memp("distill", expect=ExitCode.MODEL)
    assert "memp: " in run.stderr and "test-embed" in run.stderr and "returned" in run.stderr
    assert "memory.toml" not in run.stdout
    # the memories were written; the next command embeds them once the endpoint answers
    assert memp("query", "heat a mug", "--json", "--min-score", -1).jsonl()


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (("status", 401, {}, f"Incorrect API key provided: {KEY}"), "OPENAI_API_KEY"),
        (("status", 404), "embedder name"),
        (("status", 500), "unreachable"),
    ],
    ids=["auth", "unknown model", "unreachable"],
)
def test_embedding_provider_errors_exit_7(
    srv: LLMServer, remote_store: Path, item: tuple[Any, ...], says: str
) -> None:
    srv.script([item] * 5)  # the default 4 retries + 1
    run = memp("distill", expect=ExitCode.MODEL)
    assert says in run.stderr and KEY not in run.stderr
    assert "--model" not in run.stderr  # the embedder is not set by --model


def test_embedding_settings_error_exits_7(store_dir: Path) -> None:
    # init refuses the name (one settings check); a store edited by hand to it is caught at load
    run = memp("init", "--embedder", "litellm/", expect=ExitCode.BAD_INPUT)
    assert "litellm/<model>" in run.stderr and not store_dir.exists()
    from memp_cli.backends.embedders import get_embedder
    from memp_cli.errors import ModelError

    with pytest.raises(ModelError, match="empty model name") as e:
        get_embedder("litellm/")
    assert e.value.exit_code == ExitCode.MODEL


def test_chat_llm_failure_still_exits_8(srv: LLMServer, remote_store: Path) -> None:
    srv.script([("status", 401)] * 2)
    run = memp("distill", "--model", "openai/test-model", "--api-base", srv.url, expect=ExitCode.LLM)
    assert "--model" in run.stderr


# --------------------------------------------------------------------------- text a reply may not hold


@pytest.mark.parametrize(
    ("reply", "where"),
    [
        ('{"name": "a\\ud800b"}', '"name"'),  # the JSON escape: valid JSON, not text
        ('{"name": "a\ud800b"}', '"name"'),  # the character itself (sent escaped over HTTP)
        ('{"name": "ok", "more": [{"x": "\\udc00"}]}', '"more" item 1."x"'),
        ('{"name": "ok", "\\udfff": 1}', "a key of the reply"),
        ('\ud800 {"name": "ok"}', "the reply"),  # outside the object: the text cannot be cached
    ],
)
def test_a_lone_surrogate_is_repaired_and_never_cached(
    srv: LLMServer, tmp_path: Path, reply: str, where: str
) -> None:
    cache = llm.ResponseCache(tmp_path)
    srv.script([reply, reply])
    with pytest.raises(llm.LLMReplyError) as info:
        llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    assert info.value.reason.startswith(where) and "lone surrogate" in info.value.reason
    assert "lone surrogate" in srv.requests[1]["messages"][-1]["content"]
    assert list(tmp_path.rglob("*.json")) == []
    str(info.value).encode("utf-8")  # the message can be printed


def test_a_cached_reply_with_a_lone_surrogate_is_asked_again(srv: LLMServer, tmp_path: Path) -> None:
    """A cache written before the fix may hold such a reply: it is a miss, then overwritten."""
    cache = llm.ResponseCache(tmp_path)
    key = cache.key(MSGS, settings(srv))
    cache.put(key, '{"name": "\\ud800"}', llm.Usage())
    srv.script(['{"name": "good"}'])
    value, usage = llm.complete_json(MSGS, settings(srv), validate=validate_name, cache=cache)
    assert value == "good" and usage.calls == 1 and len(srv.requests) == 1
    hit = cache.get(key)
    assert hit is not None and hit[0] == '{"name": "good"}'


def test_control_characters_are_dropped_from_every_string(srv: LLMServer) -> None:
    srv.script(['{"name": "de\\u0000p\\u001b[2Jl\\u007fo\\u0085y\\tnow\\n"}'])
    value, _ = llm.complete_json(MSGS, settings(srv), validate=validate_name)
    assert value == "de" + "p[2Jloy\tnow\n"


def test_a_huge_reason_is_cut(srv: LLMServer) -> None:
    srv.script(['{"name": 1, "' + "k" * 5000 + '\\ud800": 2}'] * 2)
    with pytest.raises(llm.LLMReplyError) as info:
        llm.complete_json(MSGS, settings(srv), validate=validate_name)
    assert len(info.value.reason) <= llm.reply.MAX_REASON_CHARS
    assert len(srv.requests[1]["messages"][-1]["content"]) < 500


def test_the_reply_shown_in_the_error_is_printable_and_redacted(srv: LLMServer) -> None:
    reply = f"my key is {KEY} \x1b[2J and \ud800"
    srv.script([reply, reply])
    with pytest.raises(llm.LLMReplyError) as info:
        llm.complete_json(MSGS, settings(srv), validate=validate_name)
    shown = str(info.value)
    assert KEY not in shown and "\x1b" not in shown and "\ufffd" in shown
    shown.encode("utf-8")


def test_the_local_server_says_nothing_of_a_client_killed_mid_call(capfd: pytest.CaptureFixture[str]) -> None:
    """The kill -9 trials kill memp while it talks to this server: the reset connection is no
    server error. socketserver printed its traceback to stderr, which an in-process `memp` call
    running at that moment took as its own (and failed the trial's no-traceback check)."""
    import socket
    import struct
    import time

    with serve() as server:
        host, _, port = server.url.split("//")[1].split("/")[0].partition(":")
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # linger 0: a reset, as from a killed process
        time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err
