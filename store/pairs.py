"""Training pairs for the key embedding, and their targets.

Pairs are formed within minibatches ("groups") of texts, as in the paper:
texts are shuffled with a fixed seed, cut into groups of ``group`` and every
pair inside a group is used. Target = mean total-variation distance between
the two attention matrices A, B of a layer::

    tv = sum_{h, r, c} |A[h, r, c] - B[h, r, c]| / (2 * H * R)

over rows r < m, m the smaller true length of the group, with the shorter
matrix's missing columns counting as zero (mass the other puts there is all
difference). For speed the rows are R <= ``rows`` evenly spaced ones: an
unbiased-in-spirit estimate of the mean over rows, exact when m <= rows.
Values are read back from the stored (16-bit) files, so the target is what a
hit would actually reuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Pairs:
    left: np.ndarray     # int64[P] text numbers
    right: np.ndarray    # int64[P]
    group: np.ndarray    # int64[P] which group the pair came from (held-out splits are by group)
    group_of: np.ndarray  # int64[texts] each text's group


def group_pairs(texts: int, *, group: int, seed: int) -> Pairs:
    order = np.random.default_rng(seed).permutation(texts)
    group_of = np.empty(texts, np.int64)
    group_of[order] = np.arange(texts) // group
    left, right, groups = [], [], []
    for g, start in enumerate(range(0, texts, group)):
        members = order[start:start + group]
        i, j = np.triu_indices(len(members), k=1)
        left.append(members[i]), right.append(members[j]), groups.append(np.full(len(i), g))
    if not left:
        return Pairs(*(np.zeros(0, np.int64) for _ in range(3)), group_of)
    return Pairs(*(np.concatenate(a).astype(np.int64) for a in (left, right, groups)), group_of)


def tv_targets(pairs: Pairs, *, lengths: np.ndarray,
               read_rows: Callable[[int, np.ndarray], np.ndarray], rows: int) -> np.ndarray:
    """float32[P] targets; read_rows(text, r) returns float32[H, len(r), n_text] of that text's matrix."""
    targets = np.empty(len(pairs.left), np.float32)
    for g in np.unique(pairs.group):
        at = np.flatnonzero(pairs.group == g)
        members = np.unique(np.concatenate([pairs.left[at], pairs.right[at]]))
        common = int(lengths[members].min())
        r = np.unique(np.linspace(0, common - 1, min(rows, common)).astype(np.int64))
        width = int(lengths[members].max())
        block = {}
        for t in members:
            probs = read_rows(int(t), r)
            padded = np.zeros((probs.shape[0], len(r), width), np.float32)
            padded[..., :probs.shape[-1]] = probs
            block[int(t)] = padded
        for p in at:
            a, b = block[int(pairs.left[p])], block[int(pairs.right[p])]
            targets[p] = np.abs(a - b).sum() / (2 * a.shape[0] * a.shape[1])
    return targets
