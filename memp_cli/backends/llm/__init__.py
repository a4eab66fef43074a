"""The LLM layer: chat completions, JSON replies, embeddings, a reply cache.

- :mod:`.client`: the provider side, the only module that imports litellm (lazily, so
  ``import memp_cli.backends.llm`` stays cheap): retries, :func:`complete`, :func:`embed`,
  :func:`count_tokens`.
- :mod:`.reply`: :func:`complete_json` (validate, repair once) and :func:`extract_json`.
- :mod:`.cache`: :class:`ResponseCache`, replies on disk keyed by the request.
- :mod:`.errors`: :class:`LLMReplyError`, :class:`LLMConfigError`, API-key redaction.
- :mod:`.types`: :class:`LLMSettings`, :class:`Usage`, :class:`Completion`.

Tuning knobs (``BACKOFF_SCALE``, ``EMBED_BATCH``) live in :mod:`.client`; set them there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memp_cli.backends.llm.cache import ResponseCache
    from memp_cli.backends.llm.client import _litellm as _litellm
    from memp_cli.backends.llm.client import complete, count_tokens, embed
    from memp_cli.backends.llm.errors import LLMConfigError, LLMReplyError
    from memp_cli.backends.llm.reply import complete_json, extract_json, json_cache_key
    from memp_cli.backends.llm.types import Completion, LLMSettings, Usage

# Each name's module, imported on first use (PEP 562): a command that needs only
# ``.types`` (every `memp query`, through the embedder's API base) does not pay for the
# client's imports (logging, email, socket: ~20 ms of a fresh query).
_WHERE = {
    "ResponseCache": "cache",
    "_litellm": "client",  # benchmarks time the import
    "complete": "client",
    "count_tokens": "client",
    "embed": "client",
    "LLMConfigError": "errors",
    "LLMReplyError": "errors",
    "complete_json": "reply",
    "extract_json": "reply",
    "json_cache_key": "reply",
    "Completion": "types",
    "LLMSettings": "types",
    "Usage": "types",
}


_SUBMODULES = {"cache", "client", "endpoints", "errors", "reply", "types"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``llm.client`` as after ``import memp_cli.backends.llm.client``
        return importlib.import_module(f"{__name__}.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Completion",
    "LLMConfigError",
    "LLMReplyError",
    "LLMSettings",
    "ResponseCache",
    "Usage",
    "complete",
    "complete_json",
    "count_tokens",
    "embed",
    "extract_json",
    "json_cache_key",
]
