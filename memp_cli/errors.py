"""One exception hierarchy for the library; the CLI maps each to an exit code.

Every error carries a message written for a person: what failed, where
(``path:line`` when a file is involved) and what to do next.

The exit code names the part that failed, not the kind of failure. Anything about the
embedder is :class:`ModelError` (exit 7): an unknown name or bad setting, a local model that
cannot be loaded, vectors that do not match the index, and for a remote ``litellm/<model>``
embedder a provider that refuses (no key, unknown model), cannot be reached after retries, or
replies with something other than the vectors asked for. :class:`LLMError` (exit 8) is the chat
model only (distill's ``--model``, ``query --key avefact``). So 7 means "fix the store's
``[embedder]`` settings or its model", 8 means "fix ``--model`` / ``--api-base`` or retry".
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes. The only place they are defined."""

    OK = 0
    ERROR = 1  # unexpected failure (a bug): shown with --traceback
    USAGE = 2  # bad command-line usage (typer/click's own code)
    BAD_INPUT = 3  # malformed input data (JSONL line, trajectory, TOML file)
    NOT_FOUND = 4  # no such store, memory or trajectory
    STORE = 5  # the store is inconsistent or its config is broken
    LOCKED = 6  # another writer holds the store lock and --no-wait was given
    MODEL = 7  # the embedder failed: its settings, model, provider or reply (see above)
    LLM = 8  # a chat LLM call failed (after retries, or for a settings reason)
    INTERRUPTED = 130


class MempError(Exception):
    """Base class: ``str(err)`` is the message shown to the user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(MempError):
    """Bad input data: a JSONL line, a trajectory record, a query."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message, hint=hint)
        self.reason = message


class MemoryFileError(InputError):
    """A memory TOML file that does not parse or does not validate."""


class ConfigError(MempError):
    """memp.toml is missing, broken or from a newer memp."""

    exit_code = ExitCode.STORE


class StoreError(MempError):
    """The store directory is missing or inconsistent."""

    exit_code = ExitCode.STORE


class NotFoundError(MempError):
    exit_code = ExitCode.NOT_FOUND


class LockedError(MempError):
    exit_code = ExitCode.LOCKED


class ModelError(MempError):
    """The embedder failed: its settings, its model, or (remote) its provider or reply."""

    exit_code = ExitCode.MODEL


class LLMError(MempError):
    """A chat LLM call failed (distill, --key avefact); never raised for embeddings."""

    exit_code = ExitCode.LLM
