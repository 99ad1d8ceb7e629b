"""What attmemo adds on top of int8: all-MiniLM-L6-v2, `edited` workload, batch 1, one run.

    python benchmarks/int8.py --workdir /tmp/attmemo-int8 [--max-length 256] [--rounds 7] [--timed 12]

Sessions, timed interleaved on the same unpadded queries (intra-op spinning off in each,
runtime-facts.md), in two runs of one process:

    fp32         the unmodified export (onnxruntime)
    int8         the same, quantized by onnxruntime.quantization.quantize_dynamic (onnxruntime)
    int8-nodb    attmemo transform of int8, no database: what the rewrite alone costs (first run,
                 before any database is attached in the process)
    attmemo-fp32 attmemo transform of fp32 with its calibrated database (attmemo.InferenceSession)
    attmemo-int8 attmemo transform of int8 with its calibrated database

Each database is built from the workload's stored texts and calibrated on half of its queries,
as `attmemo eval` does (attmemo/evaluation.py); the other half are measured. Latency is the
ratio of total times (sum over timed queries of each query's median over rounds). Quality is
the sentence embedding's cosine (mean, 1st percentile) to fp32's exact output and to int8's.

Targets (issue 13): attmemo-int8 / int8 <= 0.85 with cosine to int8 mean >= 0.99, p1 >= 0.97;
int8-nodb / int8 <= 1.03.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from attmemo.workloads import write_corpus

TARGETS = {"attmemo-int8 / int8": 0.85, "int8-nodb / int8": 1.03}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True,
                        help="models and databases go here and are reused by later runs (about 2.3 GB)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per timed query")
    parser.add_argument("--timed", type=int, default=12, help="measured queries that are also timed")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    paths = _models(workdir)
    workload = _workload()
    feeds = _feeds(paths, workload.queries[1::2], max_length=args.max_length)
    # First, before any database is attached in this process: a database serves every session
    # of its model in the process (custom_ops/registry.py), so "no database" must come first.
    no_db = _measure(_sessions(paths, {}), feeds, timed=args.timed, rounds=args.rounds)
    corpus = write_corpus(workload, workdir / "edited.stored.jsonl")
    dbs = {name: _database(paths[name], corpus, workload, workdir / f"edited.{name}.{args.max_length}.db",
                           max_length=args.max_length) for name in ("attmemo-fp32", "attmemo-int8")}
    result = _measure(_sessions(paths, dbs), feeds, timed=args.timed, rounds=args.rounds)
    result["ratio"]["int8-nodb / int8"] = no_db["ratio"]["int8-nodb / int8"]
    result["cosine"]["int8-nodb vs int8"] = no_db["cosine"]["int8-nodb vs int8"]
    result.update(max_length=args.max_length, no_database_run=no_db)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _models(workdir: Path) -> dict[str, Path]:
    """fp32 export and its rewrite (attmemo eval's, cached), int8 of the export and its rewrite."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from attmemo.evaluation import models as minilm_models
    from attmemo.export.hf_export import tokenizer_dir_for
    from attmemo.transforms.model_file import transform_file

    fp32 = minilm_models(workdir)
    int8, int8_memo = workdir / "minilm.int8.onnx", workdir / "minilm.int8.memo.onnx"
    if not int8.exists():
        quantize_dynamic(str(fp32["plain"]), str(int8), weight_type=QuantType.QInt8)
    if not int8_memo.exists():
        transform_file(int8, int8_memo)
    if not tokenizer_dir_for(int8_memo).is_dir():  # build and calibrate tokenize with the model's tokenizer
        shutil.copytree(tokenizer_dir_for(fp32["memo"]), tokenizer_dir_for(int8_memo))
    return {"fp32": fp32["plain"], "int8": int8, "attmemo-fp32": fp32["memo"], "attmemo-int8": int8_memo}


def _workload():
    """`edited` at attmemo eval's sizes: queries [0::2] calibrate, [1::2] are measured (as eval splits)."""
    from attmemo.evaluation import DEFAULT_SIZES
    from attmemo.workloads import make_workload

    stored, queries = DEFAULT_SIZES
    return make_workload("edited", stored=stored, queries=queries, seed=0)


def _database(model: Path, corpus: Path, workload, folder: Path, *, max_length: int) -> Path:
    """Build (float32, as attmemo eval stores) and calibrate the database of ``model``; return its folder."""
    from attmemo.calibrate import calibrate
    from attmemo.builder.build import build_database

    if folder.is_dir():  # a rerun on a quieter machine times the same databases (remove the workdir to rebuild)
        print(f"{model.name}: reusing {folder}", flush=True)
        return folder
    build_database(model, corpus, out=folder, max_length=max_length, dtype="float32")
    labels = workload.query_labels[0::2] if workload.query_labels else None
    chosen = calibrate(model, workload.queries[0::2], labels, db=folder, max_length=max_length).chosen
    print(f"{model.name}: calibration chose {chosen.describe()}", flush=True)
    return folder


def _sessions(paths: dict[str, Path], dbs: dict[str, Path]) -> dict:
    """fp32 and int8 always; with ``dbs`` the two attmemo sessions using them, without, int8-nodb."""
    import onnxruntime as ort

    from attmemo.bench import quiet_session_options as quiet
    from attmemo.session import InferenceSession

    sessions = {"fp32": ort.InferenceSession(str(paths["fp32"]), quiet()),
                "int8": ort.InferenceSession(str(paths["int8"]), quiet())}
    if not dbs:
        sessions["int8-nodb"] = InferenceSession(str(paths["attmemo-int8"]), sess_options=quiet())
        if sessions["int8-nodb"].memo_status != "no database":
            raise SystemExit(f"{paths['attmemo-int8']}: found {sessions['int8-nodb'].memo_status}; remove "
                             "the database beside it so the no-database run measures the rewrite alone.")
    for name, db in dbs.items():
        sessions[name] = InferenceSession(str(paths[name]), db=db, sess_options=quiet())
    return sessions


def _feeds(paths: dict[str, Path], texts: list[str], *, max_length: int) -> list[dict[str, np.ndarray]]:
    """Each text as an unpadded batch-1 feed, as attmemo eval runs them."""
    import onnx

    from attmemo.builder.recorder import load_tokenizer, unpadded_inputs

    tokenizer = load_tokenizer(paths["attmemo-fp32"], {})
    names = {i.name for i in onnx.load(str(paths["fp32"]), load_external_data=False).graph.input}
    feeds = []
    for text in texts:
        ids = np.asarray(tokenizer(text, truncation=True, max_length=max_length)["input_ids"], np.int64)
        feeds.append({k: v for k, v in unpadded_inputs(ids[None]).items() if k in names})
    return feeds


def _measure(sessions: dict, feeds: list[dict[str, np.ndarray]], *, timed: int, rounds: int) -> dict:
    """Cosines between every pair of sessions' sentence embeddings, then interleaved total-time ratios."""
    from attmemo import bench
    from attmemo.ceiling import cosine_stats
    from attmemo.embedding import sentence_embedding

    embedded = {name: np.stack([sentence_embedding(s.run(None, f)[0], f["attention_mask"])[0] for f in feeds])
                for name, s in sessions.items()}
    memo = [name for name in sessions if name.startswith("attmemo-")]
    reused = {name: sum(s.get("hits", 0) for s in sessions[name].memo_stats().values()) / len(feeds)
              for name in memo}   # layer reuses per query (of 6 layers)
    cosine = {f"{name} vs {ref}": dataclasses.asdict(cosine_stats(embedded[name], embedded[ref]))
              for ref in ("fp32", "int8") for name in sessions if name != ref}
    totals = {name: 0.0 for name in sessions}
    for feed in feeds[:timed]:
        timing = bench.interleaved(sessions, feed, baseline="fp32", rounds=rounds)
        for name in sessions:
            totals[name] += timing.median_ms[name]
    ratios = {f"{a} / {b}": totals[a] / totals[b] for b in ("fp32", "int8") for a in sessions if a != b}
    return {"timed_queries": min(timed, len(feeds)), "rounds": rounds, "measured_queries": len(feeds),
            "total_ms": totals, "ratio": ratios, "cosine": cosine, "layers_reused_per_query": reused}


def _print(result: dict) -> None:
    print(f"\nall-MiniLM-L6-v2, edited, {result['max_length']} tokens, batch 1: {result['timed_queries']} queries "
          f"timed x {result['rounds']} interleaved rounds, {result['measured_queries']} for quality")
    print("\nlatency (ratio of total times)")
    for key in ("int8 / fp32", "attmemo-fp32 / fp32", "attmemo-int8 / fp32", "attmemo-int8 / int8",
                "int8-nodb / int8"):
        target = f"   target <= {TARGETS[key]:.2f}" if key in TARGETS else ""
        print(f"  {key:<22} {result['ratio'][key]:.3f}{target}")
    print("\nsentence-embedding cosine (mean / p1)")
    for key in ("int8 vs fp32", "attmemo-fp32 vs fp32", "attmemo-int8 vs fp32", "attmemo-int8 vs int8",
                "int8-nodb vs int8"):
        c = result["cosine"][key]
        print(f"  {key:<22} {c['mean']:.4f} / {c['p1']:.4f}")
    for name, reused in result["layers_reused_per_query"].items():
        print(f"  {name}: {reused:.2f} of 6 layers reused per measured query")


if __name__ == "__main__":
    sys.exit(main())
