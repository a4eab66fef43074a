"""``memp query``: the memories to hand an agent for a new task."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from typer._click.exceptions import UsageError

from memp_cli import index as index_mod
from memp_cli.backends.embedders import Embedder
from memp_cli.cli import G, app, choice, open_store, output
from memp_cli.cli.output import env, open_input
from memp_cli.errors import InputError
from memp_cli.model.memory import KINDS
from memp_cli.retrieve.avefact import KeywordExtractor, builtin_keywords, llm_keywords
from memp_cli.retrieve.render import pack_prompt, similar_note
from memp_cli.retrieve.retriever import EXACT_MAX_QUERIES, KEYS, Hit, Retriever
from memp_cli.store import Store, store_embedder

if TYPE_CHECKING:
    from memp_cli.update.outcomes import Usage

FORMATS = ("table", "json", "prompt")


def read_queries(path: str) -> Iterator[tuple[str, Any]]:
    """JSONL queries: a JSON string, or an object with task/query/text (and optional id)."""
    stream, name = open_input(path)
    try:
        for lineno, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise InputError(
                    f"not valid JSON ({e})",
                    path=name,
                    line=lineno,
                    hint='each line must be a JSON string or an object like {"task": "..."}',
                ) from None
            text: Any
            if isinstance(obj, str):
                text, qid = obj, None
            elif isinstance(obj, dict):
                text = obj.get("task") or obj.get("query") or obj.get("text")
                qid = obj.get("id", obj.get("task_id"))
            else:
                text, qid = None, None
            if not isinstance(text, str) or not text.strip():
                raise InputError(
                    'expected a JSON string or an object with a "task" (or "query"/"text") string',
                    path=name,
                    line=lineno,
                )
            yield text.strip(), qid
    finally:
        if stream is not env.stdin:
            stream.close()


def _one_blas_thread() -> None:
    """Run OpenBLAS single-threaded in this process, unless the user chose otherwise.

    Only effective before numpy is imported (the embedders import it lazily, after this). A query
    embeds one short text: a second BLAS thread saves ~1 ms on an idle machine, but when the other
    core is busy minilm's first embed took 50-340 ms instead of ~10 ms (benchmarks/bench_query.py).
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def load_index(
    store: Store, embedder: Embedder, *, keywords: bool = False, exact: bool = False
) -> index_mod.Index | None:
    """The index, brought up to date when this process can (:func:`memp_cli.index.open_index`
    decides); its notes (rebuilt because ..., answering from an older index because ...) go to
    stderr as they happen.

    ``keywords``: the keyword side too (``--key avefact``). ``exact``: map the vectors file
    instead of loading the hnsw graph (a few queries).
    """
    with output.progress_bar("embedding memories") as progress:
        opened = index_mod.open_index(
            store, embedder, keywords=keywords, exact=exact, progress=progress, on_note=output.warn
        )
    if opened.report is not None and opened.index is not None:
        report = opened.report
        for e in report.broken:
            output.warn(str(e).split("\n")[0] + " (left out of the index)")
        if report.embedded:
            output.info(
                f"index: {report.embedded} embedded ({embedder.name}), {len(opened.index)} memories indexed"
            )
    return opened.index


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The new task, or - to read JSONL queries from stdin.")],
    k: Annotated[
        int | None, typer.Option("-k", "--top", help="How many memories (default: the store's, 3).", min=1)
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Leave out memories scoring below this (default: 0).")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help=f"Retrieval key: {', '.join(KEYS)}.", callback=choice(KEYS))
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="Only this kind: trajectory, script, procedure.", callback=choice(KINDS)),
    ] = None,
    lexical_weight: Annotated[
        float | None,
        typer.Option(help="Weight of BM25 of the task text beside the cosine, 0..1.", min=0.0, max=1.0),
    ] = None,
    procedure_weight: Annotated[
        float | None,
        typer.Option(help="Weight of the procedure match (the script title), 0..1.", min=0.0, max=1.0),
    ] = None,
    family_weight: Annotated[
        float | None,
        typer.Option(help="Weight of the procedure family's pooled score, 0..1.", min=0.0, max=1.0),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="table, json (JSON lines) or prompt (default: table on a terminal, json otherwise).",
            callback=choice(FORMATS),
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", "--nl", help="Same as --format json.")] = False,
    max_tokens: Annotated[
        int,
        typer.Option(
            help="With --format prompt: the token budget (estimated, 4 characters a token). Too small "
            "for even one memory: nothing is written, exit 0, and a warning names the budget that fits one.",
            min=50,
        ),
    ] = 1500,
    seed: Annotated[int | None, typer.Option(help="Random seed for --key random.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="With --key avefact: the LLM (a litellm model string) that extracts the query's "
            "keywords (default: builtin, no model).",
        ),
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="With --model: the API base URL (e.g. a local server).")
    ] = None,
    utility_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the outcome term (success rate with a prior, 0.5 when unused), 0..1 "
            "(default: the store's).",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Show every part of each hit's score: lexical, cosine, utility, matched terms, and "
            "what collapse did.",
        ),
    ] = False,
    collapse: Annotated[
        bool,
        typer.Option(
            "--collapse/--no-collapse",
            help="Collapse near-duplicates into one hit shown by its best-rated run (successes before "
            "failures), so the k hits are k different procedures; --no-collapse: the ranking as "
            "scored, every run in its own place.",
        ),
    ] = True,
) -> None:
    """Find the memories most relevant to a task.

    With TEXT: one result per line (--json), a table, or a prompt block. With -: JSON lines of
    queries in (a string, or {"task": ..., "id": ...}), one line out per query:
    {"query", "id", "results": [...]}.

    Near-duplicates (same kind, and the same key text or key vectors at least [prune]
    duplicate_similarity alike) are one hit, shown by its best-rated run (succeeded, then by
    outcomes, then by score) and counted on it: "(+2 similar runs, 1 failed)", "duplicates" in
    JSON. So k hits are k different procedures, and on equal scores a run that succeeded comes
    first. --no-collapse: every run in its own place, as scored. A failed run is never shown as
    a way to do a task: --format prompt gives it as a warning (what went wrong, its last steps),
    or as a pitfall of the success it collapsed into.

    --format prompt with a --max-tokens too small for even one memory writes nothing and exits
    0 (a pipeline feeding an agent goes on without memory); a warning on stderr names the
    smallest budget that fits one.

    --key avefact scores a memory by its keywords: the mean, over the query's keywords, of the
    cosine of the closest memory keyword; JSON hits then carry query_keywords and
    matched_keywords.

    Example: memp query "heat some egg and put it in garbagecan." --format prompt
    """
    if json_out and fmt not in (None, "json"):
        raise UsageError(f"--json and --format {fmt} conflict (--json means --format json); give one of them")
    if fmt is None:
        fmt = "json" if (json_out or not env.stdout_isatty) else "table"
    _one_blas_thread()
    env.fast_exit = True  # read-only: main() may skip the interpreter's teardown
    store = open_store("query")
    rc = store.config.retrieval
    key = key or rc.key
    if key not in KEYS:
        raise InputError(
            f"unknown key {key!r} in {store.root}/memp.toml", hint=f"choose one of {', '.join(KEYS)}"
        )
    if (model or api_base) and key != "avefact":
        output.warn("--model and --api-base only apply to --key avefact; ignored")
    extractor: KeywordExtractor = builtin_keywords
    if key == "avefact" and model and model != "builtin":
        from memp_cli.backends.llm.types import LLMSettings, choose_api_base
        from memp_cli.redact import for_config

        llm_cfg = store.config.llm
        base, source = choose_api_base(api_base, llm_cfg.api_base if model == llm_cfg.model else "")
        extractor = llm_keywords(
            LLMSettings(
                model=model,
                api_base=base,
                api_base_from=source,
                timeout=llm_cfg.timeout,
                max_tokens=256,
                redactor=for_config(store.config),
            ),
            cache_dir=store.cache_dir / "llm",
            prompts_dir=store.prompts_dir,
        )
    embedder = store_embedder(store, G.embedder)
    # All queries first: a few are searched exactly over the mapped vectors, more through the
    # hnsw graph (see retrieve.EXACT_MAX_QUERIES).
    batch = list(read_queries("-")) if text == "-" else [(text, None)]
    idx = load_index(store, embedder, keywords=key == "avefact", exact=len(batch) < EXACT_MAX_QUERIES)
    if idx is None:
        output.warn(f"the store {store.root} has no memories yet: run `memp ingest` and `memp distill`")
        return
    retriever = Retriever.from_config(
        idx,
        embedder,
        rc,
        k=k or None,
        min_score=min_score,
        key=key,
        kind=kind,
        lexical_weight=lexical_weight,
        procedure_weight=procedure_weight,
        family_weight=family_weight,
        seed=seed,
        keyword_extractor=extractor,
        utility_weight=utility_weight,
        explain=explain,
        collapse=collapse,
        collapse_similarity=store.config.prune.duplicate_similarity,
    )
    if retriever.utility_weight > 0 or explain:
        retriever.usage = _usage(store)
    else:  # collapse reads the outcomes only to choose between two runs with the same outcome
        retriever.usage_loader = lambda: _usage(store)
    if text == "-":
        results = retriever.search([q for q, _ in batch]) if batch else []
        for i, ((q, qid), hits) in enumerate(zip(batch, results, strict=True)):
            if fmt == "prompt":
                output.write(_prompt(hits, max_tokens, f"query {i + 1}: ") + "\n")
            else:
                line: dict[str, Any] = {"query": q, "id": qid}
                if key == "avefact":
                    line["query_keywords"] = retriever.query_keywords[i]
                line["results"] = [h.to_dict() for h in hits]
                output.emit_json_lines([line])
    else:
        hits = retriever.search([text])[0]
        title = text
        if key == "avefact" and retriever.query_keywords:
            title += f" (keywords: {', '.join(retriever.query_keywords[0]) or 'none'})"
        best = retriever.best_below[0] if retriever.best_below else None
        if best is not None:
            output.info(
                f"no memory is a match: the best scored {best:.3f}, below the floor {retriever.min_score:g} "
                "([retrieval] min_score); --min-score -1 shows the nearest anyway"
            )
        elif not hits and fmt == "table":
            output.info("no memory found")
        _render(hits, fmt, max_tokens, title, explain=explain)
    for w in retriever.warnings:
        output.warn(w.split("\n")[0])


def _prompt(hits: list[Hit], max_tokens: int, where: str = "") -> str:
    """The prompt block; on stderr, what did not fit in ``max_tokens``."""
    packed = pack_prompt(hits, max_tokens=max_tokens)
    if hits and not packed.shown:
        output.warn(
            f"{where}--max-tokens {max_tokens} is too small for even one memory: nothing was written "
            f"(the best of the {len(hits)} found needs {packed.needed}); raise --max-tokens to at "
            f"least {packed.needed}"
        )
    elif packed.shown < len(hits):
        output.info(
            f"{where}{len(hits) - packed.shown} of {len(hits)} memories did not fit in --max-tokens {max_tokens}"
        )
    return packed.text


def _usage(store: Store) -> dict[str, Usage]:
    from memp_cli.update.outcomes import Ledger

    return Ledger.of(store).usage()


def _render(hits: list[Hit], fmt: str, max_tokens: int, text: str, *, explain: bool = False) -> None:
    if fmt == "json":
        output.emit_json_lines(h.to_dict() for h in hits)
    elif fmt == "prompt":
        output.write(_prompt(hits, max_tokens))
    else:
        if not hits:
            return
        ok = {True: "yes", False: "no", None: "?"}
        if explain:
            output.table(
                ["#", "score", "id", "lexical", "cosine", "utility", "uses", "matched", "similar"],
                (
                    [
                        str(h.rank),
                        f"{h.score:.3f}",
                        h.memory.id,
                        f"{h.lexical:.3f}",
                        f"{h.similarity:.3f}",
                        f"{h.utility:.2f}",
                        f"{(h.explain or {}).get('successes', 0)}/{(h.explain or {}).get('uses', 0)}",
                        ", ".join((h.explain or {}).get("matched_terms", []))
                        or ", ".join(f"{q}~{k}" for q, k, _ in h.matches or []),
                        similar_note(h).strip(" ()"),
                    ]
                    for h in hits
                ),
                title=f"memories for: {text}",
            )
            return
        output.table(
            ["#", "score", "id", "kind", "ok", "task", "first steps"],
            (
                [
                    str(h.rank),
                    f"{h.score:.3f}",
                    h.memory.id,
                    h.memory.kind,
                    ok[h.memory.success],
                    h.memory.task + similar_note(h),
                    "; ".join(s.get("action", "") for s in h.memory.steps[:4])
                    or (h.memory.script or {}).get("title", ""),
                ]
                for h in hits
            ),
            title=f"memories for: {text}",
        )
