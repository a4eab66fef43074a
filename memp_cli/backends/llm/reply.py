"""JSON replies: find the object in a model's text, validate it, repair once, cache only good ones."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from memp_cli.backends.llm.cache import ResponseCache
from memp_cli.backends.llm.client import complete, json_response_format, outgoing
from memp_cli.backends.llm.errors import LLMReplyError, redact
from memp_cli.backends.llm.types import LLMSettings, Usage

T = TypeVar("T")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
# Control characters other than tab and newlines: C0, DEL and C1. TOML could hold them
# escaped, but a memory is read by people and printed to terminals (ESC starts a terminal
# escape sequence), and no procedure step needs one: they are dropped from every string.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
MAX_REASON_CHARS = 300  # a reason is shown and sent back in the repair request: never huge


def extract_json(text: str) -> Any:
    """Parse the JSON object in a model reply (``` fences and chatter around it allowed).

    Raises ValueError with a short reason.
    """
    body = _THINK.sub("", text).strip()
    if not body:
        raise ValueError("the reply was empty")
    candidates = [body]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(body)]
    start, end = body.find("{"), body.rfind("}")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    first_error: str | None = None
    for cand in candidates:
        try:
            return json.loads(cand)
        except ValueError as err:
            if first_error is None or cand.startswith("{"):
                first_error = str(err)
    if start < 0 or end <= start:
        raise ValueError("no JSON object ({...}) found in the reply")
    raise ValueError(f"the JSON does not parse: {first_error}")


def clean_strings(obj: Any, where: str = "the reply") -> Any:
    """``obj`` (parsed JSON) with control characters dropped from every string (keys too).

    Raises ValueError naming the place of a lone surrogate (``"\\ud800"`` is valid JSON but
    not text: it cannot be encoded as UTF-8, so neither cached, written to TOML nor printed).
    Rejecting the reply (and so asking the model to repair it) is the only faithful choice:
    what the model meant there is unknown.
    """
    if isinstance(obj, str):
        m = _SURROGATE.search(obj)
        if m is not None:
            raise ValueError(
                f"{where} contains a lone surrogate (U+{ord(m.group()):04X}, at character {m.start()}), "
                "which is not text: reply with valid UTF-8 text only"
            )
        return _CONTROL.sub("", obj)
    if isinstance(obj, list):
        return [clean_strings(v, f"{where} item {i}") for i, v in enumerate(obj, 1)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = clean_strings(k, f"a key of {where}")
            out[key] = clean_strings(v, f'"{key}"' if where == "the reply" else f'{where}."{key}"')
        return out
    return obj


def _printable(text: str) -> str:
    """``text`` safe to send, print or log: lone surrogates become U+FFFD, controls go."""
    return _CONTROL.sub("", _SURROGATE.sub("\ufffd", text))


def _check(text: str, validate: Callable[[Any], T], finish_reason: str | None, max_tokens: int | None) -> T:
    try:
        obj = extract_json(text)
        if not isinstance(obj, dict):
            raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
        obj = clean_strings(obj)
        if _SURROGATE.search(text):  # outside the object's strings: the text cannot be cached
            raise ValueError("the reply contains a lone surrogate, which is not text")
        return validate(obj)
    except (ValueError, TypeError) as err:
        reason = str(err) or type(err).__name__
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        if finish_reason == "length":
            reason += f" (the reply was cut off at max_tokens={max_tokens})"
        raise ValueError(reason) from None


def complete_json(
    messages: list[dict[str, str]],
    settings: LLMSettings,
    *,
    validate: Callable[[Any], T],
    cache: ResponseCache | None = None,
    mock_response: str | None = None,
    json_mode: bool = False,
    schema: dict[str, Any] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tuple[T, Usage]:
    """Ask for a JSON object, validate it, make one repair attempt, and cache only good replies.

    ``validate(obj)`` returns the typed value or raises ValueError with a reason. With
    ``json_mode`` the request carries ``response_format={"type": "json_object"}`` when litellm
    says the model supports it; with a ``schema`` too, ``{"type": "json_schema", ...}``, which
    llama.cpp servers turn into a grammar, so even a tiny model's reply has the right shape.
    """
    response_format = json_response_format(settings.model, schema) if json_mode else None
    total = Usage()
    first = complete(
        messages,
        settings,
        cache=cache,
        mock_response=mock_response,
        cache_put=False,
        response_format=response_format,
        sleep=sleep,
    )
    if first.cached:
        try:
            value = _check(first.text, validate, None, settings.max_tokens)
            return value, total.add(first.usage)
        except ValueError:  # an old or tampered entry: ask again, overwrite it
            first = complete(
                messages,
                settings,
                mock_response=mock_response,
                response_format=response_format,
                sleep=sleep,
            )
    total.add(first.usage)
    key = first.cache_key or (
        cache.key(messages, settings, response_format=response_format, mock_response=mock_response)
        if cache is not None
        else None
    )
    try:
        value = _check(first.text, validate, first.finish_reason, settings.max_tokens)
    except ValueError as err:
        reason = str(err)
    else:
        if cache is not None and key is not None:
            cache.put(key, first.text, first.usage, model=settings.model)
        return value, total

    repair = [
        *messages,
        {"role": "assistant", "content": _printable(first.text)},  # a surrogate cannot be sent
        {
            "role": "user",
            "content": f"Your reply was not valid: {reason}. "
            "Reply with only the JSON object, matching the schema.",
        },
    ]
    second = complete(
        repair,
        settings,
        mock_response=mock_response,
        response_format=response_format,
        sleep=sleep,
    )
    total.add(second.usage)
    try:
        value = _check(second.text, validate, second.finish_reason, settings.max_tokens)
    except ValueError as err:
        raw = second.text
        shown = redact(_printable(raw if len(raw) <= 500 else raw[:500] + "..."))
        raise LLMReplyError(
            f"model {settings.model!r} did not return valid JSON after a repair attempt: {err}\n"
            f"  reply: {shown}",
            reason=str(err),
            raw=raw,
            usage=total,
            hint="try a stronger --model or raise max_tokens; invalid replies are never cached",
        ) from None
    if cache is not None and key is not None:
        usage = Usage(
            tokens_in=first.usage.tokens_in + second.usage.tokens_in,
            tokens_out=first.usage.tokens_out + second.usage.tokens_out,
            cost_usd=total.cost_usd,
        )
        cache.put(key, second.text, usage, model=settings.model)
    return value, total


def json_cache_key(
    messages: list[dict[str, str]],
    settings: LLMSettings,
    *,
    json_mode: bool = False,
    schema: dict[str, Any] | None = None,
    mock_response: str | None = None,
) -> str:
    """The :class:`ResponseCache` key :func:`complete_json` uses for this request."""
    response_format = json_response_format(settings.model, schema) if json_mode else None
    messages = outgoing(messages, settings)  # as complete() keys them
    return ResponseCache.key(messages, settings, response_format=response_format, mock_response=mock_response)
