"""The document key's batch-1 fast path in ``attmemo.InferenceSession.run``.

One unpadded sequence (batch 1, attention mask all ones, token types all zero) whose
stored match the executor (store/document_executor.py) serves gets the feeds of the fed
model (transforms.unfuse.fed_model) of the layers served at that match: each receives the
stored attention as a graph input, read in place from the memory map when stored as
float32, and skips its Q/K projections, Q·K^T and softmax. This is the fastest door;
everything else (batches, padding, plain onnxruntime sessions) is served by the same
executor inside the graph (MemoGate / MemoFetch).

Never raises into the caller's run: an unexpected error is logged once and counted as a
fallback, and the run computes as if nothing matched.
"""

from __future__ import annotations

import time

import numpy as np

from attmemo.transforms.names import fed_input


def fast_path(executor, input_feed: dict) -> tuple[tuple[int, ...], dict] | None:
    """(the layers that reuse, the feeds of their fed model) on a batch-1 hit, else None.

    A miss is not counted here: the model then runs, and its MemoGate looks the
    sequence up (and counts it) as it does for every input.
    """
    ids = single_sequence(input_feed)
    if ids is None:
        return None
    start = time.perf_counter()
    try:
        found = executor.single(ids)
        if found is None:
            return None
        served, match = found
        feeds = {**input_feed, **executor.feeds(ids, served, match, fed_input)}
    except Exception as error:  # noqa: BLE001 - a lookup failure must cost only the reuse
        executor.database.fall_back(executor.plan.every_layer[0], type(error).__name__,
                                    f"document lookup failed ({error})", sequences=1, error=error)
        return None
    executor.count_single(served, time.perf_counter() - start)
    return served, feeds


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
