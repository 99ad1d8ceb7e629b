"""MemoDatabase: the run-time side of a database folder (implements custom_ops.registry.Memo).

Per layer and per sequence of a batch: key (keys.py) -> nearest stored key of
the same length bucket (index.py) -> hit policy (policy.py) -> stored
probabilities re-expanded to the query's shape (values.py); counters in
stats.py. B batch, S padded sequence length, D hidden size, H heads, n a
sequence's real token count.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from . import admitted_folder, documents as documents_file, keys, manifest as manifest_file, serving, shift_index, values
from .document_executor import DocumentExecutor
from .documents import ADMITTED_BUCKET, DocumentIndex
from .index import KeyIndex
from .layout import index_file, layer_dir, lengths_file, shift_dir, tokens_file, values_file
from .manifest import Manifest, MemoDatabaseError
from .policy import HitPolicy
from .stats import MemoStats
from .values import ValueFile

log = logging.getLogger(__name__)


# What a lookup returns for P when nothing hit: tiny, so no large tensor crosses the bridge.
NO_PROBS = np.zeros((1, 1, 1, 1), np.uint16)


def default_db_dir(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.memo/`` (where attmemo.InferenceSession looks by default)."""
    model_path = Path(model_path)
    stem = model_path.with_suffix("") if model_path.suffix == ".onnx" else model_path
    return stem.parent / (stem.name + ".memo")


@dataclasses.dataclass
class _Bucket:
    index: KeyIndex
    values: ValueFile
    lengths: np.ndarray   # int32[count] true token count of each row


@dataclasses.dataclass
class _Layer:
    heads: int
    key: keys.KeyEmbedding
    buckets: dict[int, _Bucket]

    @property
    def features(self) -> int:
        return self.key.w1.shape[0]


class MemoDatabase:
    """A loaded database folder. Thread-safe for lookups (everything is read-only but the stats)."""

    def __init__(self, folder: Path, manifest: Manifest, layers: dict[int, _Layer],
                 documents: DocumentIndex | None = None, *, plan: serving.Plan | None = None):
        """plan: what this object serves; by default the manifest's (serving.Plan.of)."""
        self.folder, self.manifest, self._layers = folder, manifest, layers
        self.plan = plan if plan is not None else serving.Plan.of(manifest)
        self._policies = _policies(self.plan.thresholds)
        # The document key (documents.py); None for a database built without token tables.
        self.documents = documents
        # What every entry point runs for the document key (document_executor.py); None: not served.
        self.executor = (DocumentExecutor(self, self.plan.documents)
                         if documents is not None and self.plan.documents is not None else None)
        self.stats = MemoStats()
        self._logged: set[tuple[int, str]] = set()   # (layer, kind of problem) already logged
        self._bucket_lengths = sorted(manifest.buckets)
        # A hit needs a stored entry of the query's exact true length (policy.py).
        self._lengths = frozenset(int(n) for layer in layers.values() for b in layer.buckets.values()
                                  for n in np.unique(b.lengths))
        self._min_length = min(self._lengths, default=None)

    @classmethod
    def open(cls, folder: str | Path, *, verify_checksums: bool = False) -> MemoDatabase:
        """Load and validate ``folder``; raise MemoDatabaseError, one sentence naming the file at fault.

        Before any file reaches numpy or Annoy: the manifest's schema, every
        listed path inside ``folder``, every file's size, the sha256 of every
        file but the value stores (manifest.load), and that every file this
        loader opens is listed. Value stores must have exactly the size their
        rows need. ``verify_checksums`` also rehashes the value stores
        (``attmemo verify-db``): a flipped byte inside one is invisible to the
        cheap checks and gives a wrong stored probability, never a crash.
        """
        folder = Path(folder)
        if not (folder / manifest_file.FILENAME).exists() and admitted_folder.has_segment(folder):
            return admitted_folder.open_admitted_only(cls, folder)   # texts admitted from traffic, no build
        manifest = manifest_file.load(folder, verify_checksums=verify_checksums)
        where = folder / manifest_file.FILENAME
        if (manifest.key.segments, manifest.key.hidden_pool) != (keys.POOL_SEGMENTS, keys.POOL_HIDDEN):
            raise MemoDatabaseError(f"{where}: keys pool {manifest.key.segments} segments x {manifest.key.hidden_pool} "
                                    f"units, but models pool {keys.POOL_SEGMENTS} x {keys.POOL_HIDDEN}; "
                                    "rebuild the database with this attmemo.")
        if unlisted := [name for name in files_opened(manifest) if name not in manifest.files]:
            raise MemoDatabaseError(f"{where}: does not list {unlisted[0]}, which the database needs; "
                                    "rebuild the database.")
        try:
            lengths = {b: _load_lengths(folder / lengths_file(b), count, bucket=b)
                       for b, count in manifest.buckets.items() if count > 0}
            layers = _load_layers(folder, manifest, lengths)
            documents = _load_documents(folder, manifest, lengths)
        except MemoDatabaseError:
            raise
        except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError) as error:
            # Checksummed files should never get here; if one does, still one sentence, not a traceback.
            raise MemoDatabaseError(f"{folder}: cannot be loaded ({type(error).__name__}: {error}); "
                                    "rebuild the database.") from error
        log.info("opened memo database %s: %d layers, %s rows", folder, len(layers), sum(manifest.buckets.values()))
        database = cls(folder, manifest, layers, documents)
        admitted_folder.attach(database)   # texts admitted from traffic (or to be: see attach)
        return database

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def stored_lengths(self) -> frozenset[int]:
        """True token counts of the stored entries (a lookup can only hit one of these)."""
        return self._lengths

    def serves(self, layer: int, batch: int, seq_len: int) -> bool:
        """Whether a lookup can hit: asked once per run, before any layer, from the input shape.

        An unpadded sequence (batch 1) can only hit entries of its own length, so
        a length the corpus never had switches every lookup off and the run costs
        what the model without a database costs. A padded batch holds shorter
        sequences too, so any stored length up to ``seq_len`` keeps lookups on.
        """
        if layer not in self._layers or layer not in self._policies or self._min_length is None:
            return False
        return seq_len in self._lengths if batch == 1 else seq_len >= self._min_length

    @property
    def thresholds(self) -> dict[int, float]:
        """layer -> hit threshold of every layer served (a layer not listed never looks up)."""
        return {layer: policy.threshold for layer, policy in self._policies.items()}

    @property
    def document_serving(self) -> serving.Documents | None:
        """What the document key serves (this object's plan), None without token tables or a plan."""
        return self.executor.plan if self.executor is not None else None

    def view(self, plan: serving.Plan) -> MemoDatabase:
        """The same loaded files serving another plan, with counters of its own.

        Calibration tries its candidate plans on views: the object live sessions use
        keeps its plan and its counts.
        """
        if unknown := set(plan.thresholds) - set(self._layers):
            raise ValueError(f"the database has no layer {min(unknown)}.")
        return MemoDatabase(self.folder, self.manifest, self._layers, self.documents, plan=plan)

    @property
    def codec(self) -> values.Codec:
        """How values are stored, and so how the fed model reads them (dtype, scale)."""
        return values.codec(self.manifest.dtype)

    def fed_probs(self, layer: int, bucket: int, row: int, n: int, out_1Hnn: np.ndarray) -> np.ndarray:
        """[1, H, n, codec.columns(n)] stored attention of ``row`` as the fed model reads it (values.ValueFile.fed)."""
        if bucket == ADMITTED_BUCKET:
            return self.documents.admitted.fed(layer, row, n, out_1Hnn)
        return self._layers[layer].buckets[bucket].values.fed(row, n, out_1Hnn)

    def probs_float(self, layer: int, bucket: int, row: int, n: int, out_1Hnn: np.ndarray) -> np.ndarray:
        """[1, H, n, n] float32 stored attention of ``row``: in place when stored so, else decoded into ``out_1Hnn``."""
        if bucket == ADMITTED_BUCKET:
            return self.documents.admitted.as_float(layer, row, n, out_1Hnn)
        return self._layers[layer].buckets[bucket].values.as_float(row, n, out_1Hnn)

    def heads(self, layer: int) -> int | None:
        """H of ``layer``'s stored probabilities (None if the database does not serve it)."""
        return self.manifest.layers.get(layer)

    def lookup(self, layer: int, features_BF: np.ndarray, mask_BS: np.ndarray):
        """(hit_B bool[B], stored_BHSS uint16[B, H, S, S] in unorm16, see values.py).

        features_BF: float32[B, F] key features (keys.pool of each sequence's real
        tokens, computed by the graph); mask_BS: [B, S], nonzero = real token.
        Rows of misses are zero; with no hit at all ``stored`` is NO_PROBS.

        Never raises. Unusable input (not those shapes and dtypes) or any error
        makes every sequence miss; a sequence whose features are not finite
        misses alone, before Annoy sees them. Each such sequence counts in
        ``stats`` as a fallback; each kind of problem is logged once per layer.
        """
        start = time.perf_counter()
        batch = _batch_size(features_BF, mask_BS)
        hit_B, stored_BHSS = np.zeros(batch, dtype=bool), NO_PROBS
        try:
            problem = self._input_problem(layer, features_BF, mask_BS)
            if problem:
                self.fall_back(layer, problem[0], problem[1], sequences=batch)
            else:
                hit_B, stored_BHSS = self._lookup(layer, self._layers[layer], features_BF, mask_BS)
        except Exception as error:  # noqa: BLE001 - the caller is a PyOp; an exception would abort the process
            self.fall_back(layer, type(error).__name__, f"lookup failed ({error})", sequences=batch, error=error)
        self.stats.record(layer, lookups=batch, hits=int(hit_B.sum()), seconds=time.perf_counter() - start)
        return hit_B, stored_BHSS

    def fall_back(self, layer: int, kind: str, reason: str, *, sequences: int, error: Exception | None = None) -> None:
        """Count ``sequences`` of ``layer`` computed exactly because of ``reason``; log each ``kind`` once.

        Lookups run per layer per request: a problem that repeats must not flood the log.
        """
        self.stats.count_fallbacks(layer, sequences)
        if (layer, kind) not in self._logged:
            self._logged.add((layer, kind))
            (log.error if error else log.warning)("memo layer %s: %s; computing exactly (logged once)",
                                                  layer, reason, exc_info=error)

    def _input_problem(self, layer: int, features_BF, mask_BS) -> tuple[str, str] | None:
        """(kind, reason) if the op's inputs are not what a lookup needs, else None."""
        if layer not in self._layers:
            return "layer", f"the database has no layer {layer}"
        if not (isinstance(mask_BS, np.ndarray) and mask_BS.ndim == 2 and mask_BS.dtype.kind in "iub"):
            return "mask", f"the mask is {_describe(mask_BS)}, not an integer [B, S]"
        expected = (mask_BS.shape[0], self._layers[layer].features)
        if not (isinstance(features_BF, np.ndarray) and features_BF.dtype == np.float32
                and features_BF.shape == expected):
            return "features", f"the key features are {_describe(features_BF)}, not float32{list(expected)}"
        return None

    def _lookup(self, layer: int, entry: _Layer, features_BF: np.ndarray, mask_BS: np.ndarray):
        batch, size = mask_BS.shape
        policy = self._policies.get(layer)
        if policy is None:   # switched off after the run's gate said yes (calibration): a miss
            return np.zeros(batch, dtype=bool), NO_PROBS
        real_BS = mask_BS != 0
        lengths = [int(n) for n in real_BS.sum(axis=1)]
        buckets = {b: self._bucket_for(entry, lengths[b]) for b in range(batch)}
        candidates = self._finite(layer, features_BF, [b for b in range(batch) if buckets[b] is not None])
        hits: list[tuple[int, _Bucket, int]] = []     # (sequence, bucket, row)
        if candidates:
            keys_BK = entry.key.embed(features_BF[candidates])
            # Finite features can still overflow the key network; Annoy must never see NaN or Inf.
            finite = self._finite(layer, keys_BK, list(range(len(candidates))))
            for b, key in zip([candidates[i] for i in finite], keys_BK[finite]):
                bucket = buckets[b]
                row, distance = bucket.index.nearest(key, lengths[b])
                if policy.is_hit(distance=distance, stored_length=int(bucket.lengths[row]),
                                      query_length=lengths[b]):
                    hits.append((b, bucket, row))
        hit_B = np.zeros(batch, dtype=bool)
        if not hits:
            return hit_B, NO_PROBS
        if batch == 1 and hits[0][1].values.bucket == size == lengths[0]:
            # The common case, one unpadded sequence filling its bucket: the stored
            # block is the answer, returned in place (the bridge does the one copy).
            _, bucket, row = hits[0]
            hit_B[0] = True
            return hit_B, bucket.values.unorm16(row, size)[None]
        stored_BHSS = np.zeros((batch, entry.heads, size, size), np.uint16)
        for b, bucket, row in hits:
            hit_B[b] = True
            bucket.values.raw_into(row, lengths[b], stored_BHSS[b], _real_positions(real_BS[b], lengths[b]))
        return hit_B, stored_BHSS

    def _finite(self, layer: int, rows_BX: np.ndarray, candidates: list[int]) -> list[int]:
        """The ``candidates`` whose row of ``rows_BX`` is all finite; the others count as fallbacks."""
        finite = [b for b, ok in zip(candidates, np.isfinite(rows_BX[candidates]).all(axis=1)) if ok]
        if len(finite) < len(candidates):
            self.fall_back(layer, "non-finite", "NaN or Inf in a sequence's key features",
                           sequences=len(candidates) - len(finite))
        return finite

    def _bucket_for(self, layer: _Layer, n: int) -> _Bucket | None:
        i = bisect.bisect_left(self._bucket_lengths, n)
        return layer.buckets.get(self._bucket_lengths[i]) if i < len(self._bucket_lengths) and n > 0 else None


def _real_positions(real_S: np.ndarray, n: int) -> np.ndarray | None:
    """int[n] positions of a sequence's n real tokens, or None when they are the first n (right padding)."""
    return None if real_S[:n].all() else np.flatnonzero(real_S)


def _policies(thresholds: dict[int, float]) -> dict[int, HitPolicy]:
    return {layer: HitPolicy(tau) for layer, tau in thresholds.items()}


def files_opened(manifest: Manifest) -> list[str]:
    """Relative paths of every file ``MemoDatabase.open`` reads (each must be listed in the manifest)."""
    stored = [b for b, count in sorted(manifest.buckets.items()) if count > 0]
    names = [lengths_file(b) for b in stored]
    names += [tokens_file(b) for b in stored if tokens_file(b) in manifest.files]
    names += [name for name in _shift_files() if name in manifest.files]
    for layer in sorted(manifest.layers):
        names += [f"{layer_dir(layer)}/{keys.weight_file(w)}" for w in keys.WEIGHTS]
        names += [name for b in stored for name in (index_file(layer, b), values_file(layer, b))]
    return names


def _load_layers(folder: Path, manifest: Manifest, lengths: dict[int, np.ndarray]) -> dict[int, _Layer]:
    layers = {}
    for layer, heads in manifest.layers.items():
        key = keys.KeyEmbedding.load(folder / layer_dir(layer))
        if key.w1.shape[1] != manifest.key.width or key.dim != manifest.key.dim:
            raise MemoDatabaseError(f"{folder / layer_dir(layer)}: key-embedding weights are {key.w1.shape[1]} wide "
                                    f"giving {key.dim}-d keys, the manifest says {manifest.key.width} and "
                                    f"{manifest.key.dim}; rebuild the database.")
        buckets = {b: _Bucket(KeyIndex(folder / index_file(layer, b), dim=key.dim, count=count),
                              ValueFile(folder / values_file(layer, b), count=count, heads=heads,
                                        bucket=b, dtype=manifest.dtype, mode="r"),
                              lengths[b])
                   for b, count in manifest.buckets.items() if count > 0}
        layers[layer] = _Layer(heads, key, buckets)
    return layers


def _load_documents(folder: Path, manifest: Manifest, lengths: dict[int, np.ndarray]) -> DocumentIndex | None:
    """The document key over the stored token ids; None if the build wrote none (an older database)."""
    if not all(tokens_file(b) in manifest.files for b in lengths):
        return None
    tokens = {b: documents_file.load_tokens(folder / tokens_file(b), len(lengths[b]), bucket=b)
              for b in lengths}
    built = all(name in manifest.files for name in _shift_files())
    return DocumentIndex(tokens, lengths, shift_index.ShiftIndex(folder / shift_dir()) if built else None)


def _shift_files() -> list[str]:
    return [f"{shift_dir()}/{name}" for name in shift_index.FILES]


def _load_lengths(path: Path, count: int, *, bucket: int) -> np.ndarray:
    try:
        lengths = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MemoDatabaseError(f"{path}: unreadable length table ({error}); rebuild the database.") from error
    if lengths.shape != (count,) or lengths.dtype.kind not in "iu":
        raise MemoDatabaseError(f"{path}: expected {count} integer lengths, found {lengths.dtype}{list(lengths.shape)}; "
                                "rebuild the database.")
    if count and not (lengths.min() >= 1 and lengths.max() <= bucket):
        raise MemoDatabaseError(f"{path}: lengths outside 1..{bucket} in bucket {bucket}; rebuild the database.")
    return lengths


def _batch_size(features_BF, mask_BS) -> int:
    """B as best known: the mask's, else the features', else 1 (what the fallback outputs need)."""
    for array in (mask_BS, features_BF):
        if isinstance(array, np.ndarray) and array.ndim == 2:
            return array.shape[0]
    return 1


def _describe(array) -> str:
    return f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
