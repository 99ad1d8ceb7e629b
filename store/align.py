"""Token alignment of a query with a stored text, for reusing attention across edits.

    a(i)  = stored position of query token i, or -1 where the query inserted it
    b(k)  = query position of stored token k, or -1 where the query lost it
    r(i)  = the stored row query token i reads: a(i), or for an inserted token its
            nearest mapped neighbour's a (the left one on a tie)
    share = fraction of query tokens whose counterpart is the same token id

The edit script comes from rapidfuzz's Levenshtein opcodes over the id lists
(C++, bit-parallel): a one-for-one substitution maps the new token onto the old
position, exactly what the position-for-position document key already reuses
(store/documents.py); insertions and deletions shift everything after them.
Opcodes come as a few blocks (one per edit), so the per-token arrays are built
with numpy from the block boundaries, never a Python loop over tokens.

Cost (2-core x86-64 shared with other jobs, median): ~45 us at 256 tokens, ~80 us
at 512, near-duplicate or unrelated alike; rapidfuzz's opcodes are ~14 us of the 45.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from rapidfuzz.distance import Levenshtein


@dataclasses.dataclass(frozen=True, eq=False)   # arrays: == would be ambiguous
class Alignment:
    stored_of_query: np.ndarray   # int64[n]: a(i), -1 for an inserted query token
    query_of_stored: np.ndarray   # int64[m]: b(k), -1 for a stored token the query lost
    rows: np.ndarray              # int64[n]: r(i), in [0, m) (all 0 when nothing maps)
    share: float                  # identical counterparts / n, in [0, 1]

    @property
    def mapped_share(self) -> float:
        """Fraction of query tokens with any counterpart (identical or substituted)."""
        return float((self.stored_of_query >= 0).mean()) if len(self.stored_of_query) else 0.0


def align(query_ids, stored_ids) -> Alignment:
    """Align ``query_ids`` (n ints) with ``stored_ids`` (m ints): see the module docstring.

    Both may be lists or 1-d integer numpy arrays (token ids). Returns an Alignment;
    raises ValueError if either is empty or not one-dimensional.
    """
    query, stored = _ids(query_ids, "query"), _ids(stored_ids, "stored")
    n, m = len(query), len(stored)
    mapped, same = [], 0
    for op in Levenshtein.opcodes(stored, query):
        # "equal" and "replace" runs map one for one (rapidfuzz's Levenshtein replace
        # blocks are substitutions, equally long on both sides); the rest shift.
        if op.tag == "equal":
            same += op.dest_end - op.dest_start
        if op.tag in ("equal", "replace"):
            mapped.append((op.dest_start, op.src_start, op.dest_end - op.dest_start))
    blocks = np.array(mapped, dtype=np.int64).reshape(-1, 3)
    length = blocks[:, 2]
    # (query, stored) start of each token's block minus the tokens before it, plus its rank: its positions.
    starts = np.repeat(blocks[:, :2] - (np.cumsum(length) - length)[:, None], length, axis=0)
    positions = starts + np.arange(len(starts))[:, None]
    q_pos, s_pos = positions[:, 0], positions[:, 1]
    stored_of_query = np.full(n, -1, np.int64)
    stored_of_query[q_pos] = s_pos
    query_of_stored = np.full(m, -1, np.int64)
    query_of_stored[s_pos] = q_pos
    return Alignment(stored_of_query, query_of_stored, _rows(q_pos, s_pos, n), same / n)


def _rows(q_pos: np.ndarray, s_pos: np.ndarray, n: int) -> np.ndarray:
    """r(i): a(i) where mapped, else the nearest mapped neighbour's (left on a tie).

    Interpolating the rank of the mapped positions puts an inserted token at a
    fraction between its neighbours' ranks k and k+1 (clamped at both ends);
    rounding half down picks the nearer, the left one on a tie.
    """
    if len(q_pos) == 0:
        return np.zeros(n, np.int64)
    rank = np.interp(np.arange(n), q_pos, np.arange(len(q_pos)))
    return s_pos[np.ceil(rank - 0.5).astype(np.int64)]


def _ids(ids, what: str) -> list[int]:
    # rapidfuzz hashes Python ints ~5x faster than it reads numpy scalars; a list is
    # checked by its first element only (a full check would cost a pass over the tokens).
    if isinstance(ids, np.ndarray):
        ok = ids.ndim == 1 and len(ids) > 0 and ids.dtype.kind in "iu"
        ids = ids.tolist() if ok else ids
    else:
        ok = isinstance(ids, list) and len(ids) > 0 and isinstance(ids[0], (int, np.integer))
    if not ok:
        raise ValueError(f"{what} ids must be a non-empty 1-d list or array of integers (token ids), "
                         f"got {type(ids).__name__} {np.shape(ids)}.")
    return ids
