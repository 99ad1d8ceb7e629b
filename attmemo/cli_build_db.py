"""``attmemo build-db`` and ``verify-db``: build a memo database, check one, print what it holds.

The CLI prints; the store logs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def build_db(args) -> int:
    from attmemo.cli import DEFAULT_MAX_LENGTH, check_output_folder, model_max_tokens, read_onnx
    from attmemo.builder.build import build_database, default_db_dir
    from attmemo.builder.recorder import check_memo_metadata
    from attmemo.progress import build_callback

    if args.max_length is not None and args.max_length < 2:
        raise ValueError(f"--max-length {args.max_length} is too short; give at least 2 tokens.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} selects no text; give a positive number.")
    if not 0 < args.threshold <= 1:      # also refuses nan
        raise ValueError(f"--threshold {args.threshold:g} is outside (0, 1]; 0.9 reuses only near-identical "
                         "attention, lower values reuse more.")
    if args.ray_workers is not None and args.ray is None:
        raise ValueError("--ray-workers needs --ray ADDRESS|local; without it the build runs in this process.")
    recording = _ray_recording(args) if args.ray is not None else None
    model = read_onnx(args.model)
    check_memo_metadata(Path(args.model), {p.key: p.value for p in model.metadata_props})
    limit = model_max_tokens(args.model, model)
    del model
    if args.max_length is not None and limit is not None and args.max_length > limit:
        raise ValueError(f"--max-length {args.max_length} exceeds the model's maximum of {limit} tokens; "
                         f"use at most {limit}.")
    max_length = args.max_length or min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
    out = Path(args.out) if args.out else default_db_dir(args.model)
    check_output_folder(out, "--out")
    where = f", recording on Ray ({args.ray})" if args.ray is not None else ""
    print(f"building the memo database of {args.model} from {args.corpus} into {out} "
          f"(texts cut to {max_length} tokens{where}) ...", flush=True)
    report = build_database(args.model, args.corpus, out=out, max_length=max_length, limit=args.limit,
                            threshold=args.threshold, dtype=args.dtype,
                            progress=build_callback(_bars(), texts=_texts_in(args.corpus, args.limit)),
                            **({"recording": recording} if recording else {}))
    _print_build_report(report, max_length=max_length)
    _print_self_check(args.model, args.corpus, out, max_length=max_length)
    return 0


def _ray_recording(args):
    """The Ray recording --ray asks for (Ray's own info lines only with --verbose)."""
    import logging

    from attmemo.builder.ray_build import ray_recording

    if args.ray_workers is not None and args.ray_workers < 1:
        raise ValueError(f"--ray-workers {args.ray_workers} records nothing; give at least 1.")
    if not getattr(args, "verbose", False):
        logging.getLogger("ray").setLevel(logging.WARNING)
    return ray_recording(args.ray, workers=args.ray_workers)


def _texts_in(corpus: str, limit: int | None) -> int | None:
    """How many texts the build will read (one cheap pass), None if the corpus cannot be read (the build says why)."""
    from attmemo.store.corpus import iter_texts
    try:
        return sum(1 for _ in iter_texts(corpus, limit=limit))
    except (ValueError, OSError):
        return None


def _bars():
    """tqdm on stdout. Off a terminal it still writes, every tenth of a stage, lines such as
    "recording: 20/40 texts, 3.10texts/s, ETA 00:06" that logs and scripts can read."""
    from tqdm import tqdm

    interactive = sys.stdout.isatty()
    layout = "{desc}: {n_fmt}/{total_fmt} {unit}, {rate_fmt}, ETA {remaining}"

    def bar(*, total: int, **kwargs):
        if interactive:
            return tqdm(total=total, file=sys.stdout, bar_format=layout + " {bar}", **kwargs)
        return tqdm(total=total, file=sys.stdout, bar_format=layout, mininterval=0, miniters=max(1, total // 10),
                    **kwargs)
    return bar


def _print_build_report(report, *, max_length: int) -> None:
    seconds = report.seconds
    print(f"{report.texts} texts in {len(report.buckets)} length buckets "
          f"({', '.join(f'{b}: {n}' for b, n in sorted(report.buckets.items()))}), {len(report.heads)} layers")
    for layer, t in sorted(report.training.items()):
        print(f"layer {layer}: key embedding trained in {t.seconds:.1f} s on {t.train_pairs} pairs; on "
              f"{t.heldout_pairs} held-out pairs its predicted attention distance (total variation: 0 same, "
              f"1 disjoint) ranks like the true one with Spearman {t.spearman:.3f} and is off by "
              f"{t.heldout_mae:.3f} on average")
    print(f"stored attention: {report.value_bytes_per_entry / 1024:.0f} KiB per text and layer, "
          f"{report.value_bytes_per_entry / report.padded_fp32_bytes_per_entry:.1%} of the float32 matrices padded "
          f"to {max_length} tokens and {report.value_bytes_per_entry / report.exact_fp32_bytes_per_entry:.1%} of "
          "float32 at each text's own length")
    print(f"database: {report.bytes_on_disk / 2**20:.1f} MiB on disk; built in {sum(seconds.values()):.1f} s "
          f"(recording {seconds['record']:.1f} s, training and indexing {seconds['train_and_index']:.1f} s)")
    print(f"wrote {report.out}")


def _print_self_check(model: str, corpus: str, db: Path, *, max_length: int, texts: int = 3) -> None:
    """Run the first corpus texts through the model with the new database and print its counters."""
    import numpy as np
    import onnx

    from attmemo import InferenceSession
    from attmemo.store.corpus import iter_texts
    from attmemo.builder.recorder import load_tokenizer

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


def verify_db(args) -> int:
    """Rehash every file against the manifest and load every part; one sentence on the first problem."""
    from attmemo.store import MemoDatabase

    if Path(args.db).is_file():
        raise ValueError(f"{args.db}: is a file, not a database folder; give the folder attmemo build-db wrote "
                         "(MODEL.memo/ beside the model).")
    db = MemoDatabase.open(args.db, verify_checksums=True)
    manifest = db.manifest
    rows = sum(manifest.buckets.values())
    print(f"{args.db}: ok — model {manifest.model_id}, {len(manifest.layers)} layers, {rows} stored texts, "
          f"every file's size and sha256 match the manifest")
    return 0
