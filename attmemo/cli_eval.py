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

    p = sub.add_parser("eval", help="latency, reuse and fidelity on a workload, side by side with the alternatives",
                       description="Either a built-in workload (--workload) on the bundled all-MiniLM-L6-v2, or "
                                   "your own MemoAttention model and texts (--model, --corpus, --queries).")
    p.add_argument("--workload", choices=["diverse", "edited", "revised", "templated", "short"],
                   help="a built-in workload on the bundled all-MiniLM-L6-v2")
    p.add_argument("--model", help="your MemoAttention ONNX model (attmemo-export or attmemo transform; its "
                                   "tokenizer beside it as MODEL.tokenizer/)")
    p.add_argument("--corpus", help="with --model: the texts to store (.txt one per line, .jsonl with \"text\", "
                                    "or a folder of .txt)")
    p.add_argument("--queries", help="with --model: the query texts, same formats (a .jsonl may carry \"label\"); "
                                     "with --workload: how many queries (default: 48; templated: 96); "
                                     "half calibrate, half are measured")
    p.add_argument("--max-length", type=int, help="tokens per text (default: 256 for --workload, the model's "
                                                  "maximum up to 512 for --model)")
    p.add_argument("--json", help="write the result here (a PNG is written beside it)")
    p.add_argument("--workdir", default="attmemo-eval", help="models and databases (default: ./attmemo-eval)")
    p.add_argument("--stored", type=int, help="with --workload: texts in the database (default: 64; templated: 256)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per timed query (default: 7)")
    p.add_argument("--dtype", choices=["float32", "float16", "unorm16", "log8", "log4"], default="float32",
                   help="stored attention format: float32 (default) feeds document-key hits in place with no "
                        "conversion; float16 and unorm16 take half the disk, log8 a quarter, log4 an eighth")
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
    from attmemo.verdict import budget_text
    print(f"calibrating {db} on {len(texts)} held-out texts{' with labels' if labels else ''}; budget: "
          f"{budget_text(budget, labels=labels is not None)} (cosine of the sentence embedding to the exact "
          "model's; 1 = identical)", flush=True)
    result = calibrate(args.model, texts, labels, db=db, budget=budget, max_length=args.max_length,
                       rounds=args.rounds, progress=lambda line: print(f"  {line}", flush=True))
    chosen = result.chosen
    if chosen.serves:
        print(f"serving {chosen.describe()}")
    else:
        print("nothing pays within the budget: memoization is switched off for this database")
    print(f"wrote the choice into {db / 'manifest.json'} ({result.seconds:.0f} s)")
    print(f"verdict: {calibration_verdict(result, budget, labels=labels is not None)}")
    return 0


def calibration_verdict(result, budget, *, labels: bool) -> str:
    """The verdict of ``attmemo calibrate`` (attmemo.verdict) from its Calibration."""
    from attmemo.calibrate import MIN_GAIN
    from attmemo.verdict import Candidate, budget_text, off_reason, verdict

    chosen = result.chosen
    timed = [Candidate(t.describe(), t.latency_ratio, t.memo_rate) for t in result.trials]
    return verdict(subject=f"these {result.texts} held-out texts", serving=chosen.serves,
                   latency_ratio=chosen.latency_ratio if chosen.serves else None, memo_rate=chosen.memo_rate,
                   cosine_mean=chosen.cosine["mean"], cosine_p1=chosen.cosine["p1"], against="memoization off",
                   off_reason=off_reason(timed, min_gain=MIN_GAIN, budget_text=budget_text(budget, labels=labels)))


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

    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds} is not a positive number; give at least 1.")
    source, model, max_length, queries = _eval_source(args)
    settings = EvalSettings(stored=args.stored, queries=queries, rounds=args.rounds, dtype=args.dtype)
    result = evaluation.evaluate(source, max_length=max_length, workdir=Path(args.workdir), settings=settings,
                                 model=model, say=lambda line: print(line, flush=True), bars=bars())
    for line in evaluation.table(result):
        print(line)
    if args.json:
        out = Path(args.json)
        evaluation.write_json(result, out)
        png = evaluation.write_png(result, out.with_suffix(".png"))
        print(f"wrote {out} and {png}")
    return 0


MODES = ("give either --workload NAME (a built-in workload on the bundled model) or --model MODEL.onnx "
         "--corpus STORED --queries QUERIES (your own model and texts), not both")


def _eval_source(args):
    """(workload name or Workload, model path or None, max length, query count or None), checked."""
    from attmemo import evaluation

    if args.workload is not None:
        if args.model is not None or args.corpus is not None:
            raise ValueError(f"{MODES}.")
        count = _count(args.queries)
        if (args.stored is not None and args.stored < 2) or (count is not None and count < 4):
            raise ValueError("--stored must be at least 2 and --queries at least 4.")
        max_length = 256 if args.max_length is None else args.max_length
        if not 2 <= max_length <= evaluation.MAX_LENGTH:
            raise ValueError(f"--max-length {max_length} is outside 2..{evaluation.MAX_LENGTH}, the range of the "
                             "bundled all-MiniLM-L6-v2; give a length in it.")
        return args.workload, None, max_length, count
    if args.model is None:
        raise ValueError(f"{MODES}.")
    if args.corpus is None or args.queries is None or args.stored is not None:
        raise ValueError("--model needs --corpus STORED and --queries QUERIES (files of texts); --stored is for "
                         "--workload only.")
    model, max_length = _checked_model(args.model, args.max_length)
    workload = evaluation.user_workload(args.corpus, args.queries)
    return workload, model, max_length, None


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--queries {text!r}: with --workload it is how many queries, a number; a file of "
                         "queries goes with --model MODEL.onnx --corpus STORED.") from None


def _checked_model(path: str, max_length: int | None) -> tuple[Path, int]:
    """The model path and the tokens per text to use; one sentence if either is wrong."""
    from attmemo.cli import DEFAULT_MAX_LENGTH, model_max_tokens, read_onnx
    from attmemo.builder.recorder import check_memo_metadata, load_tokenizer

    model = read_onnx(path)
    metadata = {p.key: p.value for p in model.metadata_props}
    check_memo_metadata(Path(path), metadata)
    load_tokenizer(Path(path), metadata)   # one sentence now rather than after the database is built
    limit = model_max_tokens(path, model)
    if max_length is not None and not 2 <= max_length <= (limit or max_length):
        raise ValueError(f"--max-length {max_length} is outside 2..{limit}, the model's range; give a length in it.")
    return Path(path), max_length or min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)


def bars():
    """Progress bars for the library's long steps (attmemo.progress): tqdm on stderr, only on a terminal."""
    import functools

    from tqdm import tqdm
    return functools.partial(tqdm, disable=None, dynamic_ncols=True)
