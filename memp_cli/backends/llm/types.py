"""What a call asks for and what it returns: settings, usage totals, a completion."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from memp_cli.redact import Redactor, redactor

#: Where an ``api_base`` came from. Only one named by a store file (memp.toml) is unconfirmed:
#: a store may come from someone else, so the provider's key is not sent there (see client.py).
FROM_STORE = "store"


def choose_api_base(
    given: str | None, stored: str | None, env_var: str = "MEMP_API_BASE"
) -> tuple[str | None, str]:
    """The endpoint to call and where it came from: ``given`` (a flag, or its environment
    variable read by the CLI), else ``env_var`` in the environment, else the store's setting."""
    if given:
        return given, "flag"
    if os.environ.get(env_var):
        return os.environ[env_var], "env"
    if stored:
        return stored, FROM_STORE
    return None, ""


@dataclass
class LLMSettings:
    model: str
    api_base: str | None = None
    api_base_from: str = ""  # FROM_STORE: named only by memp.toml (unconfirmed); else the caller's
    timeout: float = 60.0
    max_retries: int = 4
    temperature: float = 0.0
    max_tokens: int | None = 1024
    # Secrets are replaced in every message before it is sent, keyed or cached, and in the
    # reply (memp_cli/redact.py; a store's own patterns: redact.for_config). None: --no-redact.
    redactor: Redactor | None = field(default_factory=redactor, repr=False, compare=False)


@dataclass
class Usage:
    """Token and cost totals. ``cost_usd`` is None while no call had a known price."""

    calls: int = 0
    cached_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None

    def add(self, other: Usage) -> Usage:
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd
        return self


@dataclass
class Completion:
    text: str
    usage: Usage
    cached: bool
    finish_reason: str | None = None
    cache_key: str | None = field(default=None, repr=False)
