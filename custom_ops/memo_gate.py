"""MemoGate: does a memo database serve this layer for this input shape?

    use_memo = MemoGate(shape_of_hidden)          shape: int64[3] = [B, S, D]

Returns a bool scalar. It runs before every attention core, so it reads only
the 3-element shape (a large input would be copied into Python on every
call), and the graph's ``If`` takes the native exact path when it is false.
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from . import bridge, registry

DOMAIN = "attmemo.runtime"


def memo_gate(shape: np.ndarray, *, layer: int, model_id: str) -> np.ndarray:
    memo = registry.memo_for(model_id)
    if memo is None or shape.shape != (3,):
        return np.array([False])
    batch, seq_len, _ = (int(d) for d in shape)
    return np.array([bool(memo.serves(layer, batch, seq_len))])


def _exact(*_inputs, **_attrs) -> np.ndarray:
    return np.array([False])


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoGate",
    inputs=[PyCustomOpDef.dt_int64],
    outputs=[PyCustomOpDef.dt_bool],
    attrs={"layer": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_gate)
bridge.register(_opdef, output_dtypes=(np.bool_,), fallback=_exact)
