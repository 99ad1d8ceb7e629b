"""Is the nearest stored entry a hit?

similarity = 1 - distance, where distance is the key network's prediction of
the mean total-variation distance between the two attention matrices (0 =
identical, 1 = disjoint), so similarity lies in (-inf, 1]. A hit also needs
the same true token count: a matrix of another length does not describe this
sequence's positions (the index already puts such rows at distance >= 1).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class HitPolicy:
    threshold: float   # in (0, 1]; 0.9 reuses only near-identical attention

    def similarity(self, distance: float) -> float:
        return 1.0 - distance

    def is_hit(self, *, distance: float, stored_length: int, query_length: int) -> bool:
        return stored_length == query_length and self.similarity(distance) >= self.threshold
