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

    p = sub.add_parser("verify-db", help="check every file of a memo database, value stores included")
    p.add_argument("db", help="database folder (written by attmemo build-db)")
    _add_verbosity(p)

    args = parser.parse_args(argv)
    from attmemo.cli_build_db import build_db, verify_db
    commands = {"transform": _transform, "bench": _bench, "demo": _demo, "build-db": build_db,
                "verify-db": verify_db}
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
