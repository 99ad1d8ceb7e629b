"""The document key at run time: one lookup per run, before the model runs.

``attmemo.InferenceSession.run`` asks ``DocumentTier.feeds`` first. One unpadded
sequence (batch 1, attention mask all ones, token types all zero) whose ids
match a stored text of the same length at >= ``threshold`` of its positions
(store/documents.py) gets the feeds of the fed model (transforms.unfuse.fed_model)
of the layers the choice serves at that match (store/serving.Documents.served):
each receives that text's stored attention and skips its Q/K projections,
Q·K^T and softmax. Anything else gets None and runs the model as
usual, so a miss costs the comparison alone (~10-50 us).

Why before the run and not per layer inside it: a per-layer hit pays a Python
op call, a learned-key lookup and a copy of P out of the op (~0.9 ms per MiniLM
layer at 256 tokens, of the ~1.5 ms it saves). Fed as graph inputs, a float16
store is read in place and cast natively (store/values.py).

Never raises into the caller's run: an unexpected error is logged once and
counted as a fallback, and the run computes as if nothing matched.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from attmemo.store.serving import Documents


def fed_input(layer: int) -> str:
    """Name of the fed model's input carrying ``layer``'s stored attention (transforms.unfuse.fed_model)."""
    return f"attmemo.stored_probs.{layer}"


class DocumentTier:
    def __init__(self, database, choice: Documents):
        self.database, self.choice = database, choice
        # Per thread, the buffers stored attention is copied into when it cannot be fed in
        # place (values.ValueFile.fed): fresh arrays would page-fault on every run (~0.2 ms per 3 MB).
        self._local = threading.local()

    def feeds(self, input_feed: dict) -> tuple[tuple[int, ...], dict] | None:
        """(the layers that reuse, the feeds of their fed model) if a stored text matches ``input_feed``, else None."""
        ids = single_sequence(input_feed)
        if ids is None:
            return None
        layers = self.choice.every_layer
        start = time.perf_counter()
        try:
            match = self.database.documents.nearest(ids)
            if match is None:   # no stored text of this length: nothing was looked up
                return None
            served = self.choice.served(match.similarity)
            found = (served, {**input_feed, **self._stored(match, len(ids), served)}) if served else None
        except Exception as error:  # noqa: BLE001 - a lookup failure must cost only the reuse
            self.database.fall_back(layers[0], type(error).__name__, f"document lookup failed ({error})",
                                    sequences=1, error=error)
            return None
        seconds = (time.perf_counter() - start) / len(layers)
        for layer in layers:
            self.database.stats.record(layer, lookups=1, hits=int(layer in served), seconds=seconds)
        return found

    def _stored(self, match, n: int, layers: tuple[int, ...]) -> dict[str, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None or buffers[0] != n:
            buffers = self._local.buffers = (n, {})
        fed = {}
        for layer in layers:
            out = buffers[1].get(layer)
            if out is None:
                out = buffers[1][layer] = np.empty((1, self.database.heads(layer), n, n), self.database.codec.fed_dtype)
            fed[fed_input(layer)] = self.database.fed_probs(layer, match.bucket, match.row, n, out)
        return fed


def single_sequence(input_feed: dict) -> np.ndarray | None:
    """The ids of a batch-1, unpadded, single-segment input; None for anything else."""
    ids = input_feed.get("input_ids")
    if not (isinstance(ids, np.ndarray) and ids.ndim == 2 and ids.shape[0] == 1 and ids.shape[1] > 0
            and ids.dtype.kind in "iu"):
        return None
    mask = input_feed.get("attention_mask")
    if mask is not None and not (isinstance(mask, np.ndarray) and mask.shape == ids.shape and mask.all()):
        return None
    types = input_feed.get("token_type_ids")
    if types is not None and not (isinstance(types, np.ndarray) and types.shape == ids.shape and not types.any()):
        return None
    return ids[0]
