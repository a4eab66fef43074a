"""Secrets out of everything memp stores or sends: API keys, tokens, passwords, private keys.

Agent logs carry credentials (an ``env`` dump, a ``curl -H "Authorization: Bearer ..."``, a
``.env`` file the agent printed). Every ingested trajectory, every prompt sent to a model and
every reply cached goes through :class:`Redactor`, which replaces each secret by a marker
naming its kind, ``[REDACTED:openai-key]``; the rest of the text is kept, so a memory still
says *that* a key was set and where. The README's "Secrets" table lists the kinds.

Speed: Python's ``re`` cannot run one alternation of these shapes fast (measured: 0.2 MB/s, as
it tries every branch at every position), so each pattern names the literal strings one of
which its matches contain (``sk-``, ``akia``, ``password``, ...). A text is lowercased once and
searched for those strings (``in``: C speed), and only the patterns whose strings occur run;
:func:`redact_trajectory` does that once for a whole run. On the shared agent logs that is
2-5 MB/s of JSONL per core (about 1,500 runs/s), depending on load. Patterns added in
``memp.toml`` (``[redact] patterns``) run on every text. A pattern may mark the part to hide
with a group named ``secret`` (else the whole match is hidden). A marker is never
matched again, so redacting twice changes nothing (``memp scrub`` relies on it).

Shapes are chosen to leave ordinary text alone: a provider key needs its prefix and length,
an unquoted ``password=`` value in code must look like a secret (a digit or a symbol), and
hashes (git SHAs, content digests) are not secrets.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memp_cli.config import Config
    from memp_cli.model.trajectory import Trajectory

MARK = "[REDACTED:{}]"
_NOT_MARK = r"(?!\[REDACTED)"
_E = r"(?![A-Za-z0-9_\-])"

# Keyword ending the name of a setting that holds a secret (api_key, DB_PASSWORD, "token"),
# lowercase: these patterns run on the lowercased text.
_KEYWORD = (
    r"(?P<w>password|passwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key"
    r"|private[_\-]?key|account[_\-]?key|auth[_\-]?key|credentials?)"
)
_SCHEME = r"(?:bearer|basic|token|digest|bot|apikey|sso-key)"
_KEY_TRIGGERS = ("pass", "secret", "token", "key", "credential")
# A value that looks like a secret, not like code: it holds a digit or a symbol
# (``hunter2``, ``wJalr/K7MDENG``), never ``self.token`` or ``settings.SECRET_KEY``.
_SECRETISH = r"(?=[^\s\"'`,;]*[0-9!#$%&*+/=?@^|~\-])"
_PLACEHOLDER = r"(?!\[redacted|\[REDACTED|\$|<|%\(|\{\{|\*{3}|(?i:none|null|true|false|nil|undefined)\b)"


@dataclass(frozen=True)
class Pattern:
    """One built-in shape. ``(?P<v>...)`` is the part replaced (else the whole match);
    ``(?P<w>...)`` the setting's keyword (its kind: password, secret, token, ...).

    ``triggers``: lowercase strings one of which every match contains; the regex runs only on
    a text holding one (found by ``in``, which is much faster than any regex). ``token``: the
    match must not continue a word (a hash, an identifier). ``nocase``: written in lowercase
    and run on the lowercased text (a case-insensitive regex would be 10x slower).
    """

    kind: str
    regex: str
    triggers: tuple[str, ...]
    token: bool = True
    nocase: bool = False


def _p(kind: str, regex: str, *triggers: str, token: bool = True, nocase: bool = False) -> Pattern:
    return Pattern(kind, regex, triggers, token, nocase)


# Order matters between matches starting at the same place: the first pattern wins (so a
# provider key set in OPENAI_API_KEY=... is an openai-key, not a generic api-key).
BUILTIN: tuple[Pattern, ...] = (
    _p(
        "private-key",
        r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,.\-]*)",
        "private key",
        token=False,
    ),
    _p("anthropic-key", r"sk-ant-[A-Za-z0-9_\-]{20,}", "sk-ant-"),
    _p("openrouter-key", r"sk-or-v1-[A-Za-z0-9]{20,}", "sk-or-"),
    _p("openai-key", r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{20,}", "sk-"),
    _p("stripe-key", r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", "k_live_", "k_test_"),
    _p("google-api-key", r"AIza[0-9A-Za-z_\-]{35}", "aiza"),
    _p("google-oauth-token", r"ya29\.[0-9A-Za-z_\-]{20,}", "ya29."),
    _p("groq-key", r"gsk_[A-Za-z0-9]{20,}", "gsk_"),
    _p("huggingface-token", r"hf_[A-Za-z0-9]{30,}", "hf_"),
    _p("xai-key", r"xai-[A-Za-z0-9]{40,}", "xai-"),
    _p("perplexity-key", r"pplx-[A-Za-z0-9]{40,}", "pplx-"),
    _p("replicate-token", r"r8_[A-Za-z0-9]{30,}", "r8_"),
    _p("gitlab-token", r"glpat-[A-Za-z0-9_\-]{20,}", "glpat-"),
    _p("npm-token", r"npm_[A-Za-z0-9]{36}" + _E, "npm_"),
    _p("pypi-token", r"pypi-AgE[A-Za-z0-9_\-]{50,}", "pypi-"),
    _p("sendgrid-key", r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}", "sg."),
    _p(
        "github-token",
        r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
        *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    _p("slack-token", r"xox[abposre]-[A-Za-z0-9\-]{10,}", "xox"),
    _p("slack-webhook", r"hooks\.slack\.com/services/(?P<v>[A-Za-z0-9_/]{20,})", "hooks.slack", token=False),
    _p(
        "aws-access-key-id",
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])",
        "akia",
        "asia",
        "abia",
        "acca",
    ),
    _p(
        "aws-secret-key",
        r"(?:aws_?secret_?(?:access_?)?key|secretaccesskey)[\"']?(?:\s*[=:]\s*|\s+)[\"']?"
        r"(?P<v>[a-z0-9/+=]{40})(?![a-z0-9/+=])",
        *("awssecret", "aws_secret", "secretaccesskey"),
        nocase=True,
    ),
    _p("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", "eyj"),
    _p(
        "authorization",
        r"(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:" + _SCHEME + r"\s+)?"
        r"(?P<v>(?!\[redacted|" + _SCHEME + r"\b)[^\s\"',;]{6,})",
        "authorization",
        nocase=True,
    ),
    _p(
        "bearer-token",
        r"bearer\s+(?P<v>(?!\[redacted)(?=[a-z0-9._~+/\-]*[0-9])[a-z0-9._~+/\-]{16,}=*)",
        "bearer",
        nocase=True,
    ),
    _p(
        "url-password",
        r"://[^\s/:@\"'<>\[\]]{0,256}:(?P<v>" + _NOT_MARK + r"[^\s/@\"'<>]{1,256})@",
        "://",
        token=False,
    ),
    _p(
        "url-token",
        r"[?&;](?:access_token|refresh_token|id_token|auth_token|token|api_key|apikey|api-key|key"
        r"|password|passwd|secret|client_secret|sig|signature|x-amz-signature|x-amz-security-token)="
        r"(?P<v>(?!\[redacted)[^&\s#\"'<>]{4,})",
        *("token=", "key=", "pass", "secret=", "sig"),
        token=False,
        nocase=True,
    ),
    _p(  # --password hunter2, --api-key=...
        "flag",
        r"--[a-z0-9\-]{0,30}?" + _KEYWORD + r"(?:=|[ \t]+)(?P<v>" + _PLACEHOLDER + r"[^\s\"'-][^\s\"']{2,})",
        *_KEY_TRIGGERS,
        nocase=True,
    ),
    _p(  # env dumps and .env files: DB_PASSWORD=hunter, GITHUB_TOKEN=...
        "assignment",
        r"(?P<w>PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|API_?KEY"
        r"|ACCESS_?KEY|PRIVATE_?KEY|ACCOUNT_?KEY|AUTH_?KEY|CREDENTIALS?)="
        r"(?P<v>" + _PLACEHOLDER + r"[^\s\"']{3,})",
        *_KEY_TRIGGERS,
        token=False,
    ),
    _p(  # "password": "x", api_key = 'x', secret: "x"
        "assignment",
        _KEYWORD + r"[\"']?\s*(?:=|:=|:|=>)\s*[br]?[\"'](?P<v>" + _PLACEHOLDER + r"[^\"'\n\\]{3,})[\"']",
        *_KEY_TRIGGERS,
        token=False,
        nocase=True,
    ),
    _p(  # password: hunter2, token=abc123 (unquoted: only values that look like secrets)
        "assignment",
        _KEYWORD
        + r"[\"']?[ \t]*(?:=|:=|:|=>)[ \t]*(?P<v>"
        + _PLACEHOLDER
        + _SECRETISH
        + r"[^\s\"'`,;(){}\[\]<>]{4,})(?![(\[\w])",
        *_KEY_TRIGGERS,
        token=False,
        nocase=True,
    ),
)

_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_KIND_OF_WORD = (("pass", "password"), ("secret", "secret"), ("token", "token"), ("credential", "credential"))


def _word_kind(word: str) -> str:
    w = word.lower()
    return next((kind for part, kind in _KIND_OF_WORD if part in w), "api-key")


@dataclass(frozen=True, slots=True)
class Hit:
    """One secret found: its kind and where it is in the text (the value itself is not kept)."""

    kind: str
    start: int
    end: int


class Redactor:
    """Finds and replaces secrets. ``extra``: more regular expressions (``memp.toml``)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = tuple(extra)
        self._compiled = [
            (p, re.compile(p.regex), re.compile(p.regex, re.IGNORECASE) if p.nocase else None)
            for p in BUILTIN
        ]
        self._triggers = sorted({t for p in BUILTIN for t in p.triggers})
        self._custom = [compile_pattern(x) for x in self.extra]

    # ------------------------------------------------------------------ text
    def _builtin_hits(self, text: str) -> Iterator[tuple[int, int, Hit]]:
        low = text.lower()
        present = {t for t in self._triggers if t in low}
        if not present:
            return
        same_length = len(low) == len(text)
        for rank, (p, regex, folded) in enumerate(self._compiled):
            if not present.intersection(p.triggers):
                continue
            if p.nocase:
                subject, regex = (low, regex) if same_length else (text, folded or regex)
            else:
                subject = text
            for m in regex.finditer(subject):
                if p.token and m.start() and text[m.start() - 1] in _WORD:
                    continue  # inside a longer word (a hash, an identifier): not a key
                kind = _word_kind(m.group("w") or "") if "w" in regex.groupindex else p.kind
                start, end = m.span("v") if "v" in regex.groupindex else m.span()
                yield start, rank, Hit(kind, start, end)

    def _custom_hits(self, text: str) -> Iterator[tuple[int, int, Hit]]:
        rank = len(self._compiled)
        for pattern in self._custom:
            for m in pattern.finditer(text):
                span = m.span("secret") if "secret" in pattern.groupindex else m.span()
                if span[1] > span[0] and not text.startswith("[REDACTED", span[0]):
                    yield span[0], rank, Hit("custom", *span)

    def find(self, text: str) -> list[Hit]:
        """The secrets in ``text``, in order; of overlapping ones the first to start (then the
        first pattern) is kept."""
        if not text:
            return []
        found = sorted([*self._builtin_hits(text), *self._custom_hits(text)], key=lambda x: (x[0], x[1]))
        kept: list[Hit] = []
        for _, _, h in found:
            if not kept or h.start >= kept[-1].end:
                kept.append(h)
        return kept

    def text(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with every secret replaced by its marker; ``counts`` (by kind) is added to."""
        hits = self.find(text)
        if not hits:
            return text
        out: list[str] = []
        pos = 0
        for h in hits:
            out.append(text[pos : h.start])
            out.append(MARK.format(h.kind))
            pos = h.end
            if counts is not None:
                counts[h.kind] += 1
        out.append(text[pos:])
        return "".join(out)

    def value(self, obj: Any, counts: Counter[str] | None = None) -> Any:
        """A JSON-like value with every string in it (keys too) redacted; the same object when
        nothing changed."""
        if isinstance(obj, str):
            return self.text(obj, counts)
        if isinstance(obj, list):
            new = [self.value(v, counts) for v in obj]
            return obj if all(a is b for a, b in zip(new, obj, strict=True)) else new
        if isinstance(obj, dict):
            items = [(self.value(k, counts), self.value(v, counts)) for k, v in obj.items()]
            same = all(a is k and b is v for (a, b), (k, v) in zip(items, obj.items(), strict=True))
            return obj if same else dict(items)
        return obj

    def messages(
        self, messages: list[dict[str, str]], counts: Counter[str] | None = None
    ) -> list[dict[str, str]]:
        """Chat messages with their contents redacted (the list itself when nothing changed)."""
        out = [
            {**m, "content": self.text(m["content"], counts)} if isinstance(m.get("content"), str) else m
            for m in messages
        ]
        return messages if all(a == b for a, b in zip(out, messages, strict=True)) else out


def redact_trajectory(t: Trajectory, r: Redactor, counts: Counter[str] | None = None) -> Trajectory:
    """``t`` with every text field redacted (in place; its id, from the content as read, is kept so
    the same run ingested again, redacted or not, is still stored once).

    The fields are first scanned as one text: most runs hold no secret, and one scan of the
    whole run costs less than one per field."""
    parts = [t.task, t.initial_observation, t.task_id or "", t.task_type or "", t.source or ""]
    for s in t.steps:
        parts += (s.action, s.observation, s.thought)
    if not r.find("\n\x00\n".join(parts)) and not (t.extra and r.find(_json_text(t.extra))):
        return t
    t.task = r.text(t.task, counts)
    t.initial_observation = r.text(t.initial_observation, counts)
    for s in t.steps:
        s.action, s.observation = r.text(s.action, counts), r.text(s.observation, counts)
        s.thought = r.text(s.thought, counts)
    if t.task_id is not None:
        t.task_id = r.text(t.task_id, counts)
    if t.task_type is not None:
        t.task_type = r.text(t.task_type, counts)
    if t.source is not None:
        t.source = r.text(t.source, counts)
    t.extra = r.value(t.extra, counts)
    return t


def _json_text(obj: Any) -> str:
    import orjson

    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return str(obj)


def redact_all(trajectories: Iterable[Trajectory], r: Redactor | None) -> int:
    """Redact these trajectories in place (nothing when ``r`` is None); the number of secrets."""
    counts: Counter[str] = Counter()
    if r is not None:
        for t in trajectories:
            redact_trajectory(t, r, counts)
    return sum(counts.values())


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A pattern from ``memp.toml``; ValueError (with the reason) when it is not a valid regex
    or matches the empty string (it would hide nothing and run forever)."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"is not a valid regular expression ({e})") from None
    if compiled.match(""):
        raise ValueError("matches the empty string")
    return compiled


@functools.lru_cache(maxsize=16)
def redactor(extra: tuple[str, ...] = ()) -> Redactor:
    """The redactor for these extra patterns (compiled once per process)."""
    return Redactor(extra)


def for_config(config: Config, *, enabled: bool = True) -> Redactor | None:
    """The redactor a store's settings ask for (``[redact]``); None when redaction is off there
    or ``enabled`` is False (``--no-redact``)."""
    if not (enabled and config.redact.enabled):
        return None
    return redactor(tuple(config.redact.patterns))


_PLAIN = re.compile(r"[A-Za-z0-9_.\-/: ]{0,24}")


def shown(value: Any) -> str:
    """How a message names a bad value: a short plain word, number or constant as itself
    (``'tool'``, ``2``, ``None``), anything else by type and size (``a string of 51 characters``),
    so a message never carries a secret that sat where the value should be."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and not redactor().find(value):
            return repr(value)
        return f"a string of {len(value)} character{'s' if len(value) != 1 else ''}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return f"an object of {len(value)} key{'s' if len(value) != 1 else ''}"
    return f"a {type(value).__name__}"


def redact(text: str) -> str:
    """``text`` with the built-in patterns applied."""
    return redactor().text(text)


def mask_url(url: str) -> str:
    """A URL fit to print: a password in it (``http://user:pw@host``) and token query
    parameters are replaced by ``***``."""
    out: list[str] = []
    pos = 0
    for h in redactor().find(url):
        out.append(url[pos : h.start])
        out.append("***")
        pos = h.end
    out.append(url[pos:])
    return "".join(out)
