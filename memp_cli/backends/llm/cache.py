"""Replies on disk, keyed by everything that determines them: re-runs cost no tokens."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memp_cli.backends.llm.types import LLMSettings, Usage

CACHE_VERSION = 1


def _norm_api_base(api_base: str | None) -> str | None:
    if not api_base:
        return None
    return api_base.strip().rstrip("/").lower()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ResponseCache:
    """Replies on disk, keyed by everything that determines them (``<dir>/<k[:2]>/<k>.json``).

    Writes go through the store's one atomic writer, so a crash never leaves a half file; an
    unreadable file is a miss and is overwritten by the next put.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(
        messages: Sequence[dict[str, str]],
        settings: LLMSettings,
        *,
        response_format: dict[str, Any] | None = None,
        mock_response: str | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "v": CACHE_VERSION,
            "model": settings.model,
            "api_base": _norm_api_base(settings.api_base),
            "messages": list(messages),
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
        }
        if response_format is not None:
            payload["response_format"] = response_format
        if mock_response is not None:  # a dry run never serves a real run's cache, nor poisons it
            payload["mock_response"] = mock_response
        return hashlib.sha256(_canonical(payload)).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> tuple[str, Usage] | None:
        """The cached text and the usage the original call had, or None (also when corrupt)."""
        try:
            data = json.loads(self.path(key).read_bytes())
            text = data["text"]
            u = data.get("usage") or {}
            if not isinstance(text, str):
                return None
            cost = u.get("cost_usd")
            usage = Usage(
                calls=1,
                tokens_in=int(u.get("tokens_in", 0)),
                tokens_out=int(u.get("tokens_out", 0)),
                cost_usd=float(cost) if cost is not None else None,
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        return text, usage

    def put(self, key: str, text: str, usage: Usage, *, model: str | None = None) -> None:
        # Imported here: memp_cli.store's package init loads the config and memory modules,
        # which `import memp_cli.backends.llm` should not pay for.
        from memp_cli.store.fsutil import atomic_write

        record = {
            "v": CACHE_VERSION,
            "model": model,
            "text": text,
            "usage": {k: v for k, v in asdict(usage).items() if k in ("tokens_in", "tokens_out", "cost_usd")},
            "created": time.time(),
        }
        atomic_write(self.path(key), _canonical(record))
