"""The provider side: chat completions, embeddings, retries: the only module that imports litellm.

litellm is imported lazily (:func:`_litellm`), so ``import memp_cli.backends.llm`` stays cheap
and commands that never call a model never pay for it (the import takes seconds). Before the
import two variables are set, both checked against litellm 1.110.2's source:

- ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (only if unset): ``get_model_cost_map`` tests
  ``os.getenv(...).lower() == "true"`` and then reads the bundled price list instead of
  fetching it over the network at import time.
- ``LITELLM_MODE=PRODUCTION``: ``_process_defaults.apply_process_defaults`` calls
  ``dotenv.load_dotenv()`` whenever the value is ``"DEV"`` (the default), which would read a
  ``.env`` file into the environment.

``LITELLM_OFFLINE_MODE=true`` is also set (only if unset): litellm then never downloads a
Hugging Face tokenizer for :func:`count_tokens` (or any other catalog it fetches on its own);
requests to the model provider are unaffected.

Retries are memp's own (litellm's ``num_retries`` and the OpenAI SDK's ``max_retries`` are
both 0): exponential backoff with jitter on rate limits, server errors, connection errors and
timeouts; configuration errors (auth, bad request, unknown model) fail at once with a hint.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from memp_cli.backends.llm.cache import ResponseCache
from memp_cli.backends.llm.endpoints import UNCONFIRMED_HINT, UNCONFIRMED_KEY, endpoint_kwargs
from memp_cli.backends.llm.errors import LLMConfigError, short
from memp_cli.backends.llm.types import Completion, LLMSettings, Usage
from memp_cli.errors import LLMError, MempError, ModelError
from memp_cli.redact import mask_url

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

# Backoff policy. ``BACKOFF_SCALE`` multiplies every wait (tests set it near 0).
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
RETRY_AFTER_CAP = 60.0
BACKOFF_SCALE = 1.0
EMBED_BATCH = 128

_log = logging.getLogger("memp.llm")
_LITELLM: ModuleType | None = None
_LITELLM_LOCK = threading.Lock()


# --------------------------------------------------------------------------- litellm import


def _litellm() -> ModuleType:
    """Import and configure litellm once (thread-safe); never at module import time."""
    global _LITELLM
    if _LITELLM is not None:
        return _LITELLM
    with _LITELLM_LOCK:
        if _LITELLM is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            os.environ["LITELLM_MODE"] = "PRODUCTION"
            import litellm

            litellm.suppress_debug_info = True
            litellm.telemetry = False
            # The OpenAI embedding path computes ``max_retries or DEFAULT_MAX_RETRIES``, so
            # an explicit 0 would still mean 2 hidden SDK retries: memp does the retrying.
            setattr(litellm, "DEFAULT_MAX_RETRIES", 0)  # noqa: B010 - a Final we override
            _configure_litellm_logging()
            _LITELLM = litellm
    return _LITELLM


def _configure_litellm_logging() -> None:
    """Route litellm's loggers to stderr only, and silence them unless MEMP_DEBUG is set.

    litellm's own handler writes records below WARNING to *stdout*, which would corrupt
    memp's machine-readable output, so it is replaced by a plain stderr handler.
    """
    from litellm import _logging as ll_logging

    theirs = ll_logging.handler
    debug = bool(os.environ.get("MEMP_DEBUG"))
    ours = logging.StreamHandler()  # stderr
    ours.setFormatter(logging.Formatter("litellm %(levelname)s: %(message)s"))
    ours.addFilter(ll_logging._secret_filter)
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        lg = logging.getLogger(name)
        lg.removeHandler(theirs)
        lg.addHandler(ours)
        lg.propagate = False
        lg.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)


# --------------------------------------------------------------------------- retries


def _classify(err: BaseException) -> tuple[str, float | None]:
    """("retry" | "auth" | "not_found" | "bad_request" | "other", retry-after seconds)."""
    ll = _litellm()
    import openai

    if _MISSING_KEY.search(str(err)):
        return "auth", None
    if isinstance(err, (ll.AuthenticationError, ll.PermissionDeniedError, openai.AuthenticationError)):
        return "auth", None
    if isinstance(err, ll.RateLimitError):
        return "retry", _retry_after(err)
    if isinstance(err, (ll.NotFoundError, openai.NotFoundError)):
        return "not_found", None
    if isinstance(err, openai.APIConnectionError):  # includes litellm.Timeout and APIConnectionError
        return "retry", None
    retryable = (ll.InternalServerError, ll.ServiceUnavailableError, ll.BadGatewayError, ll.Timeout)
    if isinstance(err, retryable):
        return "retry", _retry_after(err)
    if isinstance(err, (ll.BadRequestError, ll.UnprocessableEntityError, openai.BadRequestError)):
        return "bad_request", None
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and (status >= 500 or status in (408, 409, 429)):
        return "retry", _retry_after(err)
    if isinstance(status, int) and status in (401, 403):
        return "auth", None
    if isinstance(status, int) and 400 <= status < 500:
        return "bad_request", None
    return "other", None


def _header(headers: Any, name: str) -> str | None:
    """A header value from an httpx.Headers or a plain mapping (any case), else None."""
    if headers is None or not hasattr(headers, "items"):
        return None
    for key, value in list(headers.items()):
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return None


def _retry_after(err: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), capped; else None."""
    response = getattr(err, "response", None)
    sources = (getattr(err, "headers", None), getattr(response, "headers", None))
    for headers in sources:
        ms = _header(headers, "retry-after-ms")
        value = _header(headers, "retry-after")
        seconds: float | None = None
        if ms is not None:
            try:
                seconds = float(ms) / 1000.0
            except ValueError:
                seconds = None
        if seconds is None and value is not None:
            try:
                seconds = float(value)
            except ValueError:
                try:
                    seconds = parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    seconds = None
        if seconds is not None:
            return min(max(seconds, 0.0), RETRY_AFTER_CAP)
    return None


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after * BACKOFF_SCALE
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return (ceiling / 2 + random.uniform(0, ceiling / 2)) * BACKOFF_SCALE


_PROVIDER_KEYS = {
    "openai": "OPENAI_API_KEY",
    "text-completion-openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "azure": "AZURE_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "vertex_ai": "GOOGLE_APPLICATION_CREDENTIALS",
    "bedrock": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "cohere": "COHERE_API_KEY",
    "cohere_chat": "COHERE_API_KEY",
    "xai": "XAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY",
    "voyage": "VOYAGE_API_KEY",
}
_MISSING_KEY = re.compile(
    r"missing credentials|api_key client option must be set|no api key|api key (?:is )?(?:not|missing)",
    re.IGNORECASE,
)


def _key_names(model: str) -> str:
    """The environment variable(s) holding the API key for ``model``'s provider."""
    ll = _litellm()
    try:
        missing = [
            k for k in ll.validate_environment(model=model).get("missing_keys", []) if isinstance(k, str)
        ]
    except Exception:
        missing = []
    if missing:
        return " and ".join(missing)
    try:
        provider = str(ll.get_llm_provider(model=model)[1])
    except Exception:
        return "the API key environment variable of the provider"
    return _PROVIDER_KEYS.get(provider, f"{provider.upper()}_API_KEY")


@dataclass(frozen=True)
class _Call:
    """What kind of call failed: names the settings a hint points to, and the error raised."""

    what: str
    model_setting: str
    base_setting: str
    example: str
    error: type[MempError]


_CHAT = _Call("LLM call", "--model", "--api-base", "openai/gpt-4o-mini", LLMError)
# Everything about a remote embedding model is the embedder's failure (exit 7), see memp_cli/errors.py.
_EMBEDDING = _Call(
    "embedding call",
    "the embedder name",
    "[embedder] api_base in memp.toml",
    "litellm/openai/text-embedding-3-small",
    ModelError,
)


def _config_error(
    kind: str, err: BaseException, *, call: _Call, model: str, api_base: str | None
) -> MempError:
    where = f" at {mask_url(api_base)}" if api_base else ""
    msg = f"{call.what} to model {model!r}{where} failed: {short(err)}"
    m, b = call.model_setting, call.base_setting
    detail = kind
    if kind == "auth":
        hint = f"set {_key_names(model)} (or check it is valid) and check {m} and {b}"
    elif kind == "not_found":
        hint = f"check {m} (litellm's provider/model form, e.g. {call.example}) and {b}"
    elif "LLM Provider NOT provided" in str(err) or "Unknown provider" in str(err):
        detail = "provider"
        hint = f"{m} needs litellm's provider prefix, e.g. {call.example}"
    elif "context" in str(err).lower() and "window" in str(err).lower():
        detail = "context"
        hint = "the prompt is longer than the model's context window: use a model with a larger one"
    else:
        hint = f"check {m} and {b}; the provider rejected the request"
    if call.error is LLMError:
        return LLMConfigError(msg, kind=detail, hint=hint)
    return call.error(msg, hint=hint)


def _with_retries(
    fn: Callable[[], T],
    *,
    call: _Call,
    model: str,
    api_base: str | None,
    max_retries: int,
    sleep: Callable[[float], None] | None,
) -> T:
    """Run ``fn`` with memp's retry policy; failures raise ``call.error`` (LLMConfigError for chat)."""
    sleeper = sleep or time.sleep
    attempts = max(0, max_retries) + 1
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except MempError:
            raise
        except Exception as err:
            kind, retry_after = _classify(err)
            if kind != "retry":
                raise _config_error(kind, err, call=call, model=model, api_base=api_base) from None
            last = err
            if attempt + 1 < attempts:
                wait = _backoff(attempt, retry_after)
                _log.info(
                    "%s failed (%s); retry %d/%d in %.2fs",
                    call.what,
                    short(err, 200),
                    attempt + 1,
                    attempts - 1,
                    wait,
                )
                if wait > 0:
                    sleeper(wait)
    assert last is not None
    where = f" at {mask_url(api_base)}" if api_base else ""
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    raise call.error(
        f"{call.what} to model {model!r}{where} failed after {tries}: {short(last)}",
        hint=f"the provider is overloaded or unreachable: retry later, or check {call.base_setting}",
    ) from None


# --------------------------------------------------------------------------- completions


def _usage_of(resp: Any) -> Usage:
    u = getattr(resp, "usage", None)
    if u is None and isinstance(resp, dict):
        u = resp.get("usage")
    get = (lambda k: u.get(k)) if isinstance(u, dict) else (lambda k: getattr(u, k, None))
    cost: float | None = None
    hidden = getattr(resp, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:  # litellm already priced it
        value = hidden["response_cost"]
        cost = float(value) if isinstance(value, (int, float)) else None
    else:
        try:
            cost = float(_litellm().completion_cost(completion_response=resp))
        except Exception:
            cost = None
    return Usage(
        calls=1,
        tokens_in=int(get("prompt_tokens") or 0) if u is not None else 0,
        tokens_out=int(get("completion_tokens") or 0) if u is not None else 0,
        cost_usd=cost,
    )


def complete(
    messages: list[dict[str, str]],
    settings: LLMSettings,
    *,
    cache: ResponseCache | None = None,
    mock_response: str | None = None,
    cache_put: bool = True,
    response_format: dict[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Completion:
    """One chat completion, served from ``cache`` when it holds the same request.

    ``cache_put=False`` reads the cache but leaves writing to the caller (who validates
    first); the key is in ``Completion.cache_key``. ``mock_response`` goes to litellm's own
    mock (no network) and is part of the cache key.
    """
    messages = outgoing(messages, settings)
    key = None
    if cache is not None:
        key = cache.key(messages, settings, response_format=response_format, mock_response=mock_response)
        hit = cache.get(key)
        if hit is not None:
            return Completion(
                text=hit[0], usage=Usage(cached_calls=1, cost_usd=0.0), cached=True, cache_key=key
            )
    ll = _litellm()
    kwargs: dict[str, Any] = {
        "model": settings.model,
        "messages": messages,
        "timeout": settings.timeout,
        "temperature": settings.temperature,
        "num_retries": 0,
        "max_retries": 0,
        "drop_params": True,
    }
    if mock_response is None:
        kwargs.update(endpoint_kwargs("LLM", settings.model, settings.api_base, settings.api_base_from))
    elif settings.api_base:
        kwargs["api_base"] = settings.api_base
    if settings.max_tokens is not None:
        kwargs["max_tokens"] = settings.max_tokens
    if response_format is not None:
        kwargs["response_format"] = response_format
    if mock_response is not None:
        kwargs["mock_response"] = mock_response

    try:
        resp = _with_retries(
            lambda: ll.completion(**kwargs),
            call=_CHAT,
            model=settings.model,
            api_base=settings.api_base,
            max_retries=settings.max_retries,
            sleep=sleep,
        )
    except LLMConfigError as e:
        if e.kind == "auth" and kwargs.get("api_key") == UNCONFIRMED_KEY:
            raise LLMConfigError(e.message, kind=e.kind, hint=UNCONFIRMED_HINT) from None
        raise
    try:
        choice = resp.choices[0]
        text = choice.message.content or ""
        finish = getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, TypeError) as err:
        raise LLMError(
            f"LLM call to model {settings.model!r} returned no message: {short(err)}",
            hint="check --model and --api-base point to a chat-completions endpoint",
        ) from None
    usage = _usage_of(resp)
    if settings.redactor is not None:
        text = settings.redactor.text(text)
    if cache is not None and key is not None and cache_put:
        cache.put(key, text, usage, model=settings.model)
    return Completion(text=text, usage=usage, cached=False, finish_reason=finish, cache_key=key)


def outgoing(messages: list[dict[str, str]], settings: LLMSettings) -> list[dict[str, str]]:
    """The messages as sent (and as the cache keys them): secrets redacted by ``settings.redactor``."""
    return messages if settings.redactor is None else settings.redactor.messages(messages)


def json_response_format(model: str, schema: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``response_format`` asking ``model`` for JSON (following ``schema`` when given), or
    None when litellm says the model takes no response_format."""
    try:
        params = _litellm().get_supported_openai_params(model=model) or []
    except Exception:
        return None
    if "response_format" not in params:
        return None
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


# --------------------------------------------------------------------------- embeddings


def embed(
    texts: Sequence[str],
    model: str,
    *,
    api_base: str | None = None,
    api_base_from: str = "",
    timeout: float = 60.0,
    max_retries: int = 4,
    sleep: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` through litellm: float32 rows, L2-normalised, in input order.
    ``api_base_from``: as :attr:`LLMSettings.api_base_from` (FROM_STORE: no key sent).

    Every failure is the embedder's: :class:`ModelError` (exit 7), see memp_cli/errors.py.
    """
    import numpy as np

    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    ll = _litellm()
    rows: list[np.ndarray] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = [t if t.strip() else " " for t in texts[start : start + EMBED_BATCH]]
        kwargs: dict[str, Any] = {"model": model, "input": batch, "timeout": timeout, "max_retries": 0}
        kwargs.update(endpoint_kwargs("embedding", model, api_base, api_base_from))
        resp = _with_retries(
            functools.partial(ll.embedding, **kwargs),
            call=_EMBEDDING,
            model=model,
            api_base=api_base,
            max_retries=max_retries,
            sleep=sleep,
        )
        rows.append(_embedding_matrix(resp, len(batch), model))
    dims = {r.shape[1] for r in rows}
    if len(dims) != 1:
        raise ModelError(f"embedding model {model!r} returned vectors of different sizes {sorted(dims)}")
    out = np.concatenate(rows, axis=0).astype(np.float32, copy=False)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _embedding_matrix(resp: Any, n: int, model: str) -> np.ndarray:
    import numpy as np

    data = getattr(resp, "data", None)
    if data is None and isinstance(resp, dict):
        data = resp.get("data")
    items: list[tuple[int, Any]] = []
    for pos, item in enumerate(data or []):
        if isinstance(item, dict):
            idx, vec = item.get("index"), item.get("embedding")
        else:
            idx, vec = getattr(item, "index", None), getattr(item, "embedding", None)
        items.append((int(idx) if idx is not None else pos, vec))
    if len(items) != n:
        raise ModelError(
            f"embedding model {model!r} returned {len(items)} vectors for {n} texts",
            hint=f"check {_EMBEDDING.base_setting} points to an embeddings endpoint",
        )
    items.sort(key=lambda it: it[0])
    try:
        return np.asarray([vec for _, vec in items], dtype=np.float32).reshape(n, -1)
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"embedding model {model!r} returned malformed vectors: {short(err)}",
            hint="the embedding endpoint must return float vectors (encoding_format=float)",
        ) from None


# --------------------------------------------------------------------------- estimates


def count_tokens(messages: Sequence[dict[str, str]], model: str) -> int:
    """Best-effort prompt size in tokens (litellm's tokenizer, else ~4 characters a token)."""
    try:
        return int(_litellm().token_counter(model=model, messages=list(messages)))
    except Exception:
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        return chars // 4 + 4 * len(messages)
