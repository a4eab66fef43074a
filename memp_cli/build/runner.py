"""The distill loop: build memories from ingested trajectories (the paper's *build* step).

What one trajectory becomes under each policy is :mod:`memp_cli.build.policies`; this
module finds what is still to build, makes the LLM calls (or runs the builtin
distiller) and writes the results. A memory's id derives from the policy and the
trajectory id, so distilling again skips what is done and a killed run resumes where
it stopped; a rebuilt memory keeps its ``stats``.

Locking: the store's writer lock is never held during LLM calls. A run (1) lists
the pending trajectories under the lock, (2) makes the calls without it, in a
thread pool, and (3) takes the lock briefly for each batch of finished results,
re-checking that nobody wrote them meanwhile. A second ``memp distill`` on the same
store waits for the first (or, with ``--no-wait``, exits with code 6) on a lock of
its own, ``cache/distill.lock``, so two distills never pay for the same call.
A kill -9 loses at most the calls in flight; the finished ones are in the
response cache (``cache/llm``), so a rerun costs no tokens for them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from memp_cli.build.policies import (
    BUILTIN_MODEL,
    BUILTIN_VERSION,
    built_with,
    needs_rebuild,
    resolve_policy,
    script_memory,
    trajectory_memory,
)
from memp_cli.build.settled import Settled
from memp_cli.build.writing import Writer
from memp_cli.errors import InputError, LLMError, MemoryFileError, MempError
from memp_cli.index.built import built_stamps
from memp_cli.index.entry import Entry, Scan, Stamp
from memp_cli.model.memory import Memory, encoding_problem, load_memory_file
from memp_cli.model.trajectory import Trajectory
from memp_cli.redact import for_config, redact_all
from memp_cli.store.fsutil import StoreLock, make_dirs
from memp_cli.store.protocol import MemoryStore

BATCH = 500  # memories written under one lock acquisition, at most
FLUSH_SECONDS = 1.0  # local policies: write at least this often
GATHER_SECONDS = 0.05  # LLM results: wait this long for more before writing a batch
MAX_CONCURRENCY = 256
PROMPT_MAX_STEPS = 60  # steps of the trajectory shown to the model (head and tail)
# Consecutive failed calls (transport errors after retries, no reply at all) that stop a run:
# the provider looks down, and every remaining trajectory would wait out its retries.
UNREACHABLE_AFTER = 8

ProgressFn = Callable[[int, int], None]
FailureFn = Callable[["Failure"], None]


@dataclass
class Failure:
    trajectory: str
    memory: str
    reason: str


@dataclass
class DistillReport:
    """What a run did; ``to_dict`` is the JSON summary and the journal record."""

    policy: str
    model: str = ""
    prompt_version: str = ""
    dry_run: bool = False
    total: int = 0  # trajectories in the store
    read: int = 0  # trajectories to build in this run
    written: int = 0
    versioned: int = 0  # of ``written``: new versions of memories built with another model/prompt
    skipped: int = 0  # already built with the same policy, model and prompt version
    filtered: int = 0  # left out by --only-success
    unlabeled: int = 0  # of ``filtered``: runs of unknown outcome (neither built nor lessons)
    forgotten: int = 0  # in the trash (forgotten, pruned, deleted by hand): never rebuilt
    kept_edits: int = 0  # edited by hand: kept, not rebuilt (unless replace_edits)
    failed: int = 0
    pending: int = 0  # still to build after this run (failed, --limit, stopped early)
    calls: int = 0  # requests sent to the model (repairs included)
    cached_calls: int = 0  # replies served from the response cache
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None  # None while no call had a price litellm knows
    estimated_tokens: int = 0  # --dry-run: prompt tokens the run would send
    redacted: int = 0  # secrets replaced in the trajectories built (memp_cli/redact.py)
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did
    ids: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)  # --dry-run rows
    warnings: list[str] = field(default_factory=list)
    error: MempError | None = None  # the settings error that stopped the run
    lock_seconds: float = 0.0  # time spent holding the store lock to write (benchmarks)
    fresh: dict[str, tuple[Entry, Stamp]] = field(default_factory=dict, repr=False)  # for the index sync
    # The plan's scan of the memory files, handed to the index sync (:class:`Scan`) while the
    # memories folder is as this run left it: :class:`Writer` checks the folder's mtime before
    # each write (a change by anyone else drops it) and takes it again right after.
    scan: Scan | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        skip = {"ids", "failures", "planned", "warnings", "error", "lock_seconds", "fresh", "scan"}
        d = {k: v for k, v in vars(self).items() if k not in skip}
        d["seconds"] = round(self.seconds, 3)
        if self.cost_usd is not None:
            d["cost_usd"] = round(self.cost_usd, 6)
        return d


@dataclass
class _Job:
    t: Trajectory
    mid: str
    version: int  # 1, or the existing version + 1 (re-checked when written)


class _Cancelled:
    """A job the pool skipped because the run was stopping."""


def distill(
    store: MemoryStore,
    policy: str | None = "trajectory",
    *,
    model: str | None = None,
    api_base: str | None = None,
    timeout: float | None = None,
    concurrency: int = 4,
    only_success: bool | None = None,
    limit: int | None = None,
    replace_edits: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    on_failure: FailureFn | None = None,
    mock_response: str | None = None,
    max_retries: int = 4,
    redact: bool = True,
) -> DistillReport:
    """Write a memory for each trajectory that has none for ``policy`` (and model, prompt) yet.

    ``policy=None`` uses the store's ``[distill] policy``; ``model=None`` its ``[llm] model``.
    ``only_success=None`` follows ``[update] policy``: only ``vanilla`` builds failed runs too
    (under ``validation`` and ``adjustment`` a failure is a lesson for ``reflect``, not a recipe).

    ``progress(done, total)`` and ``on_failure(failure)`` are called from this thread.
    An LLM failure for one trajectory is counted and the run continues; a settings
    problem (no key, unknown model) stops it: ``report.error`` holds that error.
    ``mock_response``: for litellm (tests). ``redact=False``: secrets stay (``--no-redact``).
    """
    t0 = time.perf_counter()
    pol = resolve_policy(store, policy)
    if only_success is None:
        only_success = store.config.update.policy != "vanilla"
    if concurrency < 1 or concurrency > MAX_CONCURRENCY:
        raise InputError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit must be 0 or more, got {limit}")
    cfg = store.config
    use_model = "" if pol == "trajectory" else (model or cfg.llm.model or BUILTIN_MODEL).strip()
    prompt = None
    if use_model and use_model != BUILTIN_MODEL:
        from memp_cli.build.prompting import load_prompt

        prompt = load_prompt("script", store.prompts_dir)
    prompt_version = prompt.version if prompt else (BUILTIN_VERSION if use_model else "")
    report = DistillReport(policy=pol, model=use_model, prompt_version=prompt_version, dry_run=dry_run)

    run_lock: StoreLock | None = None
    if not dry_run:
        make_dirs(store.cache_dir)
        run_lock = StoreLock(store.cache_dir / "distill.lock", wait=store.lock.wait)
        run_lock.acquire()  # another distill on this store: wait, or LockedError (exit 6)
    try:
        if dry_run:
            jobs = _plan(store, pol, use_model, prompt_version, only_success, limit, report, replace_edits)
        else:
            with store.lock:  # --no-wait applies here
                jobs = _plan(
                    store, pol, use_model, prompt_version, only_success, limit, report, replace_edits
                )
        report.redacted = redact_all([job.t for job in jobs], rd := for_config(cfg, enabled=redact))
        if dry_run:
            _dry_run(store, jobs, pol, use_model, prompt, api_base, timeout, mock_response, report)
        elif jobs:
            writer = Writer(store, pol, use_model, prompt_version, report, progress, len(jobs))
            writer.replace_edits = replace_edits
            if progress:
                progress(0, len(jobs))
            if prompt is None:
                _run_local(store, jobs, pol, use_model, prompt_version, writer)
            else:
                settings = _settings(store, use_model, api_base, timeout, max_retries)
                settings.redactor = rd
                _run_llm(store, jobs, pol, prompt, settings, concurrency, mock_response, writer, on_failure)
        report.pending += report.failed
        report.seconds = time.perf_counter() - t0
        if not dry_run and report.read:
            store.journal("distill", **report.to_dict(), count=report.written, ids=report.ids)
    finally:
        if run_lock is not None:
            run_lock.release()
    return report


def _settings(
    store: MemoryStore, model: str, api_base: str | None, timeout: float | None, max_retries: int
) -> Any:
    from memp_cli.backends.llm.types import LLMSettings, choose_api_base

    base, source = choose_api_base(api_base, store.config.llm.api_base)
    return LLMSettings(
        model=model,
        api_base=base,
        api_base_from=source,
        timeout=timeout if timeout is not None else store.config.llm.timeout,
        max_retries=max_retries,
        max_tokens=store.config.llm.max_tokens,
    )


def _plan(
    store: MemoryStore,
    policy: str,
    model: str,
    prompt_version: str,
    only_success: bool,
    limit: int | None,
    report: DistillReport,
    replace_edits: bool = False,
) -> list[_Job]:
    """Sort every stored trajectory into skipped, filtered or a job (under the lock)."""
    from memp_cli.update import trash
    from memp_cli.update.history import History

    # What each memory was built with, as the index saw it (while its stat is the same).
    known = built_stamps(store)
    dir_mtime = store.memories_mtime_ns()  # before the listing: a change during it moves it
    stamps = store.memory_stamps() if known else {}
    if known and dir_mtime >= 0 and not report.dry_run:
        report.scan = Scan(dir_mtime, stamps)
    # (the names statted are the files there: a name no memory id has is never looked up)
    existing: Collection[str] = stamps.keys() if known else set(store.memory_ids())
    # Tombstones: forgotten or pruned memories (in the trash), and memory files deleted by
    # hand since memp wrote them (put in the trash now). Distill never rebuilds them.
    gone = trash.trashed_ids(store)
    hand_deleted = trash.notice_hand_deletes(store, History(store).ids_but(existing, gone))
    for mid in hand_deleted:
        report.warnings.append(
            f"{mid} was deleted by hand: moved to the trash, not rebuilt (`memp restore {mid}`)"
        )
    gone.update(hand_deleted)
    history = History(store)
    jobs: list[_Job] = []

    settled = Settled(policy, model, prompt_version, only_success, existing, gone, known, stamps)

    def current(tid: str) -> bool:  # its memory is built, current and unchanged: counted unparsed
        if not settled.current(tid):
            return False
        report.total, report.skipped = report.total + 1, report.skipped + 1
        return True

    # A segment of settled runs comes from the trajectory ledger, unparsed: only the runs
    # Settled.segment did not count itself, as outlines.
    for t in store.iter_trajectories(current if known else None, settled=settled, record=not report.dry_run):
        report.total += 1
        mid = settled.memory_of(t.id)  # one memory per run, whatever the policy
        version = 1
        if mid in gone:
            report.forgotten += 1
            continue
        if mid in existing:
            path = store.memory_path(mid)
            k = known.get(mid)
            try:
                built = k[2] if k is not None and stamps.get(mid) == k[:2] else built_with(path)
                if not needs_rebuild(built, policy, model, prompt_version):
                    report.skipped += 1
                    continue
                version = load_memory_file(path).version + 1
            except MemoryFileError as e:
                report.skipped += 1
                report.warnings.append(f"{str(e).splitlines()[0]} (left as it is; `memp doctor` explains)")
                continue
            if not replace_edits and history.hand_edited(mid):
                report.kept_edits += 1
                report.warnings.append(
                    f"{mid} was edited by hand: kept as it is, not rebuilt "
                    "(`memp distill --replace-edits` rebuilds it; the edit stays in `memp history`)"
                )
                continue
        if only_success and t.success is not True:
            report.filtered += 1
            report.unlabeled += t.success is None
            continue
        if limit is not None and len(jobs) >= limit:
            report.pending += 1
            continue
        jobs.append(_Job(t, mid, version))
    report.skipped += settled.skipped
    report.filtered += settled.filtered
    report.unlabeled += settled.unlabeled
    report.total += settled.skipped + settled.filtered
    report.read = len(jobs)
    return jobs


def _dry_run(
    store: MemoryStore,
    jobs: list[_Job],
    policy: str,
    model: str,
    prompt: Any,
    api_base: str | None,
    timeout: float | None,
    mock_response: str | None,
    report: DistillReport,
) -> None:
    """What would be sent: one row per job, with the prompt's size in tokens."""
    from memp_cli.backends.llm import ResponseCache

    settings = _settings(store, model, api_base, timeout, 0)
    cache = ResponseCache(store.cache_dir / "llm")
    for job in jobs:
        row: dict[str, Any] = {
            "trajectory": job.t.id,
            "id": job.mid,
            "would_write": True,
            "version": job.version,
            "policy": policy,
            "model": model or None,
            "prompt_version": report.prompt_version or None,
            "estimated_tokens": 0,
        }
        if prompt is not None:
            from memp_cli.backends.llm import count_tokens, json_cache_key
            from memp_cli.build.prompting import script_messages

            messages = script_messages(
                job.t,
                prompt,
                max_steps=PROMPT_MAX_STEPS,
                max_obs_chars=store.config.distill.max_observation_chars,
            )
            key = json_cache_key(messages, settings, json_mode=True, mock_response=mock_response)
            cached = cache.get(key) is not None
            row["estimated_tokens"] = count_tokens(messages, model)
            row["cached"] = cached
            if not cached:
                report.estimated_tokens += row["estimated_tokens"]
        report.planned.append(row)


def _run_local(
    store: MemoryStore, jobs: list[_Job], policy: str, model: str, prompt_version: str, writer: Writer
) -> None:
    """No network: the trajectory policy, or the builtin distiller. One thread, batched writes."""
    batch: list[Memory] = []
    last = time.monotonic()
    for job in jobs:
        if policy == "trajectory":
            mem = trajectory_memory(job.t, store)
        else:
            from memp_cli.build.builtin.distiller import builtin_script

            mem = script_memory(
                job.t,
                builtin_script(job.t),
                store,
                policy=policy,
                model=model,
                prompt_version=prompt_version,
            )
        mem.id = job.mid  # the run's memory, whichever policy built it first
        batch.append(mem)
        if len(batch) >= BATCH or time.monotonic() - last >= FLUSH_SECONDS:
            writer.write(batch)
            batch = []
            last = time.monotonic()
    writer.write(batch)


def _run_llm(
    store: MemoryStore,
    jobs: list[_Job],
    policy: str,
    prompt: Any,
    settings: Any,
    concurrency: int,
    mock_response: str | None,
    writer: Writer,
    on_failure: FailureFn | None,
) -> None:
    """LLM calls in ``concurrency`` threads (no lock held); results written as they arrive."""
    from memp_cli.backends import llm
    from memp_cli.build.prompting import script_messages
    from memp_cli.model.script import script_from_reply

    report = writer.report
    cache = llm.ResponseCache(store.cache_dir / "llm")
    max_obs = store.config.distill.max_observation_chars
    results: queue.Queue[tuple[_Job, Any, BaseException | type[_Cancelled] | None]] = queue.Queue()
    stop = threading.Event()

    def work(job: _Job) -> None:
        if stop.is_set():
            results.put((job, None, _Cancelled))
            return
        try:
            messages = script_messages(job.t, prompt, max_steps=PROMPT_MAX_STEPS, max_obs_chars=max_obs)
            value = llm.complete_json(
                messages,
                settings,
                validate=script_from_reply,
                cache=cache,
                mock_response=mock_response,
                json_mode=True,
            )
            results.put((job, value, None))
        except BaseException as e:  # handed to the main thread, which counts and reports it
            if _stops_the_run(e):
                stop.set()  # at once: the other workers start no new call
            results.put((job, None, e))

    todo: queue.SimpleQueue[_Job] = queue.SimpleQueue()
    for job in jobs:
        todo.put(job)

    def worker() -> None:
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            work(job)

    # Daemon threads, not a ThreadPoolExecutor (whose threads are joined at exit): on Ctrl-C
    # the process ends at once instead of waiting out the calls in flight (they are lost, as
    # with kill -9; the finished ones are already in the cache).
    for i in range(min(concurrency, len(jobs))):
        threading.Thread(target=worker, name=f"memp-distill-{i}", daemon=True).start()
    consecutive = 0
    try:
        received = 0
        while received < len(jobs):
            items = [results.get()]
            deadline = time.monotonic() + GATHER_SECONDS
            while len(items) < BATCH and received + len(items) < len(jobs):
                remaining = deadline - time.monotonic()
                try:
                    items.append(results.get(timeout=remaining) if remaining > 0 else results.get_nowait())
                except queue.Empty:
                    break
            received += len(items)
            batch: list[Memory] = []
            not_written = 0
            for job, value, err in items:
                if err is _Cancelled:
                    report.pending += 1
                    not_written += 1
                    continue
                if isinstance(err, BaseException):
                    not_written += 1
                    consecutive = _failed(job, err, report, stop, consecutive, on_failure)
                    continue
                consecutive = 0
                script, usage = value
                _add_usage(report, usage)
                mem = script_memory(
                    job.t, script, store, policy=policy, model=settings.model, prompt_version=prompt.version
                )
                mem.id = job.mid  # the run's memory, whichever policy built it first
                bad = encoding_problem(mem)
                if bad is not None:  # costs this trajectory only, never the batch
                    not_written += 1
                    _count_failure(job, bad, report, on_failure)
                    continue
                batch.append(mem)
            writer.write(batch)
            if not_written:
                writer.tick(not_written)
    except BaseException:
        stop.set()
        raise


def _stops_the_run(err: BaseException) -> bool:
    """A settings problem (no key, unknown model, bad config): every other call would fail too."""
    from memp_cli.backends.llm import LLMConfigError

    if isinstance(err, LLMConfigError):
        return err.is_settings_problem
    return isinstance(err, MempError) and not isinstance(err, LLMError)


def _failed(
    job: _Job,
    err: BaseException,
    report: DistillReport,
    stop: threading.Event,
    consecutive: int,
    on_failure: FailureFn | None,
) -> int:
    """Count one failed trajectory; stop the run on a settings problem or a dead provider.

    Returns the new count of consecutive failed calls (a bad reply is an answer: it resets it).
    """
    from memp_cli.backends.llm import LLMReplyError

    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        raise err
    if isinstance(err, MempError) and _stops_the_run(err):
        report.pending += 1  # reported once, as the run's error; the trajectory stays pending
        if report.error is None:
            report.error = err
            report.stopped = err.message
        stop.set()
        return consecutive
    if isinstance(err, LLMReplyError):
        _add_usage(report, err.usage)
        reason = f"the reply was not the JSON asked for, even after a repair attempt: {err.reason}"
        consecutive = 0
    elif isinstance(err, MempError):
        reason = err.message
        consecutive += 1
    else:
        reason = f"unexpected {type(err).__name__}: {err}"
        consecutive += 1
    _count_failure(job, reason, report, on_failure)
    if report.error is None and consecutive >= UNREACHABLE_AFTER:
        report.stopped = f"{consecutive} calls in a row failed: the model looks unreachable"
        report.error = LLMError(
            f"stopped after {consecutive} failed calls in a row; the last: {reason}",
            hint="check --model, --api-base and the provider's status; run `memp distill` again to resume",
        )
        stop.set()
    return consecutive


def _count_failure(job: _Job, reason: str, report: DistillReport, on_failure: FailureFn | None) -> None:
    report.failed += 1
    failure = Failure(job.t.id, job.mid, reason)
    report.failures.append(failure)
    if on_failure:
        on_failure(failure)


def _add_usage(report: DistillReport, usage: Any) -> None:
    report.calls += usage.calls
    report.cached_calls += usage.cached_calls
    report.tokens_in += usage.tokens_in
    report.tokens_out += usage.tokens_out
    if usage.cost_usd is not None and usage.calls:
        report.cost_usd = (report.cost_usd or 0.0) + usage.cost_usd
