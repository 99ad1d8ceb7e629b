"""Per-layer counters of a memo database: lookups, hits, seconds spent looking up."""

from __future__ import annotations

import threading
from collections import defaultdict


class MemoStats:
    """Thread-safe; ``lookups`` and ``hits`` count sequences, not batches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: dict[int, dict] = defaultdict(lambda: {"lookups": 0, "hits": 0, "lookup_seconds": 0.0})

    def record(self, layer: int, *, lookups: int, hits: int, seconds: float) -> None:
        with self._lock:
            entry = self._layers[layer]
            entry["lookups"] += lookups
            entry["hits"] += hits
            entry["lookup_seconds"] += seconds

    def snapshot(self) -> dict[int, dict]:
        """{layer: {"lookups": int, "hits": int, "lookup_seconds": float}}, a copy."""
        with self._lock:
            return {layer: dict(entry) for layer, entry in sorted(self._layers.items())}

    def reset(self) -> None:
        with self._lock:
            self._layers.clear()
