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

from . import keys, manifest as manifest_file
from .index import KeyIndex
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


def layer_dir(layer: int) -> str:
    return f"L{layer}"


def lengths_file(bucket: int) -> str:
    return f"lengths/b{bucket}.npy"


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

    def __init__(self, folder: Path, manifest: Manifest, layers: dict[int, _Layer]):
        self.folder, self.manifest, self._layers = folder, manifest, layers
        self.policy = HitPolicy(manifest.threshold)
        self.stats = MemoStats()
        self._failures: set[tuple[int, type]] = set()
        self._bucket_lengths = sorted(manifest.buckets)
        # A hit needs a stored entry of the query's exact true length (policy.py).
        self._lengths = frozenset(int(n) for layer in layers.values() for b in layer.buckets.values()
                                  for n in np.unique(b.lengths))
        self._min_length = min(self._lengths, default=None)

    @classmethod
    def open(cls, folder: str | Path, *, verify_checksums: bool = False) -> MemoDatabase:
        """Load and validate ``folder``; raise MemoDatabaseError naming the file at fault."""
        folder = Path(folder)
        manifest = manifest_file.load(folder, verify_checksums=verify_checksums)
        if (manifest.key.segments, manifest.key.hidden_pool) != (keys.POOL_SEGMENTS, keys.POOL_HIDDEN):
            raise MemoDatabaseError(f"{folder}: keys pool {manifest.key.segments} segments x {manifest.key.hidden_pool} "
                             f"units, but models pool {keys.POOL_SEGMENTS} x {keys.POOL_HIDDEN}; "
                             "rebuild the database with this attmemo.")
        lengths = {b: _load_lengths(folder / lengths_file(b), count) for b, count in manifest.buckets.items()}
        layers = {}
        for layer, heads in manifest.layers.items():
            key = keys.KeyEmbedding.load(folder / layer_dir(layer))
            buckets = {b: _Bucket(KeyIndex(folder / layer_dir(layer) / f"b{b}.ann", dim=key.dim, count=count),
                                  ValueFile(folder / layer_dir(layer) / f"b{b}.values", count=count, heads=heads,
                                            bucket=b, dtype=manifest.dtype, mode="r"),
                                  lengths[b])
                       for b, count in manifest.buckets.items() if count > 0}
            layers[layer] = _Layer(heads, key, buckets)
        log.info("opened memo database %s: %d layers, %s rows", folder, len(layers), sum(manifest.buckets.values()))
        return cls(folder, manifest, layers)

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
        if layer not in self._layers or self._min_length is None:
            return False
        return seq_len in self._lengths if batch == 1 else seq_len >= self._min_length

    def lookup(self, layer: int, features_BF: np.ndarray, mask_BS: np.ndarray):
        """(hit_B bool[B], stored_BHSS uint16[B, H, S, S] in unorm16, see values.py).

        Rows of misses are zero; with no hit at all ``stored`` is NO_PROBS.

        Never raises: on any error every sequence misses (and the error is logged).
        """
        start = time.perf_counter()
        batch = features_BF.shape[0] if features_BF.ndim == 2 else 1
        try:
            hit_B, stored_BHSS = self._lookup(self._layers[layer], features_BF, mask_BS)
        except Exception as error:  # noqa: BLE001 - the caller is a PyOp; an exception would abort the process
            if (layer, type(error)) not in self._failures:  # once per kind: lookups run per layer per request
                self._failures.add((layer, type(error)))
                log.error("memo lookup failed in layer %s (%s); computing exactly", layer, error, exc_info=error)
            hit_B, stored_BHSS = np.zeros(batch, dtype=bool), NO_PROBS
        self.stats.record(layer, lookups=batch, hits=int(hit_B.sum()), seconds=time.perf_counter() - start)
        return hit_B, stored_BHSS

    def _lookup(self, layer: _Layer, features_BF: np.ndarray, mask_BS: np.ndarray):
        """features_BF: keys.pool of each sequence's real tokens, computed by the graph."""
        batch, size = mask_BS.shape
        if features_BF.shape != (batch, layer.features):
            raise ValueError(f"expected key features [{batch}, {layer.features}], got {list(features_BF.shape)}")
        real_BS = mask_BS != 0
        lengths = [int(n) for n in real_BS.sum(axis=1)]
        buckets = {b: self._bucket_for(layer, lengths[b]) for b in range(batch)}
        candidates = [b for b in range(batch) if buckets[b] is not None]
        hits: list[tuple[int, _Bucket, int]] = []     # (sequence, bucket, row)
        if candidates:
            for b, key in zip(candidates, layer.key.embed(features_BF[candidates])):
                bucket = buckets[b]
                row, distance = bucket.index.nearest(key, lengths[b])
                if self.policy.is_hit(distance=distance, stored_length=int(bucket.lengths[row]),
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
            return hit_B, bucket.values.view(row)[None]
        stored_BHSS = np.zeros((batch, layer.heads, size, size), np.uint16)
        for b, bucket, row in hits:
            hit_B[b] = True
            bucket.values.raw_into(row, lengths[b], stored_BHSS[b], _real_positions(real_BS[b], lengths[b]))
        return hit_B, stored_BHSS

    def _bucket_for(self, layer: _Layer, n: int) -> _Bucket | None:
        i = bisect.bisect_left(self._bucket_lengths, n)
        return layer.buckets.get(self._bucket_lengths[i]) if i < len(self._bucket_lengths) and n > 0 else None


def _real_positions(real_S: np.ndarray, n: int) -> np.ndarray | None:
    """int[n] positions of a sequence's n real tokens, or None when they are the first n (right padding)."""
    return None if real_S[:n].all() else np.flatnonzero(real_S)


def _load_lengths(path: Path, count: int) -> np.ndarray:
    try:
        lengths = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MemoDatabaseError(f"{path}: unreadable length table ({error}); rebuild the database.") from error
    if lengths.shape != (count,) or lengths.dtype.kind not in "iu":
        raise MemoDatabaseError(f"{path}: expected {count} integer lengths, found {lengths.dtype}{list(lengths.shape)}; "
                         "rebuild the database.")
    return lengths
