"""Build on Ray vs in one process: all-MiniLM-L6-v2, the eval's BBC News documents.

    python benchmarks/ray_build.py --workdir /tmp/attmemo-ray-bench [--texts 200] [--workers 2] [--max-length 256]

Builds the database of the first --texts stored documents of the eval's ``diverse``
workload (attmemo.workloads, cut to --max-length tokens as attmemo eval cuts them;
model exported as the eval exports it) twice: with the default recording (one
onnxruntime session in this process, every core) and on Ray started on this machine
with --workers workers (one session of one thread each). Checks that the two
databases are equal (every file's sha256 in the manifests, and the same outputs and
hits of attmemo.InferenceSession on a few stored texts), then prints texts/s of the
recording stage (each text is recorded with its edited copy; the Ray figure includes
starting Ray and its workers) and of the whole build (training and indexing are the
same in both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--texts", type=int, default=200, help="documents in the database (default: 200)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (default: 2)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default: 256, as the eval)")
    args = parser.parse_args(argv)

    from attmemo.builder.build import build_database
    from attmemo.builder.ray_build import ray_recording
    from attmemo.evaluation import models
    from attmemo.workloads import make_workload, write_corpus

    workdir = Path(args.workdir)
    model = models(workdir)["memo"]
    corpus = write_corpus(make_workload("diverse", stored=args.texts, queries=1), workdir / f"bbc{args.texts}.jsonl")
    runs = {"local": {}, f"ray x{args.workers}": {"recording": ray_recording("local", workers=args.workers)}}
    built = {}
    for name, recording in runs.items():
        start = time.perf_counter()
        report = build_database(model, corpus, out=workdir / f"minilm.{name.split()[0]}.memo",
                                max_length=args.max_length, **recording)
        built[name] = (report, time.perf_counter() - start)
        print(f"{name}: recorded {report.texts} texts in {report.seconds['record']:.1f} s, "
              f"built in {built[name][1]:.1f} s", flush=True)
    (local, _), (ray_built, _) = built.values()
    same_files = _manifest(local.out) == _manifest(ray_built.out)
    same_answers = _same_answers(model, corpus, local.out, ray_built.out, max_length=args.max_length)
    print(f"\nequal databases: every file's sha256 {'matches' if same_files else 'DIFFERS'}; "
          f"session outputs and hits {'match' if same_answers else 'DIFFER'}")
    print(f"\n| build ({args.texts} BBC documents, {args.max_length} tokens) | recording texts/s | whole build texts/s |")
    print("|---|---|---|")
    for name, (report, seconds) in built.items():
        print(f"| {name} | {report.texts / report.seconds['record']:.2f} | {report.texts / seconds:.2f} |")
    return 0 if same_files and same_answers else 1


def _manifest(db: Path) -> dict:
    return json.loads((db / "manifest.json").read_text())


def _same_answers(model: Path, corpus: Path, *dbs: Path, max_length: int, texts: int = 4) -> bool:
    """Whether attmemo.InferenceSession over each database gives the same outputs and counters on stored texts."""
    import attmemo
    from attmemo.builder.recorder import load_tokenizer
    from attmemo.custom_ops import registry
    from attmemo.store.corpus import iter_texts

    tokenizer = load_tokenizer(model, {})
    feeds = [{k: v.astype(np.int64) for k, v in tokenizer(text, truncation=True, max_length=max_length,
                                                          return_tensors="np").items()}
             for text in iter_texts(corpus, limit=texts)]
    answers = []
    for db in dbs:
        session = attmemo.InferenceSession(str(model), db=db)
        names = {i.name for i in session.get_inputs()}
        outputs = [session.run(None, {k: v for k, v in feed.items() if k in names})[0] for feed in feeds]
        stats = {layer: (s["lookups"], s["hits"]) for layer, s in session.memo_stats().items()}
        answers.append((outputs, stats))
        registry.detach(session._memo.model_id)
    (first, first_stats), (second, second_stats) = answers
    return first_stats == second_stats and all(np.array_equal(a, b) for a, b in zip(first, second))


if __name__ == "__main__":
    sys.exit(main())
