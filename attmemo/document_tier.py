"""The document key's batch-1 fast path in ``attmemo.InferenceSession.run``.

One unpadded sequence (batch 1, attention mask all ones, token types all zero) whose
stored match the executor (store/document_executor.py) serves gets the feeds of the fed
model (transforms.unfuse.fed_model) of the layers served at that match: each receives the
stored attention as a graph input, read in place from the memory map when stored as
float32, and skips its Q/K projections, Q·K^T and softmax. A match found through the
shift index (the stored text after insertions and deletions) runs the aligned fed model
(transforms.aligned_feed), which carries the stored attention through the alignment on the
stored positions, without building the remapped matrix. This is the fastest door;
everything else (batches, padding, plain onnxruntime sessions) is served by the same
executor inside the graph (MemoGate / MemoFetch).

Never raises into the caller's run: an unexpected error is logged once and counted as a
fallback, and the run computes as if nothing matched.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from attmemo.store.align import Alignment
from attmemo.transforms.names import ALIGNED_COLUMNS, ALIGNED_ROWS, fed_input


class FedModel(NamedTuple):
    """Which fed model a hit runs: the one of ``layers``, aligned (transforms.aligned_feed) or position for position."""
    layers: tuple[int, ...]
    aligned: bool = False


def fed_models(plan, *, aligns: bool) -> list[FedModel]:
    """Every fed model a plan (serving.Documents) may run: per tier, and aligned too if the database ``aligns``."""
    return [FedModel(layers, aligned) for layers in plan.tiers() for aligned in ((False, True) if aligns else (False,))]


def fast_path(executor, input_feed: dict) -> tuple[FedModel, dict] | None:
    """(the fed model to run, its feeds) on a batch-1 hit, else None.

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
        if match.alignment is not None:
            feeds.update(alignment_feeds(match.alignment))
    except Exception as error:  # noqa: BLE001 - a lookup failure must cost only the reuse
        executor.database.fall_back(executor.plan.every_layer[0], type(error).__name__,
                                    f"document lookup failed ({error})", sequences=1, error=error)
        return None
    executor.count_single(served, time.perf_counter() - start)
    return FedModel(served, aligned=match.alignment is not None), feeds


def alignment_feeds(alignment: Alignment) -> dict[str, np.ndarray]:
    """The aligned fed model's gathers (transforms.aligned_feed): r as ALIGNED_ROWS, b with n where lost as ALIGNED_COLUMNS."""
    n = len(alignment.stored_of_query)
    columns = np.where(alignment.query_of_stored >= 0, alignment.query_of_stored, n)
    return {ALIGNED_ROWS: np.ascontiguousarray(alignment.rows, np.int64), ALIGNED_COLUMNS: columns.astype(np.int64)}


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
