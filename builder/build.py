"""build_database: corpus -> database folder (what ``attmemo build-db`` runs).

1. tokenize every text once to learn its length (nothing else is kept);
2. run the recording model (batch 1, unpadded) per text, here or on Ray workers
   (records.py, ray_build.py), and append, in corpus order, per layer, the
   probabilities to the bucket's value file and the pooled hidden states to a
   scratch feature file (every few texts also an edited copy, for near-duplicate
   training pairs, see augment.py); then the token tables of the document key and
   its shift index (store/shift_index.py, streamed from the tables);
3. per layer: pair targets from the stored values, train the key embedding
   (torch), index every row's key (Annoy) (train.py);
4. write the manifest, then rename the folder into place (a failed build
   leaves any previous database untouched).

Interrupted builds. Everything is written into ``.<out>.building-<pid>-XXXX``
beside ``out``; the finished folder replaces ``out`` by two renames (``out`` to
``.<out>.old-<pid>``, the new folder to ``out``), so a build killed at any
moment, even by SIGKILL, leaves the previous database complete: at ``out``, or,
killed between the two renames, at ``.<out>.old-<pid>``. The next build of
``out`` restarts cleanly: it first moves such an ``.old-`` folder back to
``out`` if ``out`` is missing, and removes every other leftover of ``out``'s
builds. Whose leftovers are they? The pid in each name says: only folders whose
process is gone are touched, never those of a build still running. Killed builds
are restarted from the beginning, not resumed.

Memory stays flat in the corpus size except for a few bytes per text: every
text's records are appended to files as they are produced. Resident memory is
about one text's recording outputs (layers * (n*D + H*n*n) * 4 bytes: 76 MB
for MiniLM at n = 512), plus a per-text length/bucket/row table (~20 bytes per
text), plus while training one layer the features of at most
``max_train_texts`` texts (F * 4 bytes each: 3 KB for MiniLM, 60 MB at the
default 20,000), plus while indexing one bucket Annoy's in-memory build
(~(K + 1) * 4 bytes per key and its trees: ~0.5 KB per text).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from attmemo.custom_ops.registry import MODEL_ID_KEY
from attmemo.store import keys, manifest as manifest_file, shift_index, values
from attmemo.store.documents import stored_places
from attmemo.store.corpus import iter_texts
from attmemo.store.database import default_db_dir
from attmemo.store.layout import lengths_file, shift_dir, tokens_file, values_file
from attmemo.store.manifest import KeySpec, Manifest, MemoDatabaseError

from .recorder import load_tokenizer, read_memo_metadata
from .records import Recording, RecordSettings, TextRecord, TextToRecord, record_locally
from .train import Corpus, KeyTraining, TrainingPlan, train_and_index

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (8, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# F = 8 * 384 / 4 = 768 features for MiniLM: w1 is 768 x 64 floats (192 KB, stays in cache);
# 16 segments x 192 (3 MB of w1) cost 150-700 us per key, more than a hit saves at S=128.
DEFAULT_KEY = KeySpec(segments=keys.POOL_SEGMENTS, hidden_pool=keys.POOL_HIDDEN, width=64, dim=64)


@dataclasses.dataclass
class BuildProgress:
    stage: str          # "record" (the long one), then "train" per layer
    done: int
    total: int
    seconds: float      # since the stage started

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        return (self.total - self.done) / self.per_second if self.per_second > 0 else float("nan")


@dataclasses.dataclass
class BuildReport:
    out: Path
    model_id: str
    texts: int
    buckets: dict[int, int]       # bucket length -> rows
    heads: dict[int, int]         # layer -> heads
    seconds: dict[str, float]     # stage -> seconds
    training: dict[int, object]   # layer -> models.key_embedding.TrainReport
    bytes_on_disk: int
    value_bytes_per_entry: float  # one layer, mean over rows, as stored
    padded_fp32_bytes_per_entry: int   # one layer, [H, max_length, max_length] float32
    exact_fp32_bytes_per_entry: float  # one layer, mean [H, n, n] float32


def build_database(model_path: str | Path, corpus: str | Path, *, out: str | Path | None = None,
                   max_length: int = 512, limit: int | None = None, threshold: float = 0.9,
                   dtype: str = "unorm16", buckets: tuple[int, ...] = DEFAULT_BUCKETS,
                   key_spec: KeySpec = DEFAULT_KEY, training: KeyTraining = KeyTraining(),
                   progress: Callable[[BuildProgress], None] | None = None,
                   recording: Recording = record_locally) -> BuildReport:
    """Build the memo database of the MemoAttention model ``model_path`` from ``corpus``.

    ``recording`` runs the model over the texts (records.py): by default in this
    process; ``ray_build.ray_recording(...)`` spreads it over a Ray cluster, with the
    same database as result.

    Writes ``out`` (default: ``default_db_dir(model_path)``), replacing any
    database there only once the new one is complete. Raises MemoDatabaseError (a
    ValueError) or FileNotFoundError with a one-sentence message.
    """
    model_path, out = Path(model_path), Path(out) if out is not None else default_db_dir(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model file; give the MemoAttention .onnx model.")
    values.codec(dtype)
    if not 0 < threshold <= 1:
        raise MemoDatabaseError(f"threshold {threshold} is outside (0, 1]; 0.9 reuses only near-identical attention.")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_up_interrupted_builds(out)
    if out.exists() and not (out / manifest_file.FILENAME).is_file():
        raise MemoDatabaseError(f"{out}: exists and is not an attmemo database; choose another --out or remove it.")
    buckets = tuple(b for b in sorted(buckets) if b < max_length) + (max_length,)
    # The pid is part of the name from the moment the folder exists: a later build can tell
    # whether its builder still runs even if this one is killed right after mkdtemp.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    try:
        db, scratch = work / "db", work / "scratch"
        db.mkdir(), scratch.mkdir()
        report = _build(model_path, Path(corpus), db, scratch, out=out, max_length=max_length, limit=limit,
                        threshold=threshold, dtype=dtype, buckets=buckets, key_spec=key_spec, training=training,
                        progress=progress, recording=recording)
        _replace_dir(db, out)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(model_path, corpus, db: Path, scratch: Path, *, out, max_length, limit, threshold, dtype, buckets,
           key_spec, training, progress, recording) -> BuildReport:
    seconds = {}
    start = time.perf_counter()
    metadata = read_memo_metadata(model_path)
    tokenizer = load_tokenizer(model_path, metadata)

    def token_ids():
        for text in iter_texts(corpus, limit=limit):
            yield np.asarray(tokenizer(text, truncation=True, max_length=max_length)["input_ids"], np.int64)

    texts = _plan_rows(np.array([len(ids) for ids in token_ids()], np.int32), buckets, db)
    if len(texts.lengths) == 0:
        raise MemoDatabaseError(f"{corpus}: the corpus has no non-empty text.")
    plan = TrainingPlan(len(texts.lengths), training)
    seconds["tokenize"] = time.perf_counter() - start

    start = time.perf_counter()
    augmented = set(plan.augmented.tolist())
    settings = RecordSettings(dtype=dtype, seed=training.seed, special_ids=frozenset(tokenizer.all_special_ids))
    to_record = (TextToRecord(i, ids, i in augmented) for i, ids in enumerate(token_ids()))
    heads, hidden_size, aug_targets = _write_records(
        recording(model_path, scratch, to_record, settings), db, scratch, texts=texts, augmented=len(augmented),
        dtype=dtype, key_spec=key_spec, progress=progress)
    seconds["record"] = time.perf_counter() - start
    model_id = metadata[MODEL_ID_KEY]

    start = time.perf_counter()
    reports = {}
    for done, layer in enumerate(sorted(heads)):
        reports[layer] = train_and_index(
            layer, heads[layer], db=db, features_path=scratch / f"features.L{layer}",
            aug_features_path=scratch / f"augmented.L{layer}", aug_targets=aug_targets, corpus=texts, plan=plan,
            dtype=dtype, key_spec=key_spec, feature_size=keys.feature_size(key_spec, hidden_size), settings=training)
        if progress:
            progress(BuildProgress("train", done + 1, len(heads), time.perf_counter() - start))
    seconds["train_and_index"] = time.perf_counter() - start

    start = time.perf_counter()
    manifest = Manifest(model_id=model_id, layers=heads, buckets=texts.counts, dtype=dtype,
                        threshold=threshold, key=key_spec,
                        corpus={"path": str(Path(corpus).resolve()), "texts": len(texts.lengths),
                                "max_length": max_length, "limit": limit, "augmented": len(plan.augmented)},
                        files={})
    manifest.files = {str(p.relative_to(db)): manifest_file.file_entry(p) for p in sorted(db.rglob("*")) if p.is_file()}
    manifest_file.write(manifest, db)
    seconds["checksums"] = time.perf_counter() - start
    return _report(out, manifest, texts, seconds, reports, db, max_length)


def _plan_rows(lengths: np.ndarray, buckets: tuple[int, ...], db: Path) -> Corpus:
    """Assign each text its bucket and row; write the per-bucket length tables."""
    bucket_of = np.array([buckets[bisect.bisect_left(buckets, n)] for n in lengths], np.int32)
    row_of = np.zeros(len(lengths), np.int64)
    counts = {}
    for b in buckets:
        members = np.flatnonzero(bucket_of == b)
        row_of[members] = np.arange(len(members))
        if len(members):
            counts[b] = len(members)
            np.save(_mkparent(db / lengths_file(b)), lengths[members].astype(np.int32), allow_pickle=False)
    return Corpus(lengths=lengths, bucket_of=bucket_of, row_of=row_of, counts=counts)


def _write_records(records: Iterable[TextRecord], db: Path, scratch: Path, *, texts: Corpus, augmented: int, dtype,
                   key_spec, progress) -> tuple[dict[int, int], int, np.ndarray]:
    """Append every text's record (in corpus order) to the value, key feature and token files.

    Returns ({layer: heads}, hidden size, float32[augmented, layers] TV targets).
    """
    codec = values.codec(dtype)
    files: dict[object, object] = {}
    # The document key (documents.py): every stored text's ids, 4 bytes per token in memory.
    tokens = {b: np.zeros((count, b), np.int32) for b, count in texts.counts.items()}
    heads, hidden_size, aug_targets = {}, 0, []
    total = len(texts.lengths) + augmented
    start, done = time.perf_counter(), 0
    try:
        for i, record in enumerate(records):
            if record.index != i:
                raise MemoDatabaseError(f"the recording returned text {record.index} where text {i} was due; "
                                        "records must come in corpus order.")
            n = len(record.ids)
            if n != texts.lengths[i]:
                raise MemoDatabaseError("the corpus changed while building (a text's length differs between passes).")
            b = int(texts.bucket_of[i])
            tokens[b][texts.row_of[i], :n] = record.ids
            for layer, encoded in record.probs.items():
                heads[layer] = encoded.shape[0]
                block = encoded
                if n < b:
                    block = np.zeros((encoded.shape[0], b, codec.columns(b)), codec.storage)
                    block[:, :n, :codec.columns(n)] = encoded
                _open(files, (layer, b), db / values_file(layer, b)).write(memoryview(np.ascontiguousarray(block)))
                hidden_size = record.hidden[layer].shape[1]
                _open(files, layer, scratch / f"features.L{layer}").write(
                    keys.pool(record.hidden[layer], key_spec).tobytes())
            done += 1
            if record.edited_hidden is not None:
                aug_targets.append(record.edit_distances)
                for layer, hidden_nD in record.edited_hidden.items():
                    _open(files, ("aug", layer), scratch / f"augmented.L{layer}").write(
                        keys.pool(hidden_nD, key_spec).tobytes())
                done += 1
            if progress:
                progress(BuildProgress("record", done, total, time.perf_counter() - start))
    finally:
        for f in files.values():
            f.close()
    for b, table in tokens.items():
        np.save(_mkparent(db / tokens_file(b)), table, allow_pickle=False)
    _write_shift_index(db, tokens, texts)
    return heads, hidden_size, np.array(aug_targets, np.float32).reshape(len(aug_targets), len(heads))


def _write_shift_index(db: Path, tokens: dict[int, np.ndarray], texts: Corpus) -> None:
    """The document key's shift index (store/shift_index.py) over every stored text, numbered as the database loads it."""
    lengths = {b: texts.lengths[texts.bucket_of == b] for b in tokens}
    shift_index.build((tokens[b][row, :lengths[b][row]] for b, row in stored_places(lengths)), db / shift_dir())


def _open(files: dict, key, path: Path):
    if key not in files:
        files[key] = open(_mkparent(path), "wb")
    return files[key]


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _report(out, manifest, texts: Corpus, seconds, training, db, max_length) -> BuildReport:
    heads = next(iter(manifest.layers.values()))
    stored = np.array([values.entry_bytes(heads, int(b), manifest.dtype) for b in texts.bucket_of])
    return BuildReport(out=out, model_id=manifest.model_id, texts=len(texts.lengths), buckets=manifest.buckets,
                       heads=manifest.layers, seconds=seconds, training=training,
                       bytes_on_disk=sum(p.stat().st_size for p in db.rglob("*") if p.is_file()),
                       value_bytes_per_entry=float(stored.mean()),
                       padded_fp32_bytes_per_entry=heads * max_length * max_length * 4,
                       exact_fp32_bytes_per_entry=float((heads * texts.lengths.astype(np.float64) ** 2 * 4).mean()))


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and removed after.

    Between the two renames ``out`` does not exist; a process killed there leaves the
    previous database in ``.<out>.old-<pid>``, which the next build moves back.
    """
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)


def _clean_up_interrupted_builds(out: Path) -> None:
    """Undo what killed builds of ``out`` left beside it (see the module docstring)."""
    leftovers = _leftovers_of_dead_builds(out)
    previous = [p for p in leftovers
                if p.name.startswith(f".{out.name}.old-") and (p / manifest_file.FILENAME).is_file()]
    if not out.exists() and previous:
        # Killed between the two renames of _replace_dir: this is the database out held.
        restored = max(previous, key=lambda p: p.stat().st_mtime)
        os.replace(restored, out)
        log.warning("%s: restored the previous database from %s, left by an interrupted build", out, restored.name)
    for folder in leftovers:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by an interrupted build", folder)


def _leftovers_of_dead_builds(out: Path) -> list[Path]:
    """``.<out>.building-<pid>-*`` and ``.<out>.old-<pid>`` folders whose process is gone."""
    name = re.compile(rf"\.{re.escape(out.name)}\.(?:building-(\d+)-.*|old-(\d+))")
    found = []
    for folder in out.parent.iterdir():
        match = name.fullmatch(folder.name)
        if match and folder.is_dir() and not _process_alive(int(match[1] or match[2])):
            found.append(folder)
    return found


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine); a pid reused by another process counts as alive."""
    if pid <= 0:    # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # it exists, owned by another user
        return True
    return True
