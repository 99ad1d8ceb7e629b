"""Shift-tolerant retrieval: which stored text is the query after insertions and deletions?

    key(ids)  = unit-length signed count of the token 3-grams of the first KEY_TOKENS ids,
                hashed into KEY_DIM dims
    candidates = the ``candidates`` stored texts whose keys are nearest (Annoy, angular)
    best       = the candidate whose token alignment (store/align.py) has the highest share

An edit changes only the few n-grams that overlap it, wherever it falls, so a
revised text keeps almost all of its n-grams while every position after the
edit shifts; a position-for-position key (store/documents.py) misses it. The
signed hashing is a random projection of the n-gram count vector, so the
angle between keys estimates the angle between the full count vectors
(near duplicates ~0.93 cosine, unrelated texts ~0 +- 1/sqrt(KEY_DIM)). Only the
first KEY_TOKENS ids are keyed, so a stored text longer than the query window
(or the window moved by a few tokens) keys like the query does. The key only
proposes; the alignment decides, and its share is what callers gate on.

Measured on 100,000 synthetic texts (benchmarks/shift_lookup.py, docs/benchmarks.md):
Annoy's angular trees need a wide search for these keys (10 trees searched the default
trees x k nodes found the source of ~66 % of edited texts; 30 trees and 1000 nodes,
~98 %, 99 % of those whose source aligns at >= 0.9), and 32 dims did as well as 64 at
half the index size. Most near duplicates are found by a narrow first search, so
only misses pay the wide one.

Stored texts may have any length. On disk, in one folder:
    shift.ann        Annoy index, item i = text i (built on disk, loaded by mmap)
    tokens.i32       every text's ids, concatenated (int32, read by mmap)
    offsets.npy      int64[N + 1]: text i is tokens[offsets[i]:offsets[i + 1]]
    shift.json       {"dim", "shingle", "key_tokens", "count"}
``build`` streams: one text at a time is hashed, appended to tokens.i32 and
added to an index being built in its file, so memory holds the offsets and
what Annoy needs, never the token arrays.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .align import Alignment, align
from .manifest import MemoDatabaseError

FILES = ("shift.ann", "tokens.i32", "offsets.npy", "shift.json")   # the folder's files, as above
KEY_DIM = 32
KEY_TOKENS = 128
SHINGLE = 3
TREES = 30
FIRST_SEARCH_K = 100   # the narrow search tried first: finds most near duplicates (~50 us)
SEARCH_K = 1000        # the wide one, when the narrow one found nothing good enough
ENOUGH = 0.9           # a share that ends the search: a better candidate is unlikely
METRIC = "angular"
# Odd 64-bit multipliers (from splitmix64) mixing the ids of one n-gram into a hash.
_MIX = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB], dtype=np.uint64)


def shift_key(ids, *, dim: int = KEY_DIM, shingle: int = SHINGLE, key_tokens: int = KEY_TOKENS) -> np.ndarray:
    """float32[dim] unit-length key of ``ids`` (1-d integer token ids, any length >= 1).

    Keys the first ``key_tokens`` ids; a text shorter than ``shingle`` tokens is keyed by its shorter n-grams.
    """
    ids = np.asarray(ids, dtype=np.uint64)[:key_tokens]
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"a shift key needs a non-empty 1-d sequence of token ids, got shape {ids.shape}.")
    width = min(shingle, len(ids))
    count = len(ids) - width + 1
    with np.errstate(over="ignore"):   # multiplication modulo 2**64 is the point
        h = np.zeros(count, np.uint64)
        for k in range(width):         # a loop over the n-gram's width, not over tokens
            h ^= (ids[k:k + count] + np.uint64(k + 1)) * _MIX[k % 3]
        h ^= h >> np.uint64(31)
        h *= _MIX[1]
    bucket = (h >> np.uint64(33)) % np.uint64(dim)
    sign = ((h >> np.uint64(17)) & np.uint64(1)).astype(np.float32) * 2 - 1
    key = np.bincount(bucket.astype(np.int64), weights=sign, minlength=dim).astype(np.float32)
    norm = np.linalg.norm(key)
    return key / norm if norm > 0 else key


def build(texts: Iterable, folder: Path, *, dim: int = KEY_DIM, shingle: int = SHINGLE,
          key_tokens: int = KEY_TOKENS, trees: int = TREES, seed: int = 0) -> int:
    """Write a shift index of ``texts`` (an iterable of 1-d integer id arrays, text i = item i) to ``folder``.

    Returns the number of texts. Reproducible for a given seed (single-threaded build).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = AnnoyIndex(dim, METRIC)
    index.set_seed(seed)
    index.on_disk_build(str(folder / "shift.ann"))
    offsets = [0]
    with open(folder / "tokens.i32", "wb") as tokens:
        for row, ids in enumerate(texts):
            ids = np.asarray(ids)
            index.add_item(row, shift_key(ids, dim=dim, shingle=shingle, key_tokens=key_tokens).tolist())
            tokens.write(ids.astype("<i4").tobytes())
            offsets.append(offsets[-1] + len(ids))
    if len(offsets) == 1:
        raise ValueError("a shift index needs at least one stored text.")
    index.build(trees, n_jobs=1)   # one job: builds are reproducible only single-threaded
    index.unload()
    np.save(folder / "offsets.npy", np.asarray(offsets, np.int64))
    (folder / "shift.json").write_text(json.dumps({"dim": dim, "shingle": shingle, "key_tokens": key_tokens,
                                                         "count": len(offsets) - 1}))
    return len(offsets) - 1


@dataclasses.dataclass(frozen=True)
class ShiftMatch:
    row: int                # stored text (item id)
    share: float            # alignment.share: identical counterparts / query tokens
    alignment: Alignment
    distance: float         # Annoy's angular distance between the keys, sqrt(2 - 2 cos)


class ShiftIndex:
    """A loaded shift index (memory-mapped); lookups are read-only and need no lock."""

    def __init__(self, folder: Path):
        self.folder = folder = Path(folder)
        try:
            meta = json.loads((folder / "shift.json").read_text())
            self.dim, self.shingle, count = int(meta["dim"]), int(meta["shingle"]), int(meta["count"])
            self.key_tokens = int(meta["key_tokens"])
            self._offsets = np.load(folder / "offsets.npy", allow_pickle=False)
            self._tokens = np.memmap(folder / "tokens.i32", dtype="<i4", mode="r")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MemoDatabaseError(f"{folder}: unreadable shift index ({error}); rebuild it.") from error
        self._index = AnnoyIndex(self.dim, METRIC)
        try:
            self._index.load(str(folder / "shift.ann"))
        except OSError as error:
            raise MemoDatabaseError(f"{folder / 'shift.ann'}: unreadable Annoy index ({error}); rebuild it.") from error
        if not (self._index.get_n_items() == count == len(self._offsets) - 1
                and self._offsets[-1] == len(self._tokens)):
            raise MemoDatabaseError(f"{folder}: the index, offsets and tokens disagree on the stored texts; "
                                    "rebuild it.")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def tokens(self, row: int) -> np.ndarray:
        """int32[m] ids of stored text ``row`` (a read-only view of the mapping)."""
        return self._tokens[self._offsets[row]:self._offsets[row + 1]]

    def nearest(self, query_ids, *, candidates: int = 2, search_k: int = SEARCH_K,
                min_share: float = 0.0) -> ShiftMatch | None:
        """The stored text best aligned with ``query_ids`` (1-d integer ids) among the key's nearest.

        First aligns the nearest key found by a narrow search (FIRST_SEARCH_K nodes);
        if its share is below ENOUGH, aligns the ``candidates`` nearest keys of a wide
        search (``search_k`` nodes), nearest first. Keeps the highest share (the first
        found on a tie). Returns None when the best share is below ``min_share``.
        """
        query = np.asarray(query_ids)
        key = shift_key(query, dim=self.dim, shingle=self.shingle, key_tokens=self.key_tokens).tolist()
        query = query.tolist()   # once, not per candidate (store/align.py)
        best, seen = None, set()
        for k, nodes in ((1, min(FIRST_SEARCH_K, search_k)), (candidates, search_k)):
            rows, distances = self._index.get_nns_by_vector(key, k, search_k=nodes, include_distances=True)
            for row, distance in zip(rows, distances):
                if row in seen:
                    continue
                seen.add(row)
                alignment = align(query, self.tokens(row))
                if best is None or alignment.share > best.share:
                    best = ShiftMatch(row, alignment.share, alignment, distance)
            if best is not None and best.share >= ENOUGH:
                break
        return best if best is not None and best.share >= min_share else None
