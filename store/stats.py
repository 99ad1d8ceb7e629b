"""Per-layer counters of a memo database: lookups, hits, fallbacks, seconds spent looking up."""

from __future__ import annotations

import threading
from collections import defaultdict


class MemoStats:
    """Thread-safe; every count is of sequences, not batches.

    lookups: sequences looked up; hits: of those, the ones that reused stored
    attention; fallbacks: sequences computed exactly because the lookup failed
    or its input or result was unusable (an error, unexpected shapes or dtypes,
    NaN/Inf). A healthy database keeps fallbacks at 0; each kind of failure is
    logged only once, so this is where repeats show.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: dict[int, dict] = defaultdict(
            lambda: {"lookups": 0, "hits": 0, "fallbacks": 0, "lookup_seconds": 0.0})

    def record(self, layer: int, *, lookups: int, hits: int, seconds: float) -> None:
        with self._lock:
            entry = self._layers[layer]
            entry["lookups"] += lookups
            entry["hits"] += hits
            entry["lookup_seconds"] += seconds

    def count_fallbacks(self, layer: int, sequences: int) -> None:
        with self._lock:
            self._layers[layer]["fallbacks"] += sequences

    def snapshot(self) -> dict[int, dict]:
        """{layer: {"lookups": int, "hits": int, "fallbacks": int, "lookup_seconds": float}}, a copy."""
        with self._lock:
            return {layer: dict(entry) for layer, entry in sorted(self._layers.items())}

    def reset(self) -> None:
        with self._lock:
            self._layers.clear()
