"""``memp mcp``: the store as an MCP server over stdio (memp_cli.integrations.mcp_server)."""

from __future__ import annotations

from typing import Annotated

import typer

from memp_cli.cli import G, app, open_store, output
from memp_cli.cli.output import env
from memp_cli.errors import NotFoundError

# Modules whose absence means "the mcp extra is not installed" (the SDK and what it brings).
_SDK_MODULES = {"mcp", "mcp_types", "pydantic", "pydantic_core", "anyio"}
INSTALL_HINT = "pip install 'memp[mcp]' (the MCP Python SDK, mcp>=2.3,<3)"


@app.command()
def mcp(
    lock_timeout: Annotated[
        float,
        typer.Option(
            envvar="MEMP_LOCK_TIMEOUT",
            min=0.0,
            help="Seconds the feedback and record tools wait while another memp process writes, "
            "before they return an error (--no-wait: 0).",
        ),
    ] = 10.0,
) -> None:
    """Serve the store to agents over MCP (stdio): query, show, list, feedback, record.

    An MCP client (Claude Code, Codex CLI, Gemini CLI, an agent framework) starts it and talks
    to it on stdin/stdout; it runs until the client disconnects. The tools: query (the memories
    for a task, with the --explain breakdown and the --format prompt block), show, list,
    feedback (the outcome of a run that used memories, as memp feedback) and record (a finished
    run as a native JSON record, as memp ingest -). Reads never wait for a writer; a failed call
    is a tool error with memp's message, and the server goes on. Needs the MCP Python SDK:
    pip install 'memp[mcp]' (exit 4 without it); exit 4 too when there is no store.

    Example: claude mcp add memp -- memp --store ~/agent/.memp mcp
    """
    root = open_store("mcp").root.absolute()  # no store, a broken memp.toml: say so before the slow import
    try:
        from memp_cli.integrations.mcp_server import serve
    except ImportError as e:
        if (e.name or "").split(".")[0] not in _SDK_MODULES:
            raise
        raise NotFoundError(
            f"memp mcp needs the MCP Python SDK, which is not installed ({e.name})", hint=INSTALL_HINT
        ) from None
    if env.stdin_isatty:
        output.info("memp mcp speaks MCP on stdin/stdout: an MCP client starts it (see memp mcp --help)")
    serve(root, embedder=G.embedder, lock_timeout=lock_timeout if G.wait else 0.0)
