"""Shift-tolerant lookup at scale (issue 12): 100,000 stored texts, edited and unrelated queries.

    python benchmarks/shift_lookup.py [--texts 100000] [--queries 2000] [--candidates 2] [--trees 30]
                                      [--search-k 1000] [--folder DIR]

Stored texts: seeded synthetic token sequences of 50-512 ids drawn from a Zipf-like
distribution over a 30,000-id vocabulary (so common ids repeat, as in real text).
The build streams them one at a time (store/shift_index.build). Queries: copies of
random stored texts truncated to at most 256 tokens, with 1-6 edits each (insert,
delete or replace a span of 1-4 tokens at random places, so positions shift), and as
many unrelated sequences. Reports lookup + verification latency (median, p99, max)
for both, recall@1 of the edited queries, the aligned share, file sizes and RSS.
Prints; run once (do not loop it on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from attmemo.store.align import align
from attmemo.store.shift_index import ShiftIndex, build

VOCAB = 30_000


# Rank-frequency 1 / (rank + 2.7): the most common id takes ~4 % of tokens, like "the" in English.
_CDF = np.cumsum(1 / (np.arange(VOCAB) + 2.7))
_CDF /= _CDF[-1]


def stored_text(row: int, *, seed: int) -> np.ndarray:
    """Text ``row``: 50-512 Zipf-like ids, a pure function of (row, seed) so nothing is kept."""
    rng = np.random.default_rng([seed, row])
    n = int(rng.integers(50, 513))
    return (np.searchsorted(_CDF, rng.random(n)) + 1).astype(np.int32)


def edited(text: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = list(text[:256])
    for _ in range(int(rng.integers(1, 7))):
        at, span = int(rng.integers(0, len(out))), int(rng.integers(1, 5))
        kind = rng.integers(3)
        new = rng.integers(1, VOCAB, int(rng.integers(1, 5))).tolist()
        out[at:at + (0 if kind == 0 else span)] = [] if kind == 1 else new
    return np.asarray(out[:256], np.int32)


def rss_mib() -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(index: ShiftIndex, queries, candidates: int, search_k: int):
    seconds, matches = [], []
    for q in queries:
        start = time.perf_counter()
        matches.append(index.nearest(q, candidates=candidates, search_k=search_k))
        seconds.append(time.perf_counter() - start)
    return np.array(seconds) * 1e3, matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--trees", type=int, default=30)
    parser.add_argument("--search-k", type=int, default=1000)
    parser.add_argument("--folder", help="where to build (default: a temporary folder, removed after)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="shift-lookup-"))
    seed = 0
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; RSS before build: {rss_mib()[0]:.0f} MiB")
    start = time.perf_counter()
    build((stored_text(row, seed=seed) for row in range(args.texts)), folder, trees=args.trees, seed=seed)
    print(f"build: {args.texts} texts in {time.perf_counter() - start:.1f} s; peak RSS so far {rss_mib()[1]:.0f} MiB")
    for name in ("shift.ann", "tokens.i32", "offsets.npy"):
        print(f"  {name}: {(folder / name).stat().st_size / 2**20:.1f} MiB")

    rng = np.random.default_rng(1)
    rows = rng.integers(0, args.texts, args.queries)
    queries = [edited(stored_text(int(r), seed=seed), rng) for r in rows]
    unrelated = [stored_text(args.texts + i, seed=seed)[:256] for i in range(args.queries)]
    rss_loaded = rss_mib()[0]
    index = ShiftIndex(folder)
    print(f"load: RSS {rss_loaded:.0f} -> {rss_mib()[0]:.0f} MiB")
    timed(index, queries[:200], args.candidates, args.search_k)   # warm the page cache and the code paths
    for name, qs in (("edited", queries), ("unrelated", unrelated)):
        ms, matches = timed(index, qs, args.candidates, args.search_k)
        shares = np.array([m.share for m in matches])
        line = (f"{name:9s} lookup+verification (k={args.candidates}, search_k={args.search_k}): "
                f"median {np.median(ms):.3f} ms, "
                f"p99 {np.percentile(ms, 99):.3f} ms, max {ms.max():.3f} ms; share mean {shares.mean():.3f} "
                f"min {shares.min():.3f} max {shares.max():.3f}")
        if name == "edited":
            found = np.array([m.row == r for m, r in zip(matches, rows)])
            truth = np.array([align(q, stored_text(int(r), seed=seed)).share for q, r in zip(qs, rows)])
            line += (f"; recall@1 {found.mean():.4f}, among queries whose source aligns at >= 0.9: "
                     f"{found[truth >= 0.9].mean():.4f} ({(truth >= 0.9).mean():.0%} of them)")
        print(line)
    print(f"RSS after queries: {rss_mib()[0]:.0f} MiB (peak {rss_mib()[1]:.0f} MiB); "
          f"load average {os.getloadavg()[0]:.1f}")
    if not args.folder:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
