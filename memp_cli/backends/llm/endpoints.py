"""Where LLM and embedding calls go, and whether the user's key may go there.

A store is data someone may have handed over, so an ``api_base`` named only by its memp.toml
(``[llm] api_base``, ``[embedder] api_base``) is *unconfirmed*: the call goes there without the
provider's key (:data:`UNCONFIRMED_KEY` is passed as ``api_key``, so litellm does not read
``OPENAI_API_KEY`` and the like from the environment), and the run summary says so and how to
confirm it (``--api-base`` / ``MEMP_API_BASE``, ``MEMP_EMBEDDER_API_BASE``). Every endpoint called
is recorded here; the CLI says where the calls went when a command ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from memp_cli.backends.llm.types import FROM_STORE

#: The api_key sent instead of the user's to an endpoint only a store file named: explicit, so
#: litellm does not read the provider's key from the environment.
UNCONFIRMED_KEY = "memp-unconfirmed-endpoint"
UNCONFIRMED_HINT = (
    "the endpoint was named only by [llm] api_base in memp.toml, so your API key was not sent; "
    "if you trust it, confirm it with --api-base URL or MEMP_API_BASE=URL"
)


def endpoint_label(api_base: str | None) -> str:
    """``api_base`` for a message: the URL with any password masked."""
    if not api_base:
        return "the provider's own endpoint"
    from urllib.parse import urlsplit, urlunsplit

    try:
        u = urlsplit(api_base)
        if u.password is None:
            return api_base
        netloc = f"{u.username or ''}:***@{u.hostname or ''}{f':{u.port}' if u.port else ''}"
        return urlunsplit(u._replace(netloc=netloc))
    except ValueError:
        return "an unparsable URL"


@dataclass(frozen=True)
class Endpoint:
    """Where this process's calls of one kind went: said in the command's run summary."""

    kind: str  # "LLM" | "embedding"
    model: str
    api_base: str | None
    source: str  # "flag" | "env" | FROM_STORE | "" (the caller's, or none)

    @property
    def confirmed(self) -> bool:
        return not (self.api_base and self.source == FROM_STORE)

    def note(self) -> str:
        where = endpoint_label(self.api_base)
        said = f"{self.kind} calls ({self.model}) went to {where}"
        if self.confirmed:
            return said
        setting, var = ("[llm] api_base", "MEMP_API_BASE")
        confirm = f"--api-base {where} or {var}={where}"
        if self.kind == "embedding":
            setting, var = ("[embedder] api_base", "MEMP_EMBEDDER_API_BASE")
            confirm = f"{var}={where}"
        return (
            f"{said}, named only by {setting} in memp.toml: sent without your API key (a store "
            f"may come from someone else); if you trust it, confirm it with {confirm}"
        )


_ENDPOINTS: dict[Endpoint, None] = {}
_ENDPOINTS_LOCK = threading.Lock()


def endpoint_kwargs(kind: str, model: str, api_base: str | None, source: str) -> dict[str, Any]:
    """Record where a call goes; the litellm arguments for it (an unconfirmed endpoint gets
    :data:`UNCONFIRMED_KEY`, never the user's key)."""
    ep = Endpoint(kind, model, api_base, source)
    with _ENDPOINTS_LOCK:
        _ENDPOINTS[ep] = None
    out: dict[str, Any] = {"api_base": api_base} if api_base else {}
    if not ep.confirmed:
        out["api_key"] = UNCONFIRMED_KEY
    return out


def endpoints_used() -> list[Endpoint]:
    """The endpoints called since the last time this was asked (and forget them)."""
    with _ENDPOINTS_LOCK:
        out = list(_ENDPOINTS)
        _ENDPOINTS.clear()
    return out
