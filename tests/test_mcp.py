"""`memp mcp`: a real MCP client session (the SDK's stdio client and ClientSession) against the
server started as a subprocess, on a store built in the test; answers compared with the CLI's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from conftest import REPO, memory_ids, memp_subprocess, subprocess_env
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

TASK = "heat some egg and put it in garbagecan."
NEW_RUN = {
    "task_id": "mcp-run-1",
    "task": "polish the brass telescope and put it in the wardrobe.",
    "steps": [
        {"action": "go to shelf 2", "observation": "On the shelf 2, you see a brass telescope 1."},
        {
            "action": "take brass telescope 1 from shelf 2",
            "observation": "You pick up the brass telescope 1.",
        },
        {"action": "go to sinkbasin 1", "observation": "On the sinkbasin 1, you see nothing."},
        {"action": "clean brass telescope 1 with sinkbasin 1", "observation": "You clean the telescope."},
        {"action": "go to wardrobe 1", "observation": "The wardrobe 1 is open."},
        {"action": "move brass telescope 1 to wardrobe 1", "observation": "You move the telescope."},
    ],
    "success": True,
}


class Client:
    """A session with `memp ... mcp`: calls return the structured result, or the error text."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def raw(self, tool: str, args: dict[str, Any]) -> Any:
        return await self.session.call_tool(tool, args)

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        res = await self.raw(tool, args or {})
        assert not res.is_error, res.content[0].text
        assert isinstance(res.structured_content, dict)
        return res.structured_content

    async def error(self, tool: str, args: dict[str, Any]) -> str:
        res = await self.raw(tool, args)
        assert res.is_error, res.structured_content
        text: str = res.content[0].text
        return text


@asynccontextmanager
async def serving(errlog: Path, *args: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "memp_cli", *(args or ["mcp"])],
        env=subprocess_env(),
        cwd=os.getcwd(),
    )
    with open(errlog, "w", encoding="utf-8") as err:
        async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield Client(session)
    assert "Traceback" not in errlog.read_text(encoding="utf-8")


def run_session(tmp_path: Path, body: Callable[[Client], Awaitable[None]], *args: str) -> None:
    async def main() -> None:
        with anyio.fail_after(120):
            async with serving(tmp_path / "server.err", *args) as client:
                await body(client)

    anyio.run(main)


def test_lists_the_tools_with_descriptions_and_typed_parameters(built: Path, tmp_path: Path) -> None:
    async def body(c: Client) -> None:
        tools = {t.name: t for t in (await c.session.list_tools()).tools}
        assert set(tools) == {"query", "show", "list", "feedback", "record"}
        for t in tools.values():
            assert t.description and len(t.description) > 80, t.name
            for name, prop in t.input_schema["properties"].items():
                assert prop.get("description"), f"{t.name}.{name} has no description"
        q = tools["query"].input_schema
        assert q["required"] == ["task"] and q["properties"]["task"]["type"] == "string"
        assert q["properties"]["k"]["anyOf"][0] == {"maximum": 50, "minimum": 1, "type": "integer"}
        assert tools["feedback"].input_schema["required"] == ["memory_ids", "success"]
        rec = tools["record"].input_schema["properties"]["trajectory"]
        assert rec["required"] == ["task", "steps"] and "memories_used" in rec["properties"]
        assert all(tools[n].annotations.read_only_hint for n in ("query", "show", "list"))
        assert not tools["feedback"].annotations.read_only_hint

    run_session(tmp_path, body)


def test_query_show_and_list_answer_as_the_cli_does(built: Path, tmp_path: Path) -> None:
    cli_hits = memp_subprocess("query", TASK, "-k", "3", "--json", "--explain").jsonl()
    cli_prompt = memp_subprocess("query", TASK, "-k", "3", "--format", "prompt").stdout
    cli_list = memp_subprocess("list", "--json").jsonl()
    first = cli_hits[0]["id"]
    cli_show = memp_subprocess("show", first).stdout
    cli_show_json = memp_subprocess("show", first, "--json").jsonl()[0]

    async def body(c: Client) -> None:
        res = await c.raw("query", {"task": TASK, "k": 3})
        out = res.structured_content
        assert out["results"] == cli_hits  # ids, scores and the --explain breakdown
        assert {"lexical", "cosine", "utility"} <= set(out["results"][0]["explain"])
        assert out["prompt"] == cli_prompt and cli_prompt.count("## Memory") == 3
        assert res.content[0].text == cli_prompt  # what the agent reads first
        assert json.loads(res.content[1].text)["results"] == cli_hits
        bare = await c.call("query", {"task": TASK, "k": 3, "include_prompt": False})
        assert "prompt" not in bare and bare["results"] == cli_hits
        # this store holds trajectory memories only
        assert (await c.call("query", {"task": TASK, "kind": "script", "min_score": -1}))["results"] == []
        runs = await c.call("query", {"task": TASK, "k": 5, "kind": "trajectory"})
        assert len(runs["results"]) == 5
        small = await c.call("query", {"task": TASK, "max_tokens": 50})
        assert small["prompt"] == "" and "too small" in small["notes"][-1]

        assert await c.call("show", {"memory_id": first}) == {
            "id": first,
            "toml": cli_show,
            "memory": cli_show_json,
        }
        assert set(await c.call("show", {"memory_id": first, "format": "toml"})) == {"id", "toml"}

        listed = await c.call("list")
        assert listed == {"memories": cli_list[:50], "more": len(cli_list) > 50, "broken": []}
        five = await c.call("list", {"limit": 5})
        assert five["memories"] == cli_list[:5] and five["more"]
        every = await c.call("list", {"limit": 0, "kind": "trajectory"})
        assert every["memories"] == [m for m in cli_list if m["kind"] == "trajectory"]
        assert not every["more"]

    run_session(tmp_path, body)


def test_record_distill_query_feedback_and_memp_show_sees_it(store: Path, tmp_path: Path) -> None:
    """The agent's loop: record a finished run, `memp distill` builds its memory, the query finds
    it, the feedback on it shows in `memp show` (another process)."""
    state: dict[str, Any] = {}

    async def record(c: Client) -> None:
        empty = await c.call("query", {"task": NEW_RUN["task"]})
        assert empty["results"] == [] and "no memories yet" in empty["notes"][0]
        first = await c.call("record", {"trajectory": NEW_RUN})
        assert first["added"] == 1 and first["duplicates"] == 0 and first["trajectory_id"]
        again = await c.call("record", {"trajectory": NEW_RUN})
        assert again["added"] == 0 and again["duplicates"] == 1
        assert again["trajectory_id"] == first["trajectory_id"]
        # memp's own validation, with memp's message: nothing stored, the server goes on
        no_steps = await c.error("record", {"trajectory": {"task": "x", "steps": []}})
        assert "no steps" in no_steps
        bad_success = await c.error("record", {"trajectory": {**NEW_RUN, "success": "maybe"}})
        assert '"success" must be true, false or null' in bad_success
        # a run without the memory's id fields the same way `memp ingest -` reads it
        via_cli = memp_subprocess("ingest", "-", "--json", input=json.dumps(NEW_RUN) + "\n").jsonl()[0]
        assert via_cli["added"] == 0 and via_cli["duplicates"] == 1
        state["tid"] = first["trajectory_id"]

    run_session(tmp_path, record)
    memp_subprocess("distill")

    async def use(c: Client) -> None:
        hits = (await c.call("query", {"task": "polish the brass telescope, put it in the wardrobe"}))[
            "results"
        ]
        assert hits[0]["task"] == NEW_RUN["task"]
        mid = hits[0]["id"]
        done = await c.call("feedback", {"memory_ids": [mid, "mnope"], "success": True, "trajectory": "r1"})
        assert done == {"recorded": 1, "already": 0, "unknown": ["mnope"]}
        twice = await c.call("feedback", {"memory_ids": [mid], "success": True, "trajectory": "r1"})
        assert twice == {"recorded": 0, "already": 1, "unknown": []}
        await c.call("feedback", {"memory_ids": [mid], "success": False})
        unknown = await c.error("feedback", {"memory_ids": ["mnope"], "success": True})
        assert "no memory 'mnope'" in unknown and "nothing was counted" in unknown
        shown = await c.call("show", {"memory_id": mid, "format": "json"})
        assert shown["memory"]["stats"]["successes"] == 1
        state["mid"] = mid

    run_session(tmp_path, use)
    stats = memp_subprocess("show", state["mid"], "--json").jsonl()[0]["stats"]
    assert (stats["retrieved"], stats["successes"], stats["failures"]) == (2, 1, 1)
    journal = (store / "journal.jsonl").read_text(encoding="utf-8")
    assert '"command":"mcp feedback"' in journal and '"command":"mcp record"' in journal


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from memp_cli.store.fsutil import StoreLock
lock = StoreLock(Path(sys.argv[1]) / ".lock")
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


def test_reads_go_on_while_a_writer_holds_the_lock_and_writes_give_up_in_time(
    built: Path, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(built)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=subprocess_env(),
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        mid = memory_ids(built)[0]
        path = built / "memories" / f"{mid}.toml"

        async def body(c: Client) -> None:
            assert len((await c.call("query", {"task": TASK}))["results"]) == 3
            assert (await c.call("show", {"memory_id": mid}))["id"] == mid
            assert len((await c.call("list", {"limit": 3}))["memories"]) == 3
            # a memory file changed: the index is stale, and the writer holds the lock
            os.utime(path, ns=(time.time_ns(), time.time_ns()))
            stale = await c.call("query", {"task": TASK})
            assert len(stale["results"]) == 3
            assert any("answering from the index as last written" in n for n in stale["notes"])
            t0 = time.monotonic()
            locked = await c.error("feedback", {"memory_ids": [mid], "success": True})
            assert 0.4 <= time.monotonic() - t0 < 10
            assert "locked by another memp process" in locked and "gave up after waiting 0.5 s" in locked
            assert "locked" in await c.error("record", {"trajectory": NEW_RUN})
            holder.stdin.write("\n")  # the writer finishes
            holder.stdin.flush()
            await anyio.to_thread.run_sync(holder.wait)
            assert (await c.call("feedback", {"memory_ids": [mid], "success": True}))["recorded"] == 1
            assert (await c.call("record", {"trajectory": NEW_RUN}))["added"] == 1

        async def no_wait(c: Client) -> None:
            t0 = time.monotonic()
            assert "gave up after waiting 0 s" in await c.error(
                "feedback", {"memory_ids": [mid], "success": True}
            )
            assert time.monotonic() - t0 < 5

        run_session(tmp_path, no_wait, "--no-wait", "mcp")
        run_session(tmp_path, body, "mcp", "--lock-timeout", "0.5")
    finally:
        holder.kill()
        holder.wait()


def test_bad_arguments_are_tool_errors_and_the_server_goes_on(built: Path, tmp_path: Path) -> None:
    async def body(c: Client) -> None:
        for tool, args, says in [
            ("query", {"task": TASK, "k": 0}, "greater than or equal to 1"),
            ("query", {"k": 3}, "task"),
            ("query", {"task": "   "}, "the task is empty"),
            ("query", {"task": TASK, "kind": "poem"}, "kind"),
            ("show", {"memory_id": "../../etc/passwd"}, "is not a valid memory id"),
            ("show", {"memory_id": "mnope"}, "no memory 'mnope'"),
            ("list", {"limit": -1}, "greater than or equal to 0"),
            ("feedback", {"memory_ids": [], "success": True}, "memory_ids"),
            ("feedback", {"memory_ids": ["x"]}, "success"),
            ("record", {"trajectory": "not an object"}, "trajectory"),
            ("record", {"trajectory": {"steps": ["look"]}}, '"task" is missing or empty'),
            ("nosuchtool", {}, "nosuchtool"),
        ]:
            assert says in await c.error(tool, args), (tool, args)
        assert len((await c.call("query", {"task": TASK}))["results"]) == 3
        # a memory file broken by hand: named with its line, as the CLI names it
        broken = built / "memories" / "mbroken.toml"
        broken.write_text('schema_version = 1\nid = "mbroken"\nkind = [\n', encoding="utf-8")
        assert "mbroken.toml:" in await c.error("show", {"memory_id": "mbroken"})
        listed = await c.call("list", {"limit": 0})
        assert len(listed["memories"]) == len(memory_ids(built)) - 1
        assert len(listed["broken"]) == 1 and "mbroken.toml" in listed["broken"][0]

    run_session(tmp_path, body)


def test_without_the_sdk_it_says_how_to_install_it(built: Path) -> None:
    code = "import sys; sys.modules['mcp'] = None; from memp_cli.cli import main; sys.argv = ['memp', 'mcp']; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 4, proc.stderr
    assert "needs the MCP Python SDK" in proc.stderr and "pip install 'memp[mcp]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_store_fails_before_serving(isolated: Path) -> None:
    r = memp_subprocess("--store", isolated / "nope", "mcp", expect=4, input="")
    assert "no memp store" in r.stderr
