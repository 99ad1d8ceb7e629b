"""Quality and cost of reuse through the alignment on the ``revised`` workload (issue 12).

    python benchmarks/revised_quality.py [--workdir /tmp/attmemo-revised] [--texts 24] [--rounds 5]

all-MiniLM-L6-v2 (exported by attmemo.evaluation.models), 256 tokens, batch 1, unpadded.
Stored: the first ``texts`` BBC documents of the revised workload; queries: their
revisions. Each query looks up the shift index (store/shift_index.py) built over the
stored texts, and the aligned fed model (transforms/aligned_feed.py, every layer served)
runs with the found text's true attention. Prints the cosine of the mean-pooled
sentence embedding to exact (mean / p1 / min), next to the aligned share and to the
nearest-stored-output alternative, and the total time of the aligned fed model and of
the oracle over the unmodified model (interleaved rounds, intra-op spinning off in both). Prints; run once.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_LENGTH = 256


def main() -> None:
    import onnx_ir as ir
    import onnxruntime as ort

    from attmemo.bench import interleaved, quiet_session_options
    from attmemo.transforms.names import fed_input
    from attmemo.embedding import sentence_embedding
    from attmemo.evaluation import models
    from attmemo.store import shift_index
    from attmemo.builder.recorder import Recorder, load_tokenizer, unpadded_inputs
    from attmemo.document_tier import alignment_feeds
    from attmemo.transforms.aligned_feed import aligned_fed_model
    from attmemo.workloads import make_workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/attmemo-revised")
    parser.add_argument("--texts", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    paths = models(Path(args.workdir))
    layers = list(range(6))
    aligned_path = Path(args.workdir) / "minilm.aligned.onnx"
    if not aligned_path.exists():
        model = ir.load(paths["memo"])
        aligned_fed_model(model, layers)
        ir.save(model, aligned_path)
    plain = ort.InferenceSession(str(paths["plain"]), quiet_session_options())
    aligned = ort.InferenceSession(str(aligned_path), quiet_session_options())
    oracle = ort.InferenceSession(str(paths["oracle"]), quiet_session_options())
    names = {i.name for i in plain.get_inputs()}

    w = make_workload("revised", stored=args.texts, queries=args.texts)
    tokenizer = load_tokenizer(paths["memo"], {})

    def ids(text: str) -> np.ndarray:
        return np.asarray(tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"], np.int64)

    def feed(x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v for k, v in unpadded_inputs(x[None]).items() if k in names}

    def embed(tokens_1nD: np.ndarray, x: np.ndarray) -> np.ndarray:
        return sentence_embedding(tokens_1nD, np.ones((1, len(x))))[0]

    stored, queries = [ids(t) for t in w.stored], [ids(t) for t in w.queries]
    with tempfile.TemporaryDirectory() as scratch:
        recorder = Recorder(paths["memo"], Path(scratch))
        probs = [{layer: p for layer, (_, p) in recorder.run(x).items()} for x in stored]
        own = [{f"attmemo.probs.{layer}": p[None] for layer, (_, p) in recorder.run(x).items()} for x in queries]
        shift_index.build(stored, Path(scratch) / "shift", seed=0)
        index = shift_index.ShiftIndex(Path(scratch) / "shift")
        matches = [index.nearest(q) for q in queries]
    exact_stored = [embed(plain.run(None, feed(x))[0], x) for x in stored]
    rows = []
    for i, (q, match) in enumerate(zip(queries, matches)):
        aligned_feed = {**alignment_feeds(match.alignment),
                        **{fed_input(k): p[None] for k, p in probs[match.row].items()}}
        exact = embed(plain.run(None, feed(q))[0], q)
        reused = embed(aligned.run(None, {**feed(q), **aligned_feed})[0], q)
        position_equal = np.sum(q[:len(stored[i])] == stored[i][:len(q)]) / len(q)
        rows.append((match.row == i, match.share, float(position_equal), float(exact @ reused),
                     float(exact @ exact_stored[match.row]), aligned_feed))
    found, share, equal, cosine, nearest_output = (np.array([r[k] for r in rows]) for k in range(5))
    print(f"revised, {len(queries)} queries at {MAX_LENGTH} tokens: source found by the shift index "
          f"{found.mean():.0%}; aligned share mean {share.mean():.3f} min {share.min():.3f}; "
          f"position-equal share mean {equal.mean():.3f}")
    for name, c in (("aligned reuse, every layer", cosine), ("nearest stored output", nearest_output)):
        print(f"  {name}: cosine mean {c.mean():.4f} p1 {np.percentile(c, 1):.4f} min {c.min():.4f}")
    for low in (0.98, 0.95, 0.9):
        kept = share >= low
        if kept.any():
            print(f"  aligned share >= {low}: {kept.mean():.0%} of queries, cosine mean {cosine[kept].mean():.4f} "
                  f"min {cosine[kept].min():.4f}")
    totals = {"baseline": 0.0, "aligned": 0.0, "oracle": 0.0}
    start = time.perf_counter()
    for q, r, true_probs in zip(queries, rows, own):
        t = interleaved({"baseline": plain, "aligned": aligned, "oracle": oracle}, feed(q), baseline="baseline",
                        rounds=args.rounds, extra_feeds={"aligned": r[5], "oracle": true_probs})
        for name in totals:
            totals[name] += t.median_ms[name]
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  latency: aligned fed model / unmodified model, total of per-query medians over {args.rounds} "
          f"interleaved rounds: {totals['aligned'] / totals['baseline']:.3f}; the oracle (each query's own "
          f"attention for free) {totals['oracle'] / totals['baseline']:.3f} "
          f"({totals['aligned']:.0f} / {totals['baseline']:.0f} ms; timing took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
