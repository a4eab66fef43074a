"""memp where agents live: Agent Skills export, MCP server, coding-agent hooks."""
