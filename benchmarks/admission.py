"""Issue 15's numbers: learning from traffic with no build-db.

    python benchmarks/admission.py --workdir /tmp/attmemo-admit [--rounds 5] [--requests 240]

all-MiniLM-L6-v2 (the bundled export), the `edited` workload (attmemo.workloads: 64 stored
BBC documents, their edited copies as queries), 256 tokens, every session with intra-op
spinning off, timings interleaved A/B in one run:

1. stream the 64 stored documents through `attmemo.InferenceSession(..., admit=True)` over a
   new folder: each one misses and is admitted; time of that run (what the caller waits)
   against the unmodified model on the same document (total ratio and median per-document
   ratio), and the background write of each text, waited for after its run (so it overlaps
   no timed run), also as a ratio including it;
2. then the 64 edited versions: % that reuse (first pass), total time over them against the
   unmodified model (median of ``rounds`` per query, summed), cosine of the mean-pooled
   sentence embedding to the unmodified model's (mean, p1);
3. max_db_bytes = 1/4 of what the 64 documents took: a stream of ``requests`` documents, each
   with probability 0.75 one of the 8 sent most recently, else any of the 64; hit rate with
   LRU eviction against random eviction (cachetools.RRCache), same stream;
4. the document key's lookup (DocumentExecutor.single, the one every entry point runs) with
   the 64 admitted texts against 20,000 synthetic texts of the same lengths added to the
   admitted index, alternating query by query: median time over the edited queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from attmemo.bench import total_seconds
from attmemo.ceiling import cosine_stats
from attmemo.embedding import embed

MAX_LENGTH = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attmemo-admit"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from attmemo.evaluation import models
    from attmemo.workloads import make_workload

    paths = models(args.workdir)
    workload = make_workload("edited", stored=64, queries=64, seed=0)
    feeds = _Feeds(paths["memo"])
    stored, edited = [feeds(t) for t in workload.stored], [feeds(t) for t in workload.queries]
    result = {"admit_and_reuse": admit_and_reuse(paths, args.workdir / "stream.memo", stored, edited,
                                                 rounds=args.rounds)}
    full = result["admit_and_reuse"]["folder_bytes"]
    result["eviction"] = {policy: eviction(paths, args.workdir / f"budget.{policy}.memo", stored, budget=full // 4,
                                           policy=policy, requests=args.requests)
                          for policy in ("lru", "random")}
    print(f"eviction, budget {full // 4} bytes: {json.dumps(result['eviction'])}", flush=True)
    result["lookup"] = lookup(paths, args.workdir / "stream.memo", edited)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


class _Feeds:
    def __init__(self, model: Path):
        from attmemo.builder.recorder import load_tokenizer
        self.tokenizer = load_tokenizer(model, {})

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        encoded = self.tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        return {k: v.astype(np.int64) for k, v in encoded.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}


def _sessions(paths, folder: Path, budget: int, policy: str = "lru"):
    import onnxruntime as ort

    import attmemo
    from attmemo.bench import quiet_session_options

    shutil.rmtree(folder, ignore_errors=True)
    baseline = ort.InferenceSession(str(paths["plain"]), quiet_session_options())
    admitting = attmemo.InferenceSession(str(paths["memo"]), db=folder, admit=True, max_db_bytes=budget,
                                         eviction=policy, sess_options=quiet_session_options())
    return baseline, admitting


def admit_and_reuse(paths, folder: Path, stored: list[dict], edited: list[dict], *, rounds: int) -> dict:
    baseline, admitting = _sessions(paths, folder, budget=8 << 30)
    print(admitting.memo_status, flush=True)
    for feed in stored[:2]:                       # warm both (the first runs allocate)
        baseline.run(None, feed)
    ratios, totals = [], {"baseline": 0.0, "admit": 0.0, "write": 0.0}
    for i, feed in enumerate(stored):
        order = ("baseline", "admit") if i % 2 else ("admit", "baseline")
        spent = {}
        for name in order:
            session = baseline if name == "baseline" else admitting
            start = time.perf_counter()
            session.run(None, feed)
            spent[name] = time.perf_counter() - start
            if name == "admit":        # the background write, waited for here so it overlaps no timed run
                start = time.perf_counter()
                admitting.memo_flush()
                spent["write"] = time.perf_counter() - start
        ratios.append(spent["admit"] / spent["baseline"])
        for name in spent:
            totals[name] += spent[name]
    admission = admitting.memo_stats()["admission"]
    out = {"admitted": admission["admitted"], "folder_bytes": admission["bytes"],
           "admit_miss_total_ratio": totals["admit"] / totals["baseline"],
           "admit_miss_median_ratio": float(np.median(ratios)),
           "admit_miss_with_write_total_ratio": (totals["admit"] + totals["write"]) / totals["baseline"],
           "write_ms_mean": 1e3 * totals["write"] / len(stored)}
    print(f"admitting a miss: {json.dumps(out)}", flush=True)

    hits_before = _hits(admitting)
    for feed in edited:
        admitting.run(None, feed)
    out["edited_reuse"] = (_hits(admitting) - hits_before) / len(edited)
    totals = total_seconds({"baseline": baseline, "admitting": admitting}, edited, rounds=rounds)
    out["edited_total_ratio"] = totals["admitting"] / totals["baseline"]
    out["edited_cosine"] = dataclasses.asdict(cosine_stats(embed(admitting, edited), embed(baseline, edited)))
    print(f"edited queries: {json.dumps(out)}", flush=True)
    return out


def eviction(paths, folder: Path, stored: list[dict], *, budget: int, policy: str, requests: int) -> dict:
    _, admitting = _sessions(paths, folder, budget=budget, policy=policy)
    rng, recent, hits = random.Random(15), [], 0
    for _ in range(requests):
        doc = rng.choice(recent) if recent and rng.random() < 0.75 else rng.randrange(len(stored))
        recent = ([doc] + [d for d in recent if d != doc])[:8]
        before = _hits(admitting)
        admitting.run(None, stored[doc])
        hits += _hits(admitting) - before
    admitting.memo_flush()
    admission = admitting.memo_stats()["admission"]
    on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"hit_rate": hits / requests, "evicted": admission["evicted"], "entries": admission["entries"],
            "bytes_on_disk": on_disk, "budget": budget, "within_budget": on_disk <= budget}


def lookup(paths, folder: Path, edited: list[dict]) -> dict:
    """Median DocumentExecutor.single time over the edited queries: 64 admitted texts against the same
    folder opened a second time with 20,000 synthetic texts added, alternating query by query (A/B),
    so the machine's noise falls on both alike."""
    from attmemo.store import MemoDatabase

    small, large = MemoDatabase.open(folder), MemoDatabase.open(folder)
    queries = [feed["input_ids"][0] for feed in edited]
    rng = np.random.default_rng(0)
    lengths = [len(q) for q in queries]
    index = large.documents.admitted.index
    for row in range(20_000):                  # rows no file backs: random ids never match a query
        index.add(10**7 + row, rng.integers(1000, 30000, lengths[row % len(lengths)]).astype(np.int32))
    times = {"small": [], "large": []}
    for r in range(21):
        for ids in queries:
            for name, database in (("small", small), ("large", large))[::1 if r % 2 else -1]:
                start = time.perf_counter()
                found = database.executor.single(ids)
                times[name].append(time.perf_counter() - start)
                assert found is not None
    small_us, large_us = (1e6 * float(np.median(times[k][len(queries):])) for k in ("small", "large"))
    out = {"entries_small": 64, "entries_large": 64 + 20_000, "median_us_small": small_us,
           "median_us_large": large_us, "ratio": large_us / small_us}
    print(f"lookup: {json.dumps(out)}", flush=True)
    return out


def _hits(session) -> int:
    return session.memo_stats().get(0, {}).get("hits", 0)








if __name__ == "__main__":
    main()
