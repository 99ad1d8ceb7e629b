"""Nearest stored key: one Annoy index (euclidean) per layer and length bucket.

Item id = row of the bucket's value store. Each indexed vector is the key
followed by the true token count times LENGTH_SCALE, so a stored row of another
length is at least distance 1 away (similarity <= 0, never a hit) and never
hides a same-length neighbour. The index is built once and loaded by mmap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .manifest import MemoDatabaseError

LENGTH_SCALE = 1.0
METRIC = "euclidean"


def _with_length(keys_NK: np.ndarray, lengths_N: np.ndarray) -> np.ndarray:
    return np.concatenate([keys_NK, (lengths_N.astype(np.float32) * LENGTH_SCALE)[:, None]], axis=1)


def build(keys_NK: np.ndarray, lengths_N: np.ndarray, path: Path, *, trees: int, seed: int) -> None:
    """Write an index of ``keys_NK`` float32[N, K] (row i = item i) to ``path``."""
    vectors = _with_length(keys_NK, lengths_N)
    index = AnnoyIndex(vectors.shape[1], METRIC)
    index.set_seed(seed)
    for row, vector in enumerate(vectors):
        index.add_item(row, vector.tolist())
    index.build(trees, n_jobs=1)  # one job: builds are reproducible only single-threaded
    index.save(str(path))
    index.unload()


class KeyIndex:
    """A loaded (memory-mapped) index; queries are read-only and need no lock."""

    def __init__(self, path: Path, *, dim: int, count: int):
        self._index = AnnoyIndex(dim + 1, METRIC)
        try:
            self._index.load(str(path))
        except OSError as error:
            raise MemoDatabaseError(f"{path}: unreadable Annoy index ({error}); rebuild the database.") from error
        if self._index.get_n_items() != count:
            raise MemoDatabaseError(f"{path}: {self._index.get_n_items()} items, the manifest says {count}; "
                             "rebuild the database.")

    def nearest(self, key_K: np.ndarray, length: int) -> tuple[int, float]:
        """(row, euclidean distance) of the stored key nearest to ``key_K`` at ``length`` tokens."""
        vector = [*key_K.tolist(), length * LENGTH_SCALE]
        rows, distances = self._index.get_nns_by_vector(vector, 1, include_distances=True)
        return rows[0], distances[0]
