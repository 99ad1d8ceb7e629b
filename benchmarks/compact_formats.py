"""Stored attention formats side by side: bytes, hit latency and quality on `edited` (issue 15 item 3).

    python benchmarks/compact_formats.py --workdir /tmp/attmemo-compact [--texts 32] [--timed 12] [--rounds 5]

all-MiniLM-L6-v2 (the bundled export, as `attmemo eval` makes it), 256 tokens. The
`edited` workload's first TEXTS stored texts build one database per format
(float32, float16, unorm16, log8, log4: store/values.py), each serving the document key
on every layer from a 0.8 match on (the same plan for every format, no per-layer lookups:
the format is the only difference). The queries are the edited copies of those texts.

- bytes: of the value stores per stored text (a text shorter than 256 tokens still fills
  its 256 bucket's block), and nominal for one 256-token text;
- hit / baseline: attmemo.InferenceSession (batch 1, the fed model) against the unmodified
  export on the first TIMED queries, all sessions interleaved in one loop with intra-op
  spinning off in each (runtime-facts.md); each query's median over ROUNDS, ratio of the
  totals. The oracle (every layer fed the query's own attention for free) is the floor;
- CPU time / baseline: the same runs' process CPU time, the same ratio (robust to other jobs
  on the machine where wall time is not; see ``_interleaved``);
- cosine of the sentence embedding to the unmodified export's, mean and p1, over all queries;
- numpy decode: what the per-layer Python ops (MemoFetch) pay per layer hit to turn one
  stored 12x256x256 block into float32 (the fed model decodes in the graph instead).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

FORMATS = ("float32", "float16", "unorm16", "log8", "log4")
MAX_LENGTH = 256
MATCH = 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="models and databases (reused by later runs)")
    parser.add_argument("--texts", type=int, default=32, help="stored texts, and edited queries")
    parser.add_argument("--timed", type=int, default=12, help="queries that are also timed")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per timed query")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    from attmemo.evaluation import models
    from attmemo.workloads import make_workload, write_corpus

    paths = models(args.workdir)
    workload = make_workload("edited", stored=args.texts, queries=args.texts)
    corpus = write_corpus(workload, args.workdir / f"edited.{args.texts}.stored.jsonl")
    dbs = {name: _database(paths["memo"], corpus, args.workdir / f"edited.{args.texts}.{name}.memo", dtype=name)
           for name in FORMATS}
    load_before = os.getloadavg()
    result = _measure(paths, dbs, workload.queries, timed=args.timed, rounds=args.rounds)
    result.update(texts=args.texts, timed=args.timed, rounds=args.rounds, load_before=load_before,
                  load_average=os.getloadavg())
    for line in table(result):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _database(model: Path, corpus: Path, db: Path, *, dtype: str) -> Path:
    """``db`` built from ``corpus`` in ``dtype`` (once per workdir), serving every layer from a MATCH match."""
    from attmemo.builder.build import build_database
    from attmemo.builder.train import KeyTraining
    from attmemo.store import serving

    if not (db / "manifest.json").exists():
        # The learned keys are not used here (no per-layer lookups): train them briefly.
        build_database(model, corpus, out=db, max_length=MAX_LENGTH, dtype=dtype, training=KeyTraining(epochs=2))
    layers = tuple(int(k) for k in json.loads((db / "manifest.json").read_text())["layers"])
    serving.write(db, thresholds={}, measured={"by": "benchmarks/compact_formats.py"},
                  documents=serving.Documents(threshold=MATCH, layers=layers))
    return db


def _measure(paths, dbs: dict[str, Path], queries: list[str], *, timed: int, rounds: int) -> dict:
    import onnxruntime as ort

    import attmemo
    from attmemo.bench import quiet_session_options
    from attmemo.builder.recorder import Recorder, load_tokenizer, unpadded_inputs
    from attmemo.embedding import sentence_embedding
    from attmemo.store import MemoDatabase
    from attmemo.transforms.names import probs_value

    tokenizer = load_tokenizer(paths["memo"], {})
    sessions = {"baseline": ort.InferenceSession(str(paths["plain"]), quiet_session_options()),
                "oracle": ort.InferenceSession(str(paths["oracle"]), quiet_session_options())}
    sessions.update({name: attmemo.InferenceSession(str(paths["memo"]), db=db, sess_options=quiet_session_options())
                     for name, db in dbs.items()})
    names = {i.name for i in sessions["baseline"].get_inputs()}
    ids = [np.asarray(tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"], np.int64) for t in queries]
    feeds = [{k: v for k, v in unpadded_inputs(i[None]).items() if k in names} for i in ids]

    def embed(name: str) -> np.ndarray:
        return np.stack([sentence_embedding(sessions[name].run(None, f)[0], f["attention_mask"])[0] for f in feeds])

    exact = embed("baseline")
    rows = {}
    for name in dbs:
        before = sessions[name].memo_stats().get(0, {}).get("hits", 0)
        cosine = np.sum(embed(name) * exact, axis=1)
        hits = sessions[name].memo_stats().get(0, {}).get("hits", 0) - before
        rows[name] = {"cosine_mean": float(cosine.mean()), "cosine_p1": float(np.percentile(cosine, 1)),
                      "hit_share": hits / len(feeds), **_bytes(dbs[name]),
                      "numpy_decode_ms": _numpy_decode_ms(MemoDatabase.open(dbs[name]))}
    import tempfile
    with tempfile.TemporaryDirectory(prefix="attmemo-compact-") as scratch:
        recorder = Recorder(paths["memo"], Path(scratch))
    ms, cpu_ms = {name: [] for name in sessions}, {name: [] for name in sessions}
    for i in range(min(timed, len(feeds))):
        oracle = {probs_value(layer): p[None] for layer, (_, p) in recorder.run(ids[i]).items()}
        wall, cpu = _interleaved(sessions, feeds[i], rounds=rounds, extra_feeds={"oracle": oracle})
        for name in sessions:
            ms[name].append(wall[name])
            cpu_ms[name].append(cpu[name])
        print(f"  timed query {i + 1}: " + ", ".join(f"{n} {v[-1]:.1f} ms" for n, v in ms.items()), flush=True)
    for name in sessions:
        rows.setdefault(name, {}).update(ms=float(np.mean(ms[name])),
                                         ratio=float(np.sum(ms[name]) / np.sum(ms["baseline"])),
                                         cpu_ratio=float(np.sum(cpu_ms[name]) / np.sum(cpu_ms["baseline"])))
    return {"formats": rows}


def _interleaved(sessions, feed, *, rounds: int, extra_feeds) -> tuple[dict, dict]:
    """Per session, median wall ms and median process CPU ms of one run, in rotated interleaved rounds.

    As attmemo.bench.interleaved, plus CPU time: with intra-op spinning off a session's
    threads use CPU only while working, so on a machine other jobs load, CPU time still
    tells the work of each run apart where wall time mostly measures the wait for a core.
    """
    names = list(sessions)
    feeds = {name: {**feed, **extra_feeds.get(name, {})} for name in names}
    for name in names:
        sessions[name].run(None, feeds[name])   # warm-up
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            sessions[name].run(None, feeds[name])
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return ({n: float(np.median(t)) * 1e3 for n, t in wall.items()},
            {n: float(np.median(t)) * 1e3 for n, t in cpu.items()})


def _bytes(db: Path) -> dict:
    from attmemo.store import MemoDatabase, values

    manifest = MemoDatabase.open(db).manifest
    stored = sum(p.stat().st_size for p in db.rglob("*.values"))
    heads = next(iter(manifest.layers.values()))
    return {"bytes_per_text": stored / sum(manifest.buckets.values()),
            "bytes_256": len(manifest.layers) * values.entry_bytes(heads, MAX_LENGTH, manifest.dtype)}


def _numpy_decode_ms(database) -> float:
    """Median ms of ``probs_float`` of one full bucket block (what MemoFetch's delivery pays per layer hit)."""
    layer, bucket = min(database.manifest.layers), max(database.manifest.buckets)
    out = np.empty((1, database.heads(layer), bucket, bucket), np.float32)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        block = database.probs_float(layer, bucket, 0, bucket, out)
        float(block[0, 0, 0, 0])   # a float32 block is handed over in place, not copied: the op's cost
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def table(result: dict) -> list[str]:
    rows = result["formats"]
    base = rows["baseline"]
    lines = [f"edited, {result['texts']} texts, {MAX_LENGTH} tokens; {result['timed']} timed x {result['rounds']} "
             f"rounds; load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in result['load_before'])}, "
             f"after {', '.join(f'{v:.2f}' for v in result['load_average'])}",
             "| format | bytes per stored text | of float32 | hit / baseline | CPU time / baseline | cosine mean | "
             "cosine p1 | hits | numpy decode per layer hit |",
             "|---|---|---|---|---|---|---|---|---|"]
    fp32 = rows["float32"]["bytes_per_text"]
    for name in FORMATS:
        r = rows[name]
        lines.append(f"| {name} | {r['bytes_per_text'] / 2**20:.2f} MiB | {r['bytes_per_text'] / fp32:.3f} | "
                     f"{r['ratio']:.3f} | {r['cpu_ratio']:.3f} | {r['cosine_mean']:.5f} | {r['cosine_p1']:.5f} | {r['hit_share']:.0%} | "
                     f"{r['numpy_decode_ms']:.2f} ms |")
    lines.append(f"baseline {base['ms']:.1f} ms per query; oracle / baseline {rows['oracle']['ratio']:.3f} "
                 f"(CPU time {rows['oracle']['cpu_ratio']:.3f})")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
