"""Settings that redirect credentials (issue 12): an ``api_base`` named only by a store's
memp.toml gets no provider key unless the user confirms it, and every command that calls a
model says on stderr where the calls went.

Through litellm against ``llm_server.py`` on 127.0.0.1: the Authorization header the server
received is the proof of what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, memp
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.backends.llm.endpoints import UNCONFIRMED_KEY, endpoint_label

KEY = "sk-test-0123456789abcdef"
MODEL = "openai/test-model"
WEB = DATA / "distill_webshop.jsonl"  # 4 runs


def _script_reply(body: dict[str, Any]) -> str:
    return json.dumps({"title": "general: do it", "steps": ["1. do it"], "keywords": ["do"]})


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with serve(default=_script_reply) as s:
        yield s


@pytest.fixture
def srv(server: LLMServer) -> Iterator[LLMServer]:
    server.clear()
    yield server
    server.clear()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for var in ("MEMP_MODEL", "MEMP_API_BASE", "MEMP_EMBEDDER_API_BASE"):
        monkeypatch.delenv(var, raising=False)


def _set(store: Path, section: str, **values: str) -> None:
    """Edit ``[section]`` of memp.toml as someone handing over the store would."""
    cfg = store / "memp.toml"
    lines = cfg.read_text().splitlines()
    start = lines.index(f"[{section}]")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        key = lines[i].split("=")[0].strip()
        if key in values:
            lines[i] = f"{key} = {json.dumps(values.pop(key))}"
    assert not values, values
    cfg.write_text("\n".join(lines) + "\n")


def _auth(srv: LLMServer) -> set[str]:
    return {h.get("authorization", "") for h in srv.headers}


@pytest.fixture
def handed_over(store: Path, srv: LLMServer) -> Path:
    """A store whose memp.toml points the LLM at another host (here the test server)."""
    _set(store, "llm", api_base=srv.url)
    memp("ingest", WEB)
    return store


def test_store_api_base_gets_no_key_even_with_model_on_the_command_line(
    handed_over: Path, srv: LLMServer
) -> None:
    r = memp("distill", "--policy", "script", "--model", MODEL)
    assert srv.requests  # the calls still go (a keyless local server keeps working)
    assert _auth(srv) == {f"Bearer {UNCONFIRMED_KEY}"}
    assert KEY not in json.dumps(srv.headers)
    warning = (
        f"memp: warning: LLM calls ({MODEL}) went to {srv.url}, named only by [llm] api_base in memp.toml"
    )
    assert warning in r.stderr
    assert f"MEMP_API_BASE={srv.url}" in r.stderr and f"--api-base {srv.url}" in r.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_confirmed_endpoint_gets_the_key(
    handed_over: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["distill", "--policy", "script", "--model", MODEL]
    if how == "flag":
        args += ["--api-base", srv.url]
    else:
        monkeypatch.setenv("MEMP_API_BASE", srv.url)
    r = memp(*args)
    assert _auth(srv) == {f"Bearer {KEY}"}
    assert f"memp: LLM calls ({MODEL}) went to {srv.url}\n" in r.stderr
    assert "warning" not in r.stderr


def test_quiet_still_warns_of_an_unconfirmed_endpoint(handed_over: Path, srv: LLMServer) -> None:
    r = memp("distill", "-q", "--policy", "script", "--model", MODEL)
    assert r.stderr.startswith("memp: warning: LLM calls") and r.stderr.count("\n") == 1


def test_refused_unconfirmed_call_says_how_to_confirm(handed_over: Path, srv: LLMServer) -> None:
    srv.script([("status", 401)] * 4)
    r = memp("distill", "--policy", "script", "--model", MODEL, expect=8)
    assert "your API key was not sent" in r.stderr and "MEMP_API_BASE=URL" in r.stderr
    assert _auth(srv) == {f"Bearer {UNCONFIRMED_KEY}"}


def test_url_password_is_masked_in_the_summary(store: Path, srv: LLMServer) -> None:
    memp("ingest", WEB)
    url = srv.url.replace("http://", "http://me:s3cr3t-pw@")
    r = memp("distill", "--policy", "script", "--model", MODEL, "--api-base", url)
    assert "me:***@127.0.0.1" in r.stderr and "s3cr3t-pw" not in r.stderr
    assert endpoint_label("https://u:p@h.example:8443/v1?x=1") == "https://u:***@h.example:8443/v1?x=1"
    assert endpoint_label(None) == "the provider's own endpoint"


def test_reflect_and_avefact_follow_the_same_rule(built: Path, srv: LLMServer) -> None:
    _set(built, "llm", model=MODEL, api_base=srv.url)
    srv.script(['{"keywords": ["mug"]}'])
    r = memp("query", "--key", "avefact", "--model", MODEL, "put a mug away", expect=None)
    assert srv.headers and _auth(srv) == {f"Bearer {UNCONFIRMED_KEY}"}
    assert "named only by [llm] api_base" in r.stderr


# ------------------------------------------------------------------ embedder
@pytest.fixture
def remote_store(isolated: Path, srv: LLMServer) -> Path:
    memp("init", "--embedder", "litellm/openai/test-embed", "--dim", str(srv.dim))
    store = isolated / ".memp"
    _set(store, "embedder", api_base=srv.url)
    memp("ingest", WEB)
    memp("distill", "--policy", "trajectory", expect=None)
    srv.clear()
    return store


def test_store_embedder_api_base_gets_no_key(remote_store: Path, srv: LLMServer) -> None:
    r = memp("index", "rebuild")
    assert srv.paths and all(p.endswith("/embeddings") for p in srv.paths)
    assert _auth(srv) == {f"Bearer {UNCONFIRMED_KEY}"}
    assert "memp: warning: embedding calls (openai/test-embed) went to " + srv.url in r.stderr
    assert f"MEMP_EMBEDDER_API_BASE={srv.url}" in r.stderr


def test_embedder_endpoint_confirmed_by_env(
    remote_store: Path, srv: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMP_EMBEDDER_API_BASE", srv.url)
    r = memp("query", "--min-score", "-1", "buy a shirt")
    assert _auth(srv) == {f"Bearer {KEY}"}
    assert f"memp: embedding calls (openai/test-embed) went to {srv.url}" in r.stderr


def test_no_model_call_no_endpoint_line(built: Path) -> None:
    r = memp("query", "--min-score", "-1", "put a mug away")
    assert "went to" not in r.stderr
