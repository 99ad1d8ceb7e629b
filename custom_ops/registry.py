"""Which memo database serves which model, for the ops running inside sessions.

A PyOp is a process-wide Python function; it cannot see the SessionOptions of
the session calling it. Each rewritten model therefore carries a ``model_id``
attribute on its MemoAttention nodes, and :func:`attach` maps that id to a
database. No entry means "no database": every layer computes exactly.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class Memo(Protocol):
    """What the ops need from a memo database (see attmemo.store)."""

    def serves(self, layer: int, batch: int, seq_len: int) -> bool:
        """Cheap check before any lookup: is memoization on for this layer and shape?"""

    def lookup(self, layer: int, features_BF: np.ndarray, mask_BS: np.ndarray | None):
        """Return (hit_B bool[B], stored_BHSS uint16 unorm16) for one batch of pooled key features."""

    # Optional: ``executor``, the document key's executor (store/document_executor.py) that
    # MemoGate asks once per run and MemoFetch delivers from; without it the key is not served.


# Metadata key of a rewritten model's weights fingerprint; its MemoAttention nodes carry the
# same value as ``model_id``, and a database's manifest names the model it was built for by it.
MODEL_ID_KEY = "attmemo.model_id"
# Metadata key of a rewritten model's MemoAttention layer count (a database may not name more).
LAYERS_KEY = "attmemo.layers"

_lock = threading.Lock()
_memos: dict[str, Memo] = {}


def attach(model_id: str, memo: Memo) -> None:
    with _lock:
        _memos[model_id] = memo


def detach(model_id: str) -> None:
    with _lock:
        _memos.pop(model_id, None)


def memo_for(model_id: str) -> Memo | None:
    return _memos.get(model_id)
