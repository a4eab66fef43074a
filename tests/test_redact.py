"""Secrets: redaction patterns, redaction at ingest and before every LLM call, `memp scrub`,
and messages that name a bad value's place instead of echoing it."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA, FILES, memp
from llm_server import LLMServer, serve

from memp_cli.backends import llm
from memp_cli.errors import ExitCode
from memp_cli.redact import Redactor, mask_url, redact, redactor, shown

# Fake secrets of the shapes real ones have (none of them is valid anywhere).
OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
AWS_ID = "AKIAQ3EGRTYZ7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKE"
GITHUB = "ghp_R2d2C3poBb8Yoda4Luke5Leia6Han7Solo9x"
BEARER = "eyZ0b2tlbi1mb3ItdGhlLWFwaS0xMjM0NTY3ODk"
SECRETS = (OPENAI, AWS_ID, AWS_SECRET, GITHUB, BEARER)

# (text, the value that must go, the kind its marker names)
CASES = [
    (f"export OPENAI_API_KEY={OPENAI}", OPENAI, "openai-key"),
    (
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA-x_yz",
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA-x_yz",
        "anthropic-key",
    ),
    ("key: sk-4fG7hJ2kL9mN3pQ8rS1tV6wX0yZ5aB", "sk-4fG7hJ2kL9mN3pQ8rS1tV6wX0yZ5aB", "openai-key"),
    (
        "url ...?key=AIzaSyD4c7F0a1B2c3D4e5F6g7H8i9J0kLmNoPq",
        "AIzaSyD4c7F0a1B2c3D4e5F6g7H8i9J0kLmNoPq",
        "google-api-key",
    ),
    ("GROQ=gsk_4Fh8Jk2Lm9Np3Qr7St1Vw5Xy0Za6Bc8De2Fg", "gsk_4Fh8Jk2Lm9Np3Qr7St1Vw5Xy0Za6Bc8De2Fg", "groq-key"),
    (
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 is the token",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "huggingface-token",
    ),
    (f"[default]\naws_access_key_id = {AWS_ID}", AWS_ID, "aws-access-key-id"),
    ("ASIAY34FZKBOKMUTVV7A in a session", "ASIAY34FZKBOKMUTVV7A", "aws-access-key-id"),
    (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET, "aws-secret-key"),
    (f'{{"SecretAccessKey": "{AWS_SECRET}"}}', AWS_SECRET, "aws-secret-key"),
    (f"git clone https://{GITHUB}@github.com/o/r", GITHUB, "github-token"),
    ("gho_16C7e42F292c6912E7710c838347Ae178B4a", "gho_16C7e42F292c6912E7710c838347Ae178B4a", "github-token"),
    (
        "GITHUB_TOKEN=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP",
        "github-token",
    ),
    ("slack xoxb-2048-4096-R2d2C3poBb8Yoda", "xoxb-2048-4096-R2d2C3poBb8Yoda", "slack-token"),
    (f'curl -H "Authorization: Bearer {BEARER}" https://api.example.com', BEARER, "authorization"),
    ("authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy", "authorization"),
    (f"sent with bearer {BEARER}", BEARER, "bearer-token"),
    ("postgres://admin:Hunter2Pass@db.internal:5432/app", "Hunter2Pass", "url-password"),
    ("GET https://api.example.com/v1/items?page=2&access_token=9f8e7d6c5b4a", "9f8e7d6c5b4a", "url-token"),
    ("https://maps.example.com/api?key=Zq81mLp0Xy", "Zq81mLp0Xy", "url-token"),
    (
        "cat id_rsa\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "AAAAAAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIB\n-----END OPENSSH PRIVATE KEY-----\ndone",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
        "private-key",
    ),
    (
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "jwt",
    ),
    ("DB_PASSWORD=correcthorse\nHOME=/root", "correcthorse", "password"),
    ('{"user": "ann", "password": "tr0ub4dor&3"}', "tr0ub4dor&3", "password"),
    ("client_secret: 'abc-def-ghi'", "abc-def-ghi", "secret"),
    ("mysql --password=S3cr3tPw -u root", "S3cr3tPw", "password"),
    ("api_key = 'k-12345'", "k-12345", "api-key"),
    ("password: hunter2", "hunter2", "password"),
]

# Ordinary text that must come out unchanged: prose, code, hashes, placeholders.
CLEAN = [
    "You are in the middle of a room. Looking quickly around you, you see a keychain 1 and a safe 2.",
    "take key 1 from drawer 3; the password prompt appeared; Token: expired",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "def login(self):\n    self.token = token\n    secret = get_secret()\n    SECRET_KEY = settings.SECRET_KEY",
    "sorted(items, key=len); max_tokens=1500; num_tokens = 3; tokenizer=bpe",
    'password = os.environ["DB_PASSWORD"]; api_key = None; "token": null; PASSWORD=${DB_PASSWORD}',
    "pip install scikit-learn; see https://example.com/docs?page=2&lang=en for task-sk-learn",
    "http://localhost:8080/v1 and user@example.com",
    "Authorization header missing",
    "[REDACTED:openai-key] and password=[REDACTED:password] and Authorization: Bearer [REDACTED:authorization]",
]


@pytest.mark.parametrize(("text", "secret", "kind"), CASES, ids=[c[2] + str(i) for i, c in enumerate(CASES)])
def test_each_pattern_family_is_replaced_by_its_marker(text: str, secret: str, kind: str) -> None:
    counts: Counter[str] = Counter()
    out = redactor().text(text, counts)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert counts[kind] >= 1
    assert redactor().text(out) == out  # a marker is never matched again


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redactor().find(text) == []
    assert redact(text) == text


def test_the_context_around_a_secret_is_kept() -> None:
    out = redact(f'curl -H "Authorization: Bearer {BEARER}" https://api.example.com/v1')
    assert out == 'curl -H "Authorization: Bearer [REDACTED:authorization]" https://api.example.com/v1'
    assert (
        redact(f"OPENAI_API_KEY={OPENAI} python run.py")
        == "OPENAI_API_KEY=[REDACTED:openai-key] python run.py"
    )


def test_real_trajectories_have_no_false_positives_and_redaction_is_fast() -> None:
    texts = [p.read_text(encoding="utf-8") for p in sorted(DATA.glob("*.jsonl"))]
    size = sum(len(t) for t in texts)
    r = Redactor()
    t0 = time.perf_counter()
    hits = [h for t in texts for h in r.find(t)]
    seconds = time.perf_counter() - t0
    assert hits == [], [(h.kind, h.start) for h in hits[:5]]
    # Measured 2-5 MB/s here on real logs (by load); the floor only catches a pattern gone quadratic.
    assert size / seconds > 300_000, f"{size / seconds / 1e6:.2f} MB/s"


def test_custom_patterns_hide_the_secret_group_or_the_whole_match() -> None:
    r = Redactor([r"ticket=(?P<secret>\w+)", r"INTERNAL-\d{6}"])
    assert (
        r.text("ticket=abc123 and INTERNAL-123456 ok") == "ticket=[REDACTED:custom] and [REDACTED:custom] ok"
    )
    assert r.text(f"ticket=zz {OPENAI}") == "ticket=[REDACTED:custom] [REDACTED:openai-key]"


def test_mask_url_and_shown_never_carry_a_secret() -> None:
    assert mask_url("http://user:pw-Secret9@10.0.0.1:8000/v1") == "http://user:***@10.0.0.1:8000/v1"
    assert mask_url("http://localhost:11434") == "http://localhost:11434"
    assert shown("tool") == "'tool'" and shown(2) == "2" and shown(None) == "None"
    assert shown(OPENAI) == f"a string of {len(OPENAI)} characters"
    assert shown("a long sentence that could be anything at all") == "a string of 45 characters"
    assert shown([1, 2]) == "a list of 2 items"


# ---------------------------------------------------------------------------- settings


def test_store_patterns_come_from_memp_toml_and_are_checked(store: Path, tmp_path: Path) -> None:
    cfg = store / "memp.toml"
    text = cfg.read_text()
    assert "[redact]" in text and "enabled = true" in text
    cfg.write_text(text.replace("patterns = []", "patterns = ['ticket=(?P<secret>\\w+)']"))
    run = tmp_path / "run.jsonl"
    run.write_text(
        json.dumps({"task": "open ticket=abc123", "steps": [{"action": "go", "observation": "ok"}]}) + "\n"
    )
    memp("ingest", run)
    (seg,) = (store / "trajectories").glob("*.jsonl")
    assert "abc123" not in seg.read_text() and "ticket=[REDACTED:custom]" in seg.read_text()

    lines = cfg.read_text().splitlines()
    bad = [line if not line.startswith("patterns") else "patterns = ['(unclosed']" for line in lines]
    cfg.write_text("\n".join(bad) + "\n")
    r = memp("list", expect=int(ExitCode.STORE))
    lineno = next(i for i, line in enumerate(bad, 1) if line.startswith("patterns"))
    assert f"memp.toml:{lineno}: [redact] patterns pattern 1 is not a valid regular expression" in r.stderr
    cfg.write_text(
        "\n".join(line if not line.startswith("patterns") else "patterns = ['x*']" for line in lines) + "\n"
    )
    assert "matches the empty string" in memp("list", expect=int(ExitCode.STORE)).stderr


def test_a_store_without_a_redact_table_keeps_loading_with_redaction_on(store: Path, tmp_path: Path) -> None:
    cfg = store / "memp.toml"
    cfg.write_text(cfg.read_text().split("[redact]")[0])
    run = tmp_path / "run.jsonl"
    run.write_text(
        json.dumps({"task": f"use {GITHUB}", "steps": [{"action": "a", "observation": "b"}]}) + "\n"
    )
    memp("ingest", run)
    (seg,) = (store / "trajectories").glob("*.jsonl")
    assert GITHUB not in seg.read_text()
    cfg.write_text(cfg.read_text() + "\n[redact]\nenabled = false\n")
    run.write_text(
        json.dumps({"task": f"again {GITHUB}", "steps": [{"action": "a", "observation": "b"}]}) + "\n"
    )
    memp("ingest", run)
    assert any(GITHUB in p.read_text() for p in (store / "trajectories").glob("*.jsonl"))


# ---------------------------------------------------------------------------- end to end

MODEL = "openai/test-model"


def _script_reply(body: dict) -> str:
    """A valid script that repeats the task it was sent (a model echoing its prompt)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    task = user.split("Task: ", 1)[1].split("\n", 1)[0] if "Task: " in user else "the task"
    return json.dumps(
        {
            "title": f"do: {task}",
            "steps": ["1. look at the {object}", "2. finish: " + task],
            "variables": {"object": "what the task names"},
            "preconditions": [],
            "pitfalls": ["do not loop"],
            "keywords": ["deploy", "credentials"],
        }
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve(default=_script_reply) as s:
        yield s


def _leaky_runs(path: Path) -> Path:
    """Two real ALFWorld runs and two runs whose task, actions and observations hold secrets."""
    real = [json.loads(line) for line in FILES["native"].read_text().splitlines()[:2]]
    leaky = [
        {
            "task": f"deploy the service with key {OPENAI}",
            "task_type": "deploy",
            "steps": [
                {"action": f"export AWS_ACCESS_KEY_ID={AWS_ID}", "observation": "ok"},
                {"action": f"aws configure set aws_secret_access_key {AWS_SECRET}", "observation": "done"},
                {"action": "cat ~/.aws/credentials", "observation": f"aws_secret_access_key = {AWS_SECRET}"},
            ],
            "success": True,
        },
        {
            "task": "push the release branch",
            "task_type": "deploy",
            "steps": [
                {"action": f"git push https://{GITHUB}@github.com/o/r", "observation": "pushed"},
                {
                    "action": f"curl -H 'Authorization: Bearer {BEARER}' https://api.example.com/release",
                    "observation": '{"ok": true}',
                    "thought": f"the token {GITHUB} worked",
                },
            ],
            "success": True,
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in real + leaky))
    return path


def _leaks_in_files(root: Path) -> list[tuple[str, str]]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out.extend((str(p.relative_to(root)), s[:8]) for s in SECRETS if s.encode() in data)
    return out


def _prompt_output() -> str:
    return memp(
        "query",
        "deploy the service and push the release",
        "--format",
        "prompt",
        "--min-score",
        "-1",
        "--no-collapse",
        "-k",
        "10",
    ).stdout


def test_no_secret_reaches_memories_index_llm_cache_or_prompt(
    store: Path, tmp_path: Path, server: LLMServer
) -> None:
    r = memp("ingest", _leaky_runs(tmp_path / "runs.jsonl"))
    assert "secrets redacted (" in r.stderr
    for s in SECRETS:
        assert s[:8] not in r.stderr
    r = memp("distill", "--model", MODEL, "--api-base", server.url, "--policy", "proceduralization", "--json")
    rep = r.jsonl()[-1]
    assert rep["written"] == rep["read"] >= 3 and rep["failed"] == 0
    assert server.requests, "the model was asked"
    sent = json.dumps(server.requests)
    assert [s for s in SECRETS if s in sent] == []
    assert "[REDACTED:openai-key]" in sent
    assert list((store / "cache" / "llm").rglob("*.json")), "replies were cached"
    assert list((store / "index").glob("records-*.text.bin")), "the index was built (its BM25 texts)"
    assert _leaks_in_files(store) == []
    out = _prompt_output()
    assert "[REDACTED:" in out
    assert [s for s in SECRETS if s in out] == []


def test_no_redact_keeps_them_and_scrub_removes_them_everywhere(
    store: Path, tmp_path: Path, server: LLMServer
) -> None:
    memp("ingest", "--no-redact", _leaky_runs(tmp_path / "runs.jsonl"))
    memp(
        "distill", "--no-redact", "--model", MODEL, "--api-base", server.url, "--policy", "proceduralization"
    )
    assert OPENAI in json.dumps(server.requests)
    leaks = {path.split("/")[0] for path, _ in _leaks_in_files(store)}
    assert {"trajectories", "memories", "history", "cache"} <= leaks
    assert OPENAI in _prompt_output()
    mid = next(p.stem for p in (store / "memories").glob("*.toml") if GITHUB in p.read_text())
    memp("forget", mid)  # a forgotten memory keeps its secret in the trash
    assert any(GITHUB in p.read_text() for p in (store / "trash").iterdir())

    with (store / "journal.jsonl").open("a") as f:  # as an older memp might have journaled it
        f.write(json.dumps({"event": "distill", "note": f"key {OPENAI}"}) + "\n")
    dry = memp("scrub", "--dry-run", "--json", expect=int(ExitCode.STORE))
    found = dry.jsonl()
    assert {f["path"].split("/")[0] for f in found} >= {
        "trajectories",
        "memories",
        "history",
        "trash",
        "cache",
        "journal.jsonl",
    }
    assert all(set(f) == {"path", "line", "kind"} and f["line"] >= 0 for f in found)
    assert [s for s in SECRETS if s in dry.stdout + dry.stderr] == []
    assert {p for p, _ in _leaks_in_files(store)}, "a dry run changes nothing"

    r = memp("scrub")
    assert "scrubbed" in r.stderr and "index rebuilt" in r.stderr
    assert _leaks_in_files(store) == []
    assert [s for s in SECRETS if s in _prompt_output()] == []
    kept = next(
        p.stem for p in (store / "memories").glob("*.toml") if "[REDACTED:openai-key]" in p.read_text()
    )
    history = memp("history", kept, "--json").jsonl()
    assert history[-1]["by"] == "memp scrub" and history[-1]["why"] == "scrub"
    assert len(history) >= 2  # the version distill wrote is still there, scrubbed (no file above holds it)
    assert memp("scrub").stderr.strip().endswith("no secrets found")
    memp("scrub", "--dry-run")  # exit 0: clean
    memp("doctor")
    memp("restore", mid)
    assert GITHUB not in (store / "memories" / f"{mid}.toml").read_text()


# ---------------------------------------------------------------------------- messages


def test_ingest_warnings_say_where_not_what(store: Path, tmp_path: Path) -> None:
    bad = [
        {"task": "a", "steps": [{"action": "x", "observation": "y"}], "success": OPENAI},
        {"task": "b", "steps": [{"action": "x", "observation": "y"}], "reward": GITHUB},
        {"messages": [{"role": AWS_SECRET, "content": "hi"}]},
        {"conversations": [{"from": BEARER, "value": "hi"}]},
    ]
    run = tmp_path / "bad.jsonl"
    run.write_text("".join(json.dumps(r) + "\n" for r in bad))
    r = memp("ingest", run, expect=int(ExitCode.BAD_INPUT))
    assert [s for s in SECRETS if s in r.stderr or s[:10] in r.stderr] == []
    assert (
        f'bad.jsonl:1: "success" must be true, false or null, got a string of {len(OPENAI)} characters'
        in r.stderr
    )
    assert "bad.jsonl:2:" in r.stderr and "bad.jsonl:3:" in r.stderr and "bad.jsonl:4:" in r.stderr


def test_a_password_in_the_api_base_is_masked_in_errors_and_the_journal(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    memp("ingest", FILES["native"])
    base = "http://alice:Pw-Very-Secret-77@127.0.0.1:9/v1"  # port 9 (discard): refused at once
    r = memp("distill", "--model", MODEL, "--api-base", base, "--policy", "script", expect=int(ExitCode.LLM))
    assert "Pw-Very-Secret-77" not in r.stdout + r.stderr
    assert "alice:***@127.0.0.1:9" in r.stderr
    assert "Pw-Very-Secret-77" not in (store / "journal.jsonl").read_text()


def test_every_llm_call_redacts_what_it_sends_keys_and_caches(tmp_path: Path, server: LLMServer) -> None:
    from memp_cli.backends.llm import LLMSettings, ResponseCache, complete

    cache = ResponseCache(tmp_path / "cache")
    server.script([f"done with {GITHUB}"])
    messages = [{"role": "user", "content": f"use {OPENAI} and Authorization: Bearer {BEARER}"}]
    settings = LLMSettings(MODEL, api_base=server.url)
    reply = complete(messages, settings, cache=cache)
    sent = json.dumps(server.requests)
    assert OPENAI not in sent and BEARER not in sent and "[REDACTED:openai-key]" in sent
    assert GITHUB not in reply.text and "[REDACTED:github-token]" in reply.text
    assert [p.read_text() for p in (tmp_path / "cache").rglob("*.json") if GITHUB in p.read_text()] == []
    assert messages[0]["content"].startswith(f"use {OPENAI}")  # the caller's messages are not changed
    again = complete(messages, LLMSettings(MODEL, api_base=server.url), cache=cache)
    assert again.cached and again.cache_key == reply.cache_key
    server.script(["raw"])
    complete(messages, LLMSettings(MODEL, api_base=server.url, redactor=None))
    assert OPENAI in json.dumps(server.requests[-1])


def test_distill_redacts_runs_stored_with_no_redact(store: Path, tmp_path: Path, server: LLMServer) -> None:
    memp("ingest", "--no-redact", _leaky_runs(tmp_path / "runs.jsonl"))
    r = memp("distill", "--model", MODEL, "--api-base", server.url, "--policy", "proceduralization")
    assert "secrets redacted" in r.stderr
    assert [s for s in SECRETS if s in json.dumps(server.requests)] == []
    leaks = {path.split("/")[0] for path, _ in _leaks_in_files(store)}
    assert leaks == {"trajectories"}  # what was stored as asked, until `memp scrub`
