"""The document key: which stored text is the query, position for position, or after edits?

    similarity(query, stored) = share of positions i < n where query[i] == stored[i]
    candidates                = stored texts with the query's true token count n

and, where the database has a shift index (shift_index.py) and no stored text of the
query's length is close enough, the one nearest under insertions and deletions:

    similarity(query, stored) = alignment share (align.py): query tokens whose aligned
                                counterpart is the same token id, over n

A substitution-only edit aligns position for position, so the two similarities agree
where both apply, and one plan threshold (serving.Documents) gates both stages.

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

from .align import Alignment
from .manifest import MemoDatabaseError
from .shift_index import ShiftIndex


@dataclasses.dataclass(frozen=True)
class Match:
    bucket: int
    row: int
    similarity: float
    # Through the shift index: the token alignment (align.Alignment) of the query with the
    # stored text; None: position for position, same length.
    alignment: Alignment | None = None

    @property
    def stored_length(self) -> int | None:
        """m, the stored text's true length, for a match through an alignment (None otherwise)."""
        return None if self.alignment is None else len(self.alignment.query_of_stored)


def stored_places(lengths: dict[int, np.ndarray]) -> list[tuple[int, int]]:
    """(bucket, row) of every stored text, in the order the shift index numbers them (item i = entry i)."""
    return [(b, row) for b in sorted(lengths) for row in range(len(lengths[b]))]


# A Match's bucket for a text admitted from traffic (store/admission.py; no built bucket is 0 long).
ADMITTED_BUCKET = 0


class DocumentIndex:
    """Stored token ids grouped by true length (a text only ever matches texts of its own length)."""

    # The folder's texts admitted from traffic (admission.AdmittedStore), consulted after the built ones.
    admitted = None

    def __init__(self, tokens: dict[int, np.ndarray], lengths: dict[int, np.ndarray],
                 shifted: ShiftIndex | None = None):
        """tokens[b]: int32[count, b] ids; lengths[b]: int[count] true lengths; shifted: its shift index, if built."""
        by_length: dict[int, list[tuple[int, int]]] = {}
        for bucket, lengths_b in lengths.items():
            for row, n in enumerate(lengths_b.tolist()):
                by_length.setdefault(n, []).append((bucket, row))
        # n -> (bucket of each candidate, row of each candidate, int32[candidates, n] ids)
        self._groups = {n: (np.array([b for b, _ in places]), np.array([r for _, r in places]),
                            np.stack([tokens[b][r, :n] for b, r in places]))
                        for n, places in by_length.items()}
        self._shifted = shifted
        self._places = stored_places(lengths)
        if shifted is not None and len(shifted) != len(self._places):
            raise MemoDatabaseError(f"{shifted.folder}: indexes {len(shifted)} texts, the database stores "
                                    f"{len(self._places)}; rebuild the database.")

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

    def best(self, ids_n: np.ndarray, *, min_share: float) -> Match | None:
        """The stored text to serve ``ids_n`` from: the higher share of the two stages, None below ``min_share``.

        Position for position first (microseconds); unless that is verbatim, through the shift
        index too (~0.05 ms for a near duplicate, ~0.5 ms for a miss, shift_index.py), and the
        alignment wins only where it shares more (an equal share aligns position for position).
        """
        found = self.nearest(ids_n)
        if self._shifted is not None and (found is None or found.similarity < 1.0):
            shifted = self.aligned(ids_n, min_share=min_share)
            if shifted is not None and (found is None or shifted.similarity > found.similarity):
                found = shifted
        return found if found is not None and found.similarity >= min_share else None

    @property
    def aligns(self) -> bool:
        """Whether queries can be matched under insertions and deletions (a shift index was built)."""
        return self._shifted is not None

    def aligned(self, ids_n: np.ndarray, *, min_share: float) -> Match | None:
        """The stored text (any length) best aligned with ``ids_n``, None below ``min_share`` or without a shift index."""
        if self._shifted is None:
            return None
        found = self._shifted.nearest(ids_n, min_share=min_share)
        if found is None:
            return None
        bucket, row = self._places[found.row]
        return Match(bucket, row, found.share, found.alignment)


def load_tokens(path, count: int, *, bucket: int) -> np.ndarray:
    try:
        tokens = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MemoDatabaseError(f"{path}: unreadable token table ({error}); rebuild the database.") from error
    if tokens.shape != (count, bucket) or tokens.dtype != np.int32:
        raise MemoDatabaseError(f"{path}: expected int32[{count}, {bucket}] token ids, found "
                                f"{tokens.dtype}{list(tokens.shape)}; rebuild the database.")
    return tokens
