"""BM25 (memp_cli.index.lexical): build, save, load and query timings on synthetic memories.

::

    python benchmarks/bench_lexical.py [--docs N] [--queries N]

Prints the timings; the last line is what a fresh `memp query` process pays for BM25.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from memp_cli.index.lexical import LexicalIndex

# fmt: off
WORDS: tuple[str, ...] = (
    "put", "place", "take", "pick", "move", "find", "clean", "heat", "cool", "examine", "look", "slice",
    "rinse", "wash", "turn", "open", "close", "bring", "mug", "cup", "glass", "bowl", "plate", "pan",
    "pot", "kettle", "knife", "fork", "spoon", "spatula", "ladle", "egg", "apple", "tomato", "potato",
    "lettuce", "bread", "butterknife", "saltshaker", "peppershaker", "soapbar", "soapbottle", "sponge",
    "cloth", "towel", "handtowel", "toiletpaper", "spraybottle", "candle", "vase", "statue", "book",
    "pencil", "pen", "cellphone", "creditcard", "keychain", "watch", "remotecontrol", "laptop",
    "pillow", "newspaper", "box", "tissuebox", "cd", "alarmclock", "baseballbat", "basketball",
    "tennisracket", "dishsponge", "winebottle", "houseplant", "desklamp", "floorlamp", "lamp",
    "television", "painting", "mirror", "window", "blinds", "curtains", "coffeemachine", "microwave",
    "fridge", "stoveburner", "sinkbasin", "bathtubbasin", "garbagecan", "countertop", "diningtable",
    "sidetable", "coffeetable", "desk", "dresser", "drawer", "cabinet", "shelf", "safe", "armchair",
    "sofa", "bed", "ottoman", "toilet", "cart", "handtowelholder", "towelholder", "toiletpaperhanger",
    "laundryhamper", "showerdoor", "microwave", "toaster", "red", "blue", "green", "small", "large",
    "clean", "dirty", "hot", "cold", "empty", "full", "two", "three", "first", "second", "left",
    "right", "kitchen", "bathroom", "bedroom", "livingroom", "office", "under", "near", "beside",
    "inside", "behind", "front", "top", "bottom"
)
# fmt: on


def bench(n_docs: int = 100_000, n_queries: int = 200, seed: int = 0) -> None:
    """Print build, save, load and query timings for ``n_docs`` synthetic memories."""
    import subprocess
    import sys
    import tempfile
    import time

    rng = np.random.default_rng(seed)
    base = list(WORDS)
    # A realistic long tail: base words, numbered receptacles ("cabinet 12") and compounds.
    compounds = [a + b for a in base[:120] for b in base[40:140]]
    words = np.array(base + compounds + [str(i) for i in range(1, 60)])
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    perm = rng.permutation(len(words))
    p = p[perm]
    lengths = rng.integers(6, 15, size=n_docs)
    toks = words[rng.choice(len(words), size=int(lengths.sum()), p=p)]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    fillers = ["a", "the", "in", "some", "on", "and put it in"]
    docs = []
    for i in range(n_docs):
        ws = toks[bounds[i] : bounds[i + 1]].tolist()
        ws.insert(2, fillers[i % len(fillers)])
        docs.append((i * 3 + 1, " ".join(ws) + "."))
    queries = [docs[int(j)][1] for j in rng.integers(0, n_docs, size=n_queries)]

    t0 = time.perf_counter()
    idx = LexicalIndex.build(docs)
    t_build = time.perf_counter() - t0
    print(f"docs={n_docs} vocab={idx.vocab_size} postings={idx._doc_idx.shape[0]} avgdl={idx.avgdl:.2f}")
    print(f"build: {t_build * 1000:.0f} ms")

    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        t0 = time.perf_counter()
        manifest = idx.save(d, "lexical-1")
        t_save = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"save: {t_save * 1000:.0f} ms, {size / 1e6:.2f} MB on disk")

        loads = []
        for _ in range(20):
            t0 = time.perf_counter()
            loaded = LexicalIndex.load(d, "lexical-1", manifest)
            loads.append(time.perf_counter() - t0)
        print(f"load (warm page cache, in-process): median {np.median(loads) * 1000:.2f} ms")

        for name, fn in (
            ("scores", loaded.scores),
            ("top(10)", lambda q: loaded.top(q, 10)),
            ("max_score", loaded.max_score),
        ):
            ts = []
            for q in queries:
                t0 = time.perf_counter()
                fn(q)
                ts.append(time.perf_counter() - t0)
            ts_ms = np.array(ts) * 1000
            p95 = np.percentile(ts_ms, 95)
            print(f"{name}: median {np.median(ts_ms):.2f} ms, p95 {p95:.2f} ms, max {ts_ms.max():.2f} ms")
        many = np.array([lab for lab, _ in docs[:: max(1, n_docs // 1000)]], dtype=np.int64)
        ts = []
        for q in queries:
            t0 = time.perf_counter()
            loaded.score_labels(q, many)
            ts.append(time.perf_counter() - t0)
        print(f"score_labels({many.shape[0]} labels): median {np.median(ts) * 1000:.2f} ms")

        # What a `memp query` process pays: a fresh interpreter, import, load, one query.
        code = (
            "import time, numpy\n"
            "t0 = time.perf_counter()\n"
            "from memp_cli.index.lexical import LexicalIndex\n"
            "t1 = time.perf_counter()\n"
            f"ix = LexicalIndex.load({str(d)!r}, 'lexical-1', {manifest!r})\n"
            "t2 = time.perf_counter()\n"
            f"ix.top({queries[0]!r}, 10)\n"
            "t3 = time.perf_counter()\n"
            "print(f'{(t1-t0)*1000:.2f} {(t2-t1)*1000:.2f} {(t3-t2)*1000:.2f}')\n"
        )
        root = str(Path(__file__).resolve().parents[1])
        rows = []
        for _ in range(5):
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
            )
            rows.append([float(x) for x in res.stdout.split()])
        imp, ld, q = np.median(np.array(rows), axis=0)
        print(
            f"fresh process (after numpy import): import memp_cli.index.lexical {imp:.2f} ms, "
            f"load {ld:.2f} ms, first top(10) {q:.2f} ms, load+query {ld + q:.2f} ms"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    bench(args.docs, args.queries)
