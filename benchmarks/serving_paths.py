"""Issue 11's numbers: the same reuse through every session kind, at batch 1 and batch 8.

    python benchmarks/serving_paths.py --workdir /tmp/attmemo-serving [--rounds 5]

all-MiniLM-L6-v2 (the bundled export), 256 tokens, float32 storage. For `edited` and
`diverse` (attmemo.workloads): build the database from the stored texts, calibrate on
half the queries as `attmemo eval` does, then time the other half, interleaved in one
run with intra-op spinning off on every session, as total time over the queries divided
by the unmodified export's total time:

- plain `onnxruntime.InferenceSession(model, attmemo.session_options(db=...))` and
  `attmemo.InferenceSession(model, db=...)`, batch 1 (unpadded);
- both, batch 8 (padded to the batch's longest) against the unmodified model at batch 8;
- cosine of the mean-pooled sentence embedding to the unmodified model's (mean, p1);
- no database at all, plain session, 128 and 512 tokens;
- `import attmemo` + creating a session over the edited database, in a fresh process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from attmemo.bench import total_seconds
from attmemo.ceiling import cosine_stats
from attmemo.embedding import embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/attmemo-serving"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from attmemo.evaluation import models

    paths = models(args.workdir)
    result = {"startup_seconds": startup(paths["memo"], database(paths, "edited", args.workdir)[0])}
    print(f"import attmemo + InferenceSession over the edited database: {result['startup_seconds']:.2f} s", flush=True)
    for workload in ("edited", "diverse"):
        result[workload] = serving(paths, workload, args.workdir, rounds=args.rounds)
    result["no_database"] = {str(n): no_database(paths, n, rounds=args.rounds) for n in (128, 512)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def database(paths, workload: str, workdir: Path):
    """(calibrated float32 database folder, measured query texts), built once per workdir."""
    from attmemo.calibrate import calibrate
    from attmemo.evaluation import EvalSettings
    from attmemo.builder.build import build_database
    from attmemo.workloads import make_workload, write_corpus

    settings = EvalSettings().sized_for(workload)
    w = make_workload(workload, stored=settings.stored, queries=settings.queries, seed=settings.seed)
    db = workdir / f"{workload}.256.memo"
    if not (db / "manifest.json").exists() or "serving" not in json.loads((db / "manifest.json").read_text()):
        build_database(paths["memo"], write_corpus(w, workdir / f"{workload}.stored.jsonl"), out=db,
                       max_length=256, dtype="float32")
        calibrate(paths["memo"], w.queries[0::2], w.query_labels[0::2] if w.query_labels else None, db=db,
                  max_length=256, progress=lambda line: print(f"  calibrate {workload}: {line}", flush=True))
    return db, w.queries[1::2]


def serving(paths, workload: str, workdir: Path, *, rounds: int) -> dict:
    import onnxruntime as ort

    import attmemo
    from attmemo.bench import quiet_session_options
    from attmemo.builder.recorder import load_tokenizer

    db, texts = database(paths, workload, workdir)
    tokenizer = load_tokenizer(paths["memo"], {})
    sessions = {
        "baseline": ort.InferenceSession(str(paths["plain"]), quiet_session_options()),
        "plain+db": ort.InferenceSession(str(paths["memo"]), attmemo.session_options(db=db,
                                                                                    sess_options=quiet_session_options())),
        "attmemo": attmemo.InferenceSession(str(paths["memo"]), db=db, sess_options=quiet_session_options()),
    }
    print(f"{workload}: {sessions['attmemo'].memo_status}", flush=True)
    out = {}
    for batch in (1, 8):
        feeds = [_batch(tokenizer, texts[i:i + batch], sessions["baseline"]) for i in range(0, len(texts), batch)]
        totals = total_seconds(sessions, feeds, rounds=rounds)
        exact = embed(sessions["baseline"], feeds)
        row = {"total_ratio": {k: totals[k] / totals["baseline"] for k in sessions if k != "baseline"},
               "cosine": {k: dataclasses.asdict(cosine_stats(embed(sessions[k], feeds), exact))
                          for k in sessions if k != "baseline"},
               "baseline_total_ms": 1e3 * totals["baseline"], "batches": len(feeds)}
        print(f"{workload} batch {batch}: {json.dumps(row)}", flush=True)
        out[str(batch)] = row
    return out


def no_database(paths, n: int, *, rounds: int) -> float:
    import onnxruntime as ort

    import attmemo
    from attmemo.bench import encoder_feed, quiet_session_options

    sessions = {"baseline": ort.InferenceSession(str(paths["plain"]), quiet_session_options()),
                "memo": ort.InferenceSession(str(paths["memo"]), attmemo.session_options(
                    sess_options=quiet_session_options()))}
    feed = encoder_feed(sessions["baseline"], batch=1, seq_len=n)
    totals = total_seconds(sessions, [feed] * 8, rounds=rounds)
    ratio = totals["memo"] / totals["baseline"]
    print(f"no database, {n} tokens: plain session {ratio:.3f} of the unmodified model", flush=True)
    return ratio


def startup(model: Path, db: Path) -> float:
    code = ("import time; t = time.perf_counter(); import attmemo; "
            f"attmemo.InferenceSession({str(model)!r}, db={str(db)!r}); print(time.perf_counter() - t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd="/").stdout) for _ in range(3)]
    return float(np.median(runs))


def _batch(tokenizer, texts, session) -> dict[str, np.ndarray]:
    encoded = tokenizer(list(texts), truncation=True, max_length=256, padding=len(texts) > 1, return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    return {k: v.astype(np.int64) for k, v in encoded.items() if k in names}








if __name__ == "__main__":
    main()
