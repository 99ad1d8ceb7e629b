"""The document key over admitted texts: appendable, and as fast at 20,000 texts as at 64.

    similarity(query, stored) = share of positions i < n where query[i] == stored[i]   (documents.py)

The built DocumentIndex compares the query with every stored text of its length; admitted
texts keep arriving, so that cost would grow with traffic. Instead each text of n tokens is
cut into bands of ``width`` consecutive positions, and a text is a candidate only if one band
holds exactly the query's ids. With ``width * (1 - min_share) < 1`` this loses nothing: a
stored text matching at least ``min_share`` of positions differs in at most (1 - min_share) * n
< n / width <= bands positions, so one band is untouched. Candidates are then compared exactly.
At 0.9 the width is 9 tokens (29 dict look-ups at 256 tokens).

Rows are small ints local to this process (admission.py maps them to files).
"""

from __future__ import annotations

import math

import numpy as np


def band_width(min_share: float) -> int:
    """The widest band that still finds every text matching at least ``min_share`` of positions."""
    if min_share >= 1:
        return 1 << 30          # verbatim repeats only: the whole text is one band
    width = max(1, math.ceil(1 / (1 - min_share)) - 1)
    while width > 1 and width * (1 - min_share) >= 1:
        width -= 1
    return width


class AdmittedIndex:
    """Token ids of admitted texts, found by band; not thread-safe (admission.py locks around it)."""

    def __init__(self, min_share: float):
        self.min_share, self.width = min_share, band_width(min_share)
        self._ids: dict[int, np.ndarray] = {}          # row -> int32[n] ids
        self._bands: dict[tuple, set[int]] = {}        # (n, band, its ids' bytes) -> rows

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, row: int, ids_n: np.ndarray) -> None:
        ids_n = np.ascontiguousarray(ids_n, np.int32)
        self._ids[row] = ids_n
        for key in self._keys(ids_n):
            self._bands.setdefault(key, set()).add(row)

    def remove(self, row: int) -> None:
        ids_n = self._ids.pop(row, None)
        if ids_n is None:
            return
        for key in self._keys(ids_n):
            rows = self._bands.get(key)
            if rows is not None:
                rows.discard(row)
                if not rows:
                    del self._bands[key]

    def nearest(self, ids_n: np.ndarray) -> tuple[int, float] | None:
        """(row, share of positions equal) of the best admitted text at >= min_share, or None."""
        ids_n = np.ascontiguousarray(ids_n, np.int32)
        candidates: set[int] = set()
        for key in self._keys(ids_n):
            candidates.update(self._bands.get(key, ()))
        best, best_share = None, -1.0
        for row in candidates:
            share = float(np.count_nonzero(self._ids[row] == ids_n)) / len(ids_n)
            if share > best_share:
                best, best_share = row, share
        return (best, best_share) if best is not None and best_share >= self.min_share else None

    def _keys(self, ids_n: np.ndarray):
        n, data = len(ids_n), ids_n.tobytes()
        step = 4 * self.width
        return [(n, i, data[i:i + step]) for i in range(0, 4 * n, step)]
