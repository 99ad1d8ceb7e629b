"""Near-duplicate training pairs: the same text with some tokens replaced in place.

A corpus of distinct documents gives the key network only far pairs (mean TV
distance ~0.4-0.6 on BBC News, attmemo.md), yet hits are decided near 0. So
for some texts the build also runs an edited copy: a log-uniform 0.5-40 % of
its non-special tokens replaced by other tokens of the same text, positions
and length unchanged (the case where reuse works). The pair (text, edit) is
trained with the exact TV distance between their matrices; the edit itself is
not stored.
"""

from __future__ import annotations

import numpy as np

MIN_RATE, MAX_RATE = 0.005, 0.4


def edit_tokens(ids: np.ndarray, *, special_ids: set[int], rng: np.random.Generator) -> np.ndarray:
    """A copy of int64[n] ``ids`` with a random share of its ordinary tokens replaced in place."""
    ordinary = np.flatnonzero(~np.isin(ids, list(special_ids)))
    edited = ids.copy()
    if len(ordinary) < 2:
        return edited
    rate = float(np.exp(rng.uniform(np.log(MIN_RATE), np.log(MAX_RATE))))
    chosen = rng.choice(ordinary, size=max(1, round(rate * len(ordinary))), replace=False)
    edited[chosen] = ids[rng.choice(ordinary, size=len(chosen))]
    return edited


def tv_distance(a_Hnn: np.ndarray, b_Hnn: np.ndarray) -> float:
    """Mean total-variation distance between two same-shape attention matrices, over heads and rows."""
    heads, rows, _ = a_Hnn.shape
    return float(np.abs(a_Hnn - b_Hnn).sum() / (2 * heads * rows))
