"""Command line: ``attmemo-export`` and ``attmemo {transform,bench,demo,build-db,verify-db,calibrate,eval}``.

The CLI prints; library code logs. Errors a user can cause end in one sentence
on stderr (``error: ...``) and exit status 2, never a traceback: arguments are
checked before any work starts, and the library raises ValueError /
FileNotFoundError with a one-sentence message for what only it can see.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, PermissionError)
# Opsets attmemo-export accepts: measured end to end on the tiny test BERT (torch 2.13, optimum 2.1).
# The graph pass itself keeps any opset from 13 on (tests/test_foreign_models.py); the export stays at
# 18-23 because 24 and above are refused by torch and a wider range is a behaviour change of its own.
EXPORT_OPSETS = range(18, 24)
# Texts longer than this are cut when the model states no limit of its own.
DEFAULT_MAX_LENGTH = 512


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help.\n")


def export_main(argv: list[str] | None = None) -> int:
    parser = _Parser(
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

    if Path(args.model_dir).is_file():
        raise ValueError(f"{args.model_dir}: is a file, not a folder; pass the Hugging Face model folder "
                         "(the one containing config.json).")
    if args.opset not in EXPORT_OPSETS:
        raise ValueError(f"--opset {args.opset} is not supported; use {EXPORT_OPSETS.start} to "
                         f"{EXPORT_OPSETS.stop - 1} (default 18).")
    check_output_file(args.out)
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
    parser = _Parser(prog="attmemo", description="Attention memoization inside ONNX Runtime.")
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

    p = sub.add_parser("demo", help="export the bundled all-MiniLM-L6-v2, run text through it, then attmemo eval "
                                    "on the edited and diverse workloads")
    p.add_argument("--workdir", default="attmemo-demo", help="where to write the models (default: ./attmemo-demo)")
    p.add_argument("--no-eval", action="store_true", help="stop after the export (no databases, a few seconds)")
    p.add_argument("--quick", action="store_true",
                   help="the same steps on fewer texts (24 stored, 16 queries per workload): about a third of "
                        "the time, too few texts to trust its timings")
    _add_verbosity(p)

    p = sub.add_parser("build-db", help="build the memo database of a MemoAttention model from a text corpus")
    p.add_argument("model", help="MemoAttention ONNX model (written by attmemo-export or attmemo transform)")
    p.add_argument("--corpus", required=True,
                   help="a .txt file (one text per line), a .jsonl file with a \"text\" field, or a folder of .txt files")
    p.add_argument("--out", help="database folder (default: MODEL without .onnx plus .memo/, "
                                 "which attmemo.InferenceSession finds by itself)")
    p.add_argument("--max-length", type=int,
                   help=f"tokens per text; longer texts are cut (default: the model's maximum, "
                        f"at most {DEFAULT_MAX_LENGTH})")
    p.add_argument("--limit", type=int, help="use only the first N texts")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="hit if 1 - predicted attention distance >= this (default: 0.9)")
    p.add_argument("--dtype", choices=["unorm16", "float16", "float32", "log8", "log4"], default="unorm16",
                   help="stored probability format: unorm16 (default, 2 bytes) is fastest for the per-layer "
                        "lookups; float32 (4 bytes), then float16 (2 bytes), for the document key of "
                        "attmemo.InferenceSession; log8 (1 byte) and log4 (half a byte) when the stored "
                        "attention must be small, at some hit speed")
    p.add_argument("--ray", metavar="ADDRESS|local",
                   help="record the corpus on a Ray cluster (HOST:PORT of its head, or auto) or on Ray started "
                        "on this machine (local), one onnxruntime session per worker; the same database as "
                        "without it (needs pip install attmemo[ray])")
    p.add_argument("--ray-workers", type=int, help="Ray workers to record with (default: one per CPU of the cluster)")
    _add_verbosity(p)

    p = sub.add_parser("verify-db", help="check every file of a memo database, value stores included")
    p.add_argument("db", help="database folder (written by attmemo build-db)")
    _add_verbosity(p)

    from attmemo import cli_eval
    cli_eval.add_parsers(sub, _add_verbosity)

    args = parser.parse_args(argv)
    from attmemo.cli_build_db import build_db, verify_db
    commands = {"transform": _transform, "bench": _bench, "demo": _demo, "build-db": build_db,
                "verify-db": verify_db, "calibrate": cli_eval.calibrate_main, "eval": cli_eval.eval_main}
    return _guarded(lambda: commands[args.command](args), args)


def _transform(args) -> int:
    import onnx

    from attmemo.custom_ops.registry import MODEL_ID_KEY
    from attmemo.transforms.model_file import transform_file

    model = read_onnx(args.src)
    if any(p.key == MODEL_ID_KEY for p in model.metadata_props):
        raise ValueError(f"{args.src}: is already a MemoAttention model ({MODEL_ID_KEY} is set); "
                         "give the original export to rewrite, or use this one as it is.")
    del model
    check_output_file(args.dst)
    try:
        report = transform_file(args.src, args.dst, allow_partial=args.allow_partial)
    except onnx.checker.ValidationError as error:
        Path(args.dst).unlink(missing_ok=True)    # written before the check; never leave an invalid model
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"{args.src}: the rewritten model fails onnx.checker ({reason}); this is a bug in "
                         "attmemo: please report the model (an eager export by attmemo-export avoids it).") from error
    _print_report(report, Path(args.dst))
    return 0


def _bench(args) -> int:
    from attmemo import bench

    for option, value in (("--seq", min(args.seq)), ("--rounds", args.rounds)):
        if value < 1:
            raise ValueError(f"{option} {value} is not a positive number; give at least 1.")
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads} is negative; give a thread count, or 0 for onnxruntime's choice.")
    paths = {"baseline": args.baseline, "memo": args.memo}
    models = {name: read_onnx(path) for name, path in paths.items()}
    for name, model in models.items():
        bench.check_encoder(paths[name], model, memo=name == "memo")
    limit = min((n for n in (model_max_tokens(paths[name], model) for name, model in models.items()) if n),
                default=None)
    too_long = [seq for seq in args.seq if limit is not None and seq > limit]
    if too_long:
        raise ValueError(f"--seq {too_long[0]} exceeds the model's maximum of {limit} tokens; use at most {limit}.")
    vocab = min((n for n in map(bench.vocab_size, models.values()) if n), default=None)
    del models
    sessions = bench.open_sessions(paths, threads=args.threads)
    print(f"{'seq':>5} {'baseline ms':>12} {'memo ms':>9} {'ratio':>7}   (batch 1, median of {args.rounds} interleaved rounds)")
    for seq in args.seq:
        feed = bench.encoder_feed(sessions["baseline"], batch=1, seq_len=seq, vocab_size=vocab)
        try:
            t = bench.interleaved(sessions, feed, baseline="baseline", rounds=args.rounds,
                                  progress=_progress(f"seq {seq}", args.rounds))
        except bench.ORT_ERRORS as error:
            raise ValueError(f"onnxruntime failed on a sequence of {seq} tokens ({bench.ort_reason(error)}); "
                             "check --seq and the models.") from error
        print(f"\r{seq:>5} {t.median_ms['baseline']:>12.2f} {t.median_ms['memo']:>9.2f} {t.ratio['memo']:>7.3f}")
    return 0


def _demo(args) -> int:
    from attmemo import demo
    from attmemo.cli_eval import bars

    check_output_folder(args.workdir, "--workdir")
    demo.run(Path(args.workdir), out=lambda line: print(line, flush=True),
             workloads=() if args.no_eval else demo.WORKLOADS, quick=args.quick, bars=bars())
    return 0


def read_onnx(path: str | os.PathLike):
    """The ONNX model at ``path`` without its external data (cheap); one-sentence errors if it is not one."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of an .onnx model.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: not a readable ONNX model ({type(error).__name__}); "
                         "give an .onnx file written by an ONNX exporter.") from error
    if not model.HasField("graph") or not model.graph.node:
        raise ValueError(f"{path}: not a readable ONNX model (it has no graph); "
                         "give an .onnx file written by an ONNX exporter.")
    return model


def model_max_tokens(path: str | os.PathLike, model) -> int | None:
    """The longest sequence ``model`` (read from ``path``) takes: its tokenizer's ``model_max_length``,
    else the row count of its absolute position embedding table; None if neither is known."""
    from attmemo.builder.recorder import load_tokenizer, token_limit

    metadata = {p.key: p.value for p in model.metadata_props}
    try:
        limit = token_limit(load_tokenizer(Path(path), metadata))
    except ValueError:
        limit = None
    if limit is not None:
        return limit
    from attmemo.bench import position_table_size
    return position_table_size(model)


def check_output_file(path: str | os.PathLike) -> None:
    """Raise ValueError (one sentence) if a file cannot be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the path of the .onnx file to write.")
    _check_parent_folders(path)


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Raise ValueError (one sentence) if ``path`` cannot be (or become) a folder to write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; give a folder (it is created if missing).")
    _check_parent_folders(path)


def _check_parent_folders(path: Path) -> None:
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot be created because {existing} is a file, not a folder; "
                         "choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot be created because {existing} is not writable; "
                              "choose another path.")


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
