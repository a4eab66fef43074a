"""memp eval replay: the update policies on a real ALFWorld stream (40 train runs, 10 failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FILES, memp, read_records


def _rows(*args: object) -> list[dict]:
    return memp("eval", "replay", FILES["native"], "--batch-size", "10", "--json", *args).jsonl()


def test_policies_do_what_they_say() -> None:
    records = read_records(FILES["native"])
    rows = _rows("-u", "vanilla", "-u", "validation", "-u", "adjustment")
    by = {u: [r for r in rows if r["update"] == u] for u in ("vanilla", "validation", "adjustment")}
    assert all(len(v) == 4 for v in by.values())
    successes = [sum(1 for r in records[: 10 * b] if r["success"]) for b in (1, 2, 3, 4)]
    # vanilla: every run a memory; validation and adjustment: successes only
    assert [r["memories"] for r in by["vanilla"]] == [10, 20, 30, 40]
    assert [r["memories"] for r in by["validation"]] == successes
    assert [r["memories"] for r in by["adjustment"]] == successes
    # adjustment reflects failures into the memories they used; the others never do
    assert sum(r["reflected"] for r in by["adjustment"]) > 0
    assert sum(r["reflected"] for r in by["vanilla"] + by["validation"]) == 0
    # the first batch meets an empty store: nothing to hit
    assert by["vanilla"][0]["queries"] == 0 and by["vanilla"][0]["hit_rate"] is None
    assert all(r["queries"] == 10 for r in by["vanilla"][1:])
    assert all(r["seen"] == 10 * r["batch"] for r in rows)


def test_prune_bounds_duplicates(tmp_path: Path) -> None:
    # the same 10 runs three times over, each time as new runs (another task id): duplicates
    import json

    records = read_records(FILES["native"])[:10]
    stream = tmp_path / "stream.jsonl"
    with stream.open("w") as f:
        for round_ in range(3):
            for r in records:
                f.write(json.dumps(dict(r, task_id=f"{r['task_id']}#{round_}")) + "\n")
    rows = memp("eval", "replay", stream, "-b", "10", "-u", "vanilla", "--prune", "both", "--json").jsonl()
    plain = [r for r in rows if not r["prune"]]
    pruned = [r for r in rows if r["prune"]]
    assert plain[-1]["duplicates"] > 0
    assert all(r["duplicates"] == 0 for r in pruned)
    assert pruned[-1]["memories"] < plain[-1]["memories"]


def test_heldout_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "replay.png"
    rows = _rows(
        "-u", "adjustment", "--heldout", FILES["native"].parent / "alfworld_valid_seen.jsonl", "--plot", png
    )
    assert all(r["heldout_queries"] == 20 for r in rows)
    assert rows[-1]["heldout_hit_rate"] >= 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_update_policy_is_a_usage_error() -> None:
    r = memp("eval", "replay", FILES["native"], "-u", "bogus", expect=2)
    assert "bogus" in r.stderr


def test_replay_through_a_model_counts_tokens_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """--model: distill and reflect through litellm (a local server), tokens counted per batch."""
    import json as _json

    from llm_server import serve

    from memp_cli.backends import llm

    script = {"title": "do {x}", "steps": ["find {x}", "finish"], "variables": {"x": "it"}, "keywords": ["a"]}

    def reply(body: dict) -> str:
        system = body["messages"][0]["content"]
        if "An agent used this script and its" in system:  # the reflect prompt
            return _json.dumps({"diagnosis": "it stopped early", "script": script})
        return _json.dumps(script)

    monkeypatch.setattr(llm.client, "BACKOFF_SCALE", 0.001)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    with serve(default=reply) as srv:
        rows = _rows("-u", "adjustment", "--model", "openai/test-model", "--api-base", srv.url)
        assert srv.requests  # the model was asked
    assert all(r["tokens_in"] > 0 for r in rows)  # every batch built memories through it
    assert sum(r["reflected"] for r in rows) > 0
