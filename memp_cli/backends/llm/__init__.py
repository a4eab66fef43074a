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

from memp_cli.backends.llm.cache import ResponseCache
from memp_cli.backends.llm.client import _litellm as _litellm  # benchmarks time the import
from memp_cli.backends.llm.client import complete, count_tokens, embed
from memp_cli.backends.llm.errors import LLMConfigError, LLMReplyError
from memp_cli.backends.llm.reply import complete_json, extract_json, json_cache_key
from memp_cli.backends.llm.types import Completion, LLMSettings, Usage

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
