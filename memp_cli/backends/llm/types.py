"""What a call asks for and what it returns: settings, usage totals, a completion."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LLMSettings:
    model: str
    api_base: str | None = None
    timeout: float = 60.0
    max_retries: int = 4
    temperature: float = 0.0
    max_tokens: int | None = 1024


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
