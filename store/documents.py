"""The document key: which stored text is the query, position for position?

    similarity(query, stored) = share of positions i < n where query[i] == stored[i]
    candidates                = stored texts with the query's true token count n

Attention is reused across inputs only when they are position-aligned near
duplicates (a document re-embedded after in-place edits, a filled template;
see docs/design.md). For those, the token ids themselves are the key: one
comparison per run, before the model runs, instead of one learned-key lookup
per layer inside it. A hit feeds every served layer the stored text's
attention at once (attmemo.session); the layer key (keys.py) remains the
per-layer path for batches and for plain onnxruntime sessions.

Cost: one vectorised comparison of n ids against each stored text of length
n, ~1 us per 4,000 ids compared (64 texts of 256 tokens: ~10 us). The
tables cost 4 bytes per stored token in memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .manifest import MemoDatabaseError


@dataclasses.dataclass(frozen=True)
class Match:
    bucket: int
    row: int
    similarity: float


# A Match's bucket for a text admitted from traffic (store/admission.py; no built bucket is 0 long).
ADMITTED_BUCKET = 0


class DocumentIndex:
    """Stored token ids grouped by true length (a text only ever matches texts of its own length)."""

    # The folder's texts admitted from traffic (admission.AdmittedStore), consulted after the built ones.
    admitted = None

    def __init__(self, tokens: dict[int, np.ndarray], lengths: dict[int, np.ndarray]):
        by_length: dict[int, list[tuple[int, int]]] = {}
        for bucket, lengths_b in lengths.items():
            for row, n in enumerate(lengths_b.tolist()):
                by_length.setdefault(n, []).append((bucket, row))
        # n -> (bucket of each candidate, row of each candidate, int32[candidates, n] ids)
        self._groups = {n: (np.array([b for b, _ in places]), np.array([r for _, r in places]),
                            np.stack([tokens[b][r, :n] for b, r in places]))
                        for n, places in by_length.items()}

    def nearest(self, ids_n: np.ndarray) -> Match | None:
        """The stored text of the same length sharing the most positions with ``ids_n``, or None."""
        found = self._nearest_built(ids_n)
        if self.admitted is not None and (found is None or found.similarity < 1):
            admitted = self.admitted.nearest(ids_n)
            if admitted is not None and (found is None or admitted[1] > found.similarity):
                return Match(ADMITTED_BUCKET, *admitted)
        return found

    def _nearest_built(self, ids_n: np.ndarray) -> Match | None:
        group = self._groups.get(len(ids_n))
        if group is None:
            return None
        buckets, rows, table = group
        same = (table == ids_n).sum(axis=1)
        best = int(same.argmax())
        return Match(int(buckets[best]), int(rows[best]), float(same[best]) / len(ids_n))


def load_tokens(path, count: int, *, bucket: int) -> np.ndarray:
    try:
        tokens = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MemoDatabaseError(f"{path}: unreadable token table ({error}); rebuild the database.") from error
    if tokens.shape != (count, bucket) or tokens.dtype != np.int32:
        raise MemoDatabaseError(f"{path}: expected int32[{count}, {bucket}] token ids, found "
                                f"{tokens.dtype}{list(tokens.shape)}; rebuild the database.")
    return tokens
