"""What a call asks for and what it returns: settings, usage totals, a completion."""

from __future__ import annotations

from dataclasses import dataclass, field

from memp_cli.redact import Redactor, redactor


@dataclass
class LLMSettings:
    model: str
    api_base: str | None = None
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
