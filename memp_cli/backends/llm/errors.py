"""The LLM layer's errors, and the redaction every provider message goes through first."""

from __future__ import annotations

import os
import re

from memp_cli.backends.llm.types import Usage
from memp_cli.errors import LLMError
from memp_cli.redact import redact as redact_secrets


class LLMReplyError(LLMError):
    """The model's reply did not parse or validate, even after one repair attempt."""

    def __init__(
        self, message: str, *, reason: str, raw: str, usage: Usage | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.raw = raw
        self.usage = usage or Usage()  # what the failed attempts cost


class LLMConfigError(LLMError):
    """The provider refused the request for a reason a retry will not fix.

    ``kind`` says which: ``auth`` (missing or bad key), ``not_found`` (unknown model or
    endpoint), ``provider`` (no litellm provider prefix), ``context`` (the prompt is too long
    for this model: a property of one request), ``bad_request`` or ``other``. The first three
    are settings problems: a batch should stop at the first one instead of repeating it.
    """

    SETTINGS_KINDS = frozenset({"auth", "not_found", "provider"})

    def __init__(self, message: str, *, kind: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind

    @property
    def is_settings_problem(self) -> bool:
        return self.kind in self.SETTINGS_KINDS


_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|xai|gsk|key)[-_][A-Za-z0-9_\-]{8,}", re.IGNORECASE)
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def redact(text: str) -> str:
    """Remove API keys from ``text``: values of secret-looking env vars and sk-... tokens."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub(lambda m: m.group(1) + "-***", redact_secrets(text))


_ERR_PREFIX = re.compile(r"^(?:litellm\.)?[A-Za-z]*(?:Error|Exception|Timeout):\s*")


def short(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line, without litellm's repeated prefixes or any API key."""
    text = " ".join(redact(str(err)).split())
    while (m := _ERR_PREFIX.match(text)) is not None and m.end() > 0:
        text = text[m.end() :]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
