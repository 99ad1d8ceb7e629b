"""``attmemo calibrate`` and ``attmemo eval``: choose where reuse pays, then show the truth per workload.

The CLI prints; attmemo.calibrate and attmemo.evaluation log.
"""

from __future__ import annotations

from pathlib import Path


def add_parsers(sub, add_verbosity) -> None:
    p = sub.add_parser("calibrate", help="choose the layers and thresholds where reuse pays within a quality budget")
    p.add_argument("model", help="MemoAttention ONNX model")
    p.add_argument("--corpus", required=True,
                   help="held-out texts (.txt, .jsonl with \"text\" and optional \"label\", or a folder of .txt)")
    p.add_argument("--db", help="database folder (default: MODEL without .onnx plus .memo/)")
    p.add_argument("--budget", default="0.99,0.97,0.5", metavar="MEAN,P1,ACC",
                   help="minimum mean and 1st-percentile cosine of the sentence embedding to exact, and maximum "
                        "accuracy loss in points when labels exist (default: 0.99,0.97,0.5)")
    p.add_argument("--max-length", type=int, help="tokens per text (default: the database's, from build-db)")
    p.add_argument("--limit", type=int, default=200, help="use at most N held-out texts (default: 200)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per text (default: 5)")
    add_verbosity(p)

    p = sub.add_parser("eval", help="latency, reuse and fidelity on a workload, side by side with the alternatives")
    p.add_argument("--workload", required=True, choices=["diverse", "edited", "revised", "templated", "short"])
    p.add_argument("--max-length", type=int, default=256, help="tokens per text (default: 256)")
    p.add_argument("--json", help="write the result here (a PNG is written beside it)")
    p.add_argument("--workdir", default="attmemo-eval", help="models and databases (default: ./attmemo-eval)")
    p.add_argument("--stored", type=int, help="texts in the database (default: 64; templated: 256)")
    p.add_argument("--queries", type=int,
                   help="queries; half calibrate, half are measured (default: 48; templated: 96)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per timed query (default: 7)")
    p.add_argument("--dtype", choices=["float32", "float16", "unorm16"], default="float32",
                   help="stored attention format: float32 (default) feeds document-key hits in place with no "
                        "conversion; float16 and unorm16 take half the disk")
    add_verbosity(p)


def calibrate_main(args) -> int:
    from attmemo.calibrate import calibrate
    from attmemo.cli import model_max_tokens, read_onnx
    from attmemo.store import default_db_dir
    from attmemo.store.corpus import iter_records
    from attmemo.builder.recorder import check_memo_metadata

    budget = _budget(args.budget)
    if args.limit < 1 or args.rounds < 1 or (args.max_length is not None and args.max_length < 2):
        raise ValueError("--limit and --rounds must be at least 1 and --max-length at least 2.")
    model = read_onnx(args.model)
    check_memo_metadata(Path(args.model), {p.key: p.value for p in model.metadata_props})
    limit = model_max_tokens(args.model, model)
    del model
    if limit is not None and args.max_length is not None and args.max_length > limit:
        raise ValueError(f"--max-length {args.max_length} exceeds the model's maximum of {limit} tokens; "
                         f"use at most {limit}.")
    records = list(iter_records(args.corpus, limit=args.limit))
    texts = [text for text, _ in records]
    labels = [label for _, label in records]
    labels = labels if labels and all(label is not None for label in labels) else None
    db = Path(args.db) if args.db else default_db_dir(args.model)
    print(f"calibrating {db} on {len(texts)} held-out texts"
          f"{' with labels' if labels else ''} (budget: cosine mean >= {budget.cosine_mean}, "
          f"p1 >= {budget.cosine_p1}{f', accuracy loss <= {100 * budget.accuracy_loss:g} pt' if labels else ''})",
          flush=True)
    result = calibrate(args.model, texts, labels, db=db, budget=budget, max_length=args.max_length,
                       rounds=args.rounds, progress=lambda line: print(f"  {line}", flush=True))
    chosen = result.chosen
    if chosen.serves:
        print(f"serving {chosen.describe()}: memo rate {chosen.memo_rate:.2f}, latency {chosen.latency_ratio:.3f} "
              f"of off, cosine mean {chosen.cosine['mean']:.4f} p1 {chosen.cosine['p1']:.4f}")
    else:
        print("nothing pays within the budget: memoization is switched off for this database")
    print(f"wrote the choice into {db / 'manifest.json'} ({result.seconds:.0f} s)")
    return 0


def _budget(text: str):
    from attmemo.calibrate import Budget
    try:
        mean, p1, points = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--budget {text!r} is not three numbers MEAN,P1,ACC such as 0.99,0.97,0.5.") from None
    if not (0 < mean <= 1 and 0 < p1 <= 1 and points >= 0):
        raise ValueError(f"--budget {text!r}: cosines must be in (0, 1] and the accuracy loss >= 0 points.")
    return Budget(cosine_mean=mean, cosine_p1=p1, accuracy_loss=points / 100)


def eval_main(args) -> int:
    from attmemo import evaluation
    from attmemo.evaluation import EvalSettings

    if (args.stored is not None and args.stored < 2) or (args.queries is not None and args.queries < 4) \
            or args.rounds < 1:
        raise ValueError("--stored must be at least 2, --queries at least 4 and --rounds at least 1.")
    if not 2 <= args.max_length <= evaluation.MAX_LENGTH:
        raise ValueError(f"--max-length {args.max_length} is outside 2..{evaluation.MAX_LENGTH}, the range of the "
                         "bundled all-MiniLM-L6-v2; give a length in it.")
    settings = EvalSettings(stored=args.stored, queries=args.queries, rounds=args.rounds, dtype=args.dtype)
    result = evaluation.evaluate(args.workload, max_length=args.max_length, workdir=Path(args.workdir),
                                 settings=settings, say=lambda line: print(line, flush=True))
    for line in evaluation.table(result):
        print(line)
    if args.json:
        out = Path(args.json)
        evaluation.write_json(result, out)
        png = evaluation.write_png(result, out.with_suffix(".png"))
        print(f"wrote {out} and {png}")
    return 0
