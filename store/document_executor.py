"""The document key's executor: lookup -> hit policy -> delivery of stored attention -> stats.

Every entry point that serves the document key runs this one object:

- the in-graph path of any onnxruntime session (custom_ops MemoGate and MemoFetch):
  ``match`` once per run on the batch's token ids, ``deliver`` per served layer;
- ``attmemo.InferenceSession.run``'s batch-1 fast path (the fed model): ``feeds``;
- calibration, which builds one executor per candidate plan and attaches it under a
  private model id, so it never changes what a live session serves.

B batch, S padded length, H heads, L layers of the model, n a sequence's true length.
A batch is padded at the end (attention mask ones, then zeros); a sequence padded any
other way is looked up as a miss. A match is encoded for the graph as one row per sequence,
``int64[B, MATCH_COLUMNS + L]``: (bucket, row, n, served flag of layer 0 .. L-1), with
bucket = -1 for a miss, so a run's match travels through the graph as a value and
concurrent runs of one session cannot mix their matches.

Never raises: a failure is counted as a fallback and the sequences compute exactly.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .documents import Match
from .serving import Documents

MATCH_COLUMNS = 3   # bucket, row, true length; then one served flag per layer


class DocumentExecutor:
    def __init__(self, database, plan: Documents):
        """database: a MemoDatabase with token tables; plan: which layers reuse at which match."""
        self.database, self.plan = database, plan
        # Per thread, the buffers stored attention is copied into: fresh arrays would
        # page-fault on every run (~0.2 ms per 3 MB).
        self._local = threading.local()

    # ---- lookup and hit policy -------------------------------------------------------
    def match(self, ids_BS: np.ndarray, mask_BS: np.ndarray | None, types_BS: np.ndarray | None = None, *,
              layers: int) -> np.ndarray:
        """int64[B, MATCH_COLUMNS + layers]: each sequence's stored match and the layers it serves.

        ids_BS, mask_BS, types_BS: int token ids, attention mask (None or empty: no padding)
        and token types (None or empty: one segment). A sequence with a second segment, or
        padded other than at the end, is a miss: its stored text was recorded as one segment.

        Counts a lookup in every layer the plan can serve for each sequence compared with a
        stored text (one the key cannot describe, or whose length no stored text has, costs
        no lookup), a hit where it serves that sequence (its lookup time split among them).
        """
        start = time.perf_counter()
        batch = ids_BS.shape[0] if np.ndim(ids_BS) == 2 else 0
        out = np.zeros((batch, MATCH_COLUMNS + layers), np.int64)
        out[:, 0] = -1
        looked_up = 0
        try:
            for b, (ids, n) in enumerate(_sequences(ids_BS, mask_BS, types_BS)):
                out[b, 2] = n
                found = self.database.documents.nearest(ids) if ids is not None else None
                looked_up += found is not None
                served = self.plan.served(found.similarity) if found is not None else ()
                served = [layer for layer in served if layer < layers]
                if served:
                    out[b, :2] = found.bucket, found.row
                    out[b, [MATCH_COLUMNS + layer for layer in served]] = 1
        except Exception as error:  # noqa: BLE001 - called from a Python op: an exception would abort the host
            self.database.fall_back(self.plan.every_layer[0], type(error).__name__,
                                    f"document lookup failed ({error})", sequences=batch, error=error)
            out[:, 0], out[:, MATCH_COLUMNS:] = -1, 0
        if looked_up:
            self._count(looked_up, out, time.perf_counter() - start)
        return out

    def single(self, ids_n: np.ndarray) -> tuple[tuple[int, ...], Match] | None:
        """(served layers, the stored match) for one unpadded sequence, None on a miss. Not counted.

        The match may come through the shift index, with an alignment (documents.py ``best``);
        ``feeds`` delivers it through that. Only this batch-1 path aligns: ``match`` (batches,
        plain sessions) keeps to the position key, whose stored attention the graph takes as it is.
        """
        found = self.database.documents.best(ids_n, min_share=self.plan.threshold)
        served = self.plan.served(found.similarity) if found is not None else ()
        return (served, found) if served else None

    def count_single(self, served: tuple[int, ...], seconds: float) -> None:
        layers = self.plan.every_layer
        for layer in layers:
            self.database.stats.record(layer, lookups=1, hits=int(layer in served), seconds=seconds / len(layers))

    def _count(self, looked_up: int, match: np.ndarray, seconds: float) -> None:
        layers = self.plan.every_layer
        for layer in layers:
            if MATCH_COLUMNS + layer < match.shape[1]:
                self.database.stats.record(layer, lookups=looked_up, hits=int(match[:, MATCH_COLUMNS + layer].sum()),
                                           seconds=seconds / len(layers))

    # ---- delivery --------------------------------------------------------------------
    def deliver(self, layer: int, match: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(hit_B bool[B], float32[B, H, S, S]) of ``layer`` for the sequences ``match`` serves there.

        A served sequence's real rows get its stored [n, n] block and zero on padding columns,
        its padding rows zero (no real token reads them). The blocks of sequences not served
        are left as they are: the graph takes their rows from the exact path (``Where``), so
        they are never read, and writing 3 MB of zeros per sequence and layer is not free.
        """
        hit_B = match[:, MATCH_COLUMNS + layer] == 1
        heads = self.database.heads(layer)
        if len(match) == 1 and hit_B[0] and match[0, 2] == size:
            bucket, row, n = (int(v) for v in match[0, :3])
            return hit_B, self.database.probs_float(layer, bucket, row, n, self._buffer(layer, (1, heads, n, n)))
        out = self._buffer(layer, (len(match), heads, size, size))
        for b in np.flatnonzero(hit_B):
            bucket, row, n = (int(v) for v in match[b, :3])
            target = out[b:b + 1, :, :n, :n]
            block = self.database.probs_float(layer, bucket, row, n, target)
            if block is not target:      # handed back in place from the memory map: copy it into the batch
                target[...] = block
            out[b, :, :n, n:] = 0
            out[b, :, n:, :] = 0
        return hit_B, out

    def feeds(self, ids_n: np.ndarray, served: tuple[int, ...], found: Match, name) -> dict[str, np.ndarray]:
        """The fed model's inputs for ``served`` layers: ``name(layer)`` -> [1, H, m, codec.columns(m)] stored attention.

        m = n for a position match; through an alignment, the stored text's own length (the
        aligned fed model, transforms.aligned_feed, also reads the alignment's gathers).
        """
        m, codec = (len(ids_n) if found.alignment is None else found.stored_length), self.database.codec
        fed = {}
        for layer in served:
            out = self._buffer(("fed", layer), (1, self.database.heads(layer), m, codec.columns(m)), codec.fed_dtype)
            fed[name(layer)] = self.database.fed_probs(layer, found.bucket, found.row, m, out)
        return fed

    def _buffer(self, key, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        out = buffers.get(key)
        if out is None or out.shape != shape or out.dtype != dtype:
            out = buffers[key] = np.empty(shape, dtype)
        return out


def _sequences(ids_BS: np.ndarray, mask_BS: np.ndarray | None, types_BS: np.ndarray | None):
    """Per sequence: (its ids, or None if the key cannot describe it; its true length n)."""
    if not (isinstance(ids_BS, np.ndarray) and ids_BS.ndim == 2 and ids_BS.dtype.kind in "iu"):
        return
    given = lambda a: a is not None and np.size(a) > 0  # noqa: E731 - the graph feeds int64[0, 0] for "no input"
    if any(given(a) and np.shape(a) != ids_BS.shape for a in (mask_BS, types_BS)):
        yield from ((None, 0) for _ in range(len(ids_BS)))
        return
    real_BS = mask_BS != 0 if given(mask_BS) else np.ones(ids_BS.shape, bool)
    one_segment_B = ~(types_BS != 0).any(axis=1) if given(types_BS) else np.ones(len(ids_BS), bool)
    for ids, real, n, single in zip(ids_BS, real_BS, real_BS.sum(axis=1).tolist(), one_segment_B):
        # Padding only at the end: a text padded elsewhere has its tokens at other positions.
        yield (ids[:n] if n > 0 and single and real[:n].all() else None), n
