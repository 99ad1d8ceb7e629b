"""Command line: ``attmemo-export`` and ``attmemo {transform,bench,demo}``.

The CLI prints; library code logs. Errors a user can cause end in one sentence
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, PermissionError)


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="attmemo-export",
        description="Export a local Hugging Face model folder to ONNX with every attention core "
                    "rewritten into an attmemo::MemoAttention node.")
    parser.add_argument("model_dir", help="Hugging Face model folder (config.json, weights, tokenizer)")
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--task", default="feature-extraction", help="optimum task (default: feature-extraction)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the model even if some attention layers could not be rewritten")
    _add_verbosity(parser)
    args = parser.parse_args(argv)
    return _guarded(lambda: _export(args), args)


def _export(args) -> int:
    from attmemo.export.memo_export import export_memo_model

    print(f"exporting {args.model_dir} (eager attention, opset {args.opset}) ...", flush=True)
    report = export_memo_model(args.model_dir, args.out, task=args.task, opset=args.opset,
                               allow_partial=args.allow_partial)
    _print_report(report, Path(args.out))
    return 0


def _print_report(report, out: Path) -> None:
    print(f"rewrote {report.rewritten} of {report.attention_layers} attention layers into attmemo::MemoAttention")
    if report.missed:
        print(f"left unchanged: {', '.join(report.missed)}")
    print(f"wrote {out} (onnx.checker full_check passed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attmemo", description="Attention memoization inside ONNX Runtime.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("transform", help="rewrite the attention cores of an exported ONNX encoder")
    p.add_argument("src", help="ONNX model exported elsewhere (optimum-cli, torch.onnx, ...)")
    p.add_argument("dst", help="ONNX file to write")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the model even if some attention layers could not be rewritten")
    _add_verbosity(p)

    p = sub.add_parser("bench", help="latency of a MemoAttention model vs its unmodified export (interleaved)")
    p.add_argument("--baseline", required=True, help="the unmodified ONNX export")
    p.add_argument("--memo", required=True, help="the same model rewritten by attmemo")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512], help="sequence lengths (default: 128 512)")
    p.add_argument("--rounds", type=int, default=60, help="interleaved rounds per length (default: 60)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default: onnxruntime's choice)")
    _add_verbosity(p)

    p = sub.add_parser("demo", help="export the bundled all-MiniLM-L6-v2 and run text through it")
    p.add_argument("--workdir", default="attmemo-demo", help="where to write the models (default: ./attmemo-demo)")
    _add_verbosity(p)

    p = sub.add_parser("build-db", help="build the memo database of a MemoAttention model from a text corpus")
    p.add_argument("model", help="MemoAttention ONNX model (written by attmemo-export or attmemo transform)")
    p.add_argument("--corpus", required=True,
                   help="a .txt file (one text per line), a .jsonl file with a \"text\" field, or a folder of .txt files")
    p.add_argument("--out", help="database folder (default: MODEL without .onnx plus .memo/, "
                                 "which attmemo.InferenceSession finds by itself)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text; longer texts are cut (default: 512)")
    p.add_argument("--limit", type=int, help="use only the first N texts")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="hit if 1 - predicted attention distance >= this (default: 0.9)")
    p.add_argument("--dtype", choices=["unorm16"], default="unorm16",
                   help="stored probability format (default: unorm16, fastest to read)")
    _add_verbosity(p)

    args = parser.parse_args(argv)
    commands = {"transform": _transform, "bench": _bench, "demo": _demo, "build-db": _build_db}
    return _guarded(lambda: commands[args.command](args), args)


def _transform(args) -> int:
    from attmemo.transforms.model_file import transform_file
    report = transform_file(args.src, args.dst, allow_partial=args.allow_partial)
    _print_report(report, Path(args.dst))
    return 0


def _bench(args) -> int:
    from attmemo import bench
    for path in (args.baseline, args.memo):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such model file.")
    sessions = bench.open_sessions({"baseline": args.baseline, "memo": args.memo}, threads=args.threads)
    print(f"{'seq':>5} {'baseline ms':>12} {'memo ms':>9} {'ratio':>7}   (batch 1, median of {args.rounds} interleaved rounds)")
    for seq in args.seq:
        feed = bench.encoder_feed(sessions["baseline"], batch=1, seq_len=seq)
        t = bench.interleaved(sessions, feed, baseline="baseline", rounds=args.rounds,
                              progress=_progress(f"seq {seq}", args.rounds))
        print(f"\r{seq:>5} {t.median_ms['baseline']:>12.2f} {t.median_ms['memo']:>9.2f} {t.ratio['memo']:>7.3f}")
    return 0


def _demo(args) -> int:
    from attmemo import demo
    demo.run(Path(args.workdir), out=print)
    return 0


def _build_db(args) -> int:
    from attmemo.store.build import build_database, default_db_dir

    if args.max_length < 2:
        raise ValueError(f"--max-length {args.max_length} is too short; give at least 2 tokens.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} selects no text; give a positive number.")
    out = Path(args.out) if args.out else default_db_dir(args.model)
    print(f"building the memo database of {args.model} from {args.corpus} into {out} ...", flush=True)
    report = build_database(args.model, args.corpus, out=out, max_length=args.max_length, limit=args.limit,
                            threshold=args.threshold, dtype=args.dtype, progress=_build_progress())
    _print_build_report(report)
    _print_self_check(args.model, args.corpus, out, max_length=args.max_length)
    return 0


def _build_progress():
    interactive = sys.stdout.isatty()
    shown = {"record": -1, "train": -1}

    def show(p) -> None:
        label = "recording" if p.stage == "record" else "training key embeddings"
        unit = "texts" if p.stage == "record" else "layers"
        line = f"{label}: {p.done}/{p.total} {unit}, {p.per_second:.1f} {unit}/s, ETA {p.eta_seconds:.0f} s"
        tenth = 10 * p.done // p.total
        if interactive:
            print(f"\r{line}   ", end="" if p.done < p.total else "\n", flush=True)
        elif tenth > shown[p.stage]:
            shown[p.stage] = tenth
            print(line, flush=True)
    return show


def _print_build_report(report) -> None:
    seconds = report.seconds
    print(f"{report.texts} texts in {len(report.buckets)} length buckets "
          f"({', '.join(f'{b}: {n}' for b, n in sorted(report.buckets.items()))}), {len(report.heads)} layers")
    for layer, t in sorted(report.training.items()):
        print(f"layer {layer}: key embedding trained in {t.seconds:.1f} s on {t.train_pairs} pairs; "
              f"held-out pairs {t.heldout_pairs}: Spearman {t.spearman:.3f}, mean |error| {t.heldout_mae:.3f}")
    print(f"stored attention: {report.value_bytes_per_entry / 1024:.0f} KiB per text and layer "
          f"({report.value_bytes_per_entry / report.padded_fp32_bytes_per_entry:.1%} of a padded fp32 matrix, "
          f"{report.value_bytes_per_entry / report.exact_fp32_bytes_per_entry:.1%} of an unpadded fp32 one)")
    print(f"database: {report.bytes_on_disk / 2**20:.1f} MiB on disk; built in {sum(seconds.values()):.1f} s "
          f"(recording {seconds['record']:.1f} s, training and indexing {seconds['train_and_index']:.1f} s)")
    print(f"wrote {report.out}")


def _print_self_check(model: str, corpus: str, db: Path, *, max_length: int, texts: int = 3) -> None:
    """Run the first corpus texts through the model with the new database and print its counters."""
    import numpy as np
    import onnx

    from attmemo import InferenceSession
    from attmemo.store.corpus import iter_texts
    from attmemo.store.recorder import load_tokenizer

    metadata = {p.key: p.value for p in onnx.load(model, load_external_data=False).metadata_props}
    tokenizer = load_tokenizer(Path(model), metadata)
    session = InferenceSession(model, db=db)
    names = {i.name for i in session.get_inputs()}
    for text in iter_texts(corpus, limit=texts):
        feed = dict(tokenizer(text, truncation=True, max_length=max_length, return_tensors="np"))
        session.run(None, {k: v.astype(np.int64) for k, v in feed.items() if k in names})
    stats = session.memo_stats()
    hits = ", ".join(f"L{layer} {s['hits']}/{s['lookups']}" for layer, s in stats.items())
    lookups = max(1, sum(s["lookups"] for s in stats.values()))
    lookup_ms = 1e3 * sum(s["lookup_seconds"] for s in stats.values()) / lookups
    print(f"check: first corpus texts through attmemo.InferenceSession: hits {hits}; "
          f"{lookup_ms:.2f} ms per lookup")


def _progress(label: str, total: int):
    interactive = sys.stdout.isatty()

    def show(done: int) -> None:
        if interactive:
            print(f"\r{label}: {done}/{total}", end="", flush=True)
    return show


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")


def _guarded(run, args) -> int:
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return run()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
