"""MemoGate: what does the memo database serve for this run?

    use_memo_L, use_doc_L, match_BM = MemoGate(shape_of_hidden, ids_BS, mask_BS, types_BS)

shape: int64[3] = [B, S, D]; ids_BS, mask_BS, types_BS: int64 token ids, attention mask
and token types, each int64[0, 0] when the model has no such input (no ``input_ids``:
no document key; no mask: no padding; no token types: one segment).
use_memo_L bool[L]: the per-layer learned-key lookups (MemoLookup) that may hit.
use_doc_L bool[L]: layers where the document key serves at least one sequence.
match_BM int64[B, M]: each sequence's document match (store/document_executor.py),
which MemoFetch turns into stored attention inside the served layers.

One call per model run, before the first attention layer; it reads only the shape and
the ids (a few KB). A layer whose flags are both false takes the native exact path.
"""

from __future__ import annotations

import numpy as np

from . import bridge, registry
from .ortx import PyCustomOpDef, onnx_op

DOMAIN = "attmemo.runtime"


def memo_gate(shape: np.ndarray, ids_BS: np.ndarray, mask_BS: np.ndarray, types_BS: np.ndarray, *, layers: int,
              model_id: str):
    memo = registry.memo_for(model_id)
    if memo is None or shape.shape != (3,):
        return _exact(shape, ids_BS, layers=layers)
    batch, seq_len, _ = (int(d) for d in shape)
    use_memo = np.array([bool(memo.serves(layer, batch, seq_len)) for layer in range(layers)])
    executor = getattr(memo, "executor", None)
    if executor is None or np.size(ids_BS) == 0:
        return use_memo, np.zeros(layers, bool), _NO_MATCH
    match = executor.match(ids_BS, mask_BS, types_BS, layers=layers)
    return use_memo, match[:, -layers:].any(axis=0), match


# No layer fetches when use_doc is all false, so "no match" need not have the match's layout.
_NO_MATCH = np.full((1, 1), -1, np.int64)


def _exact(shape, ids_BS=None, *_inputs, layers: int = 0, **_attrs):
    layers = max(int(layers), 1)
    return np.zeros(layers, bool), np.zeros(layers, bool), _NO_MATCH


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoGate",
    inputs=[PyCustomOpDef.dt_int64] * 4,
    outputs=[PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_int64],
    attrs={"layers": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_gate)
bridge.register(_opdef, output_dtypes=(np.bool_, np.bool_, np.int64), fallback=_exact)
