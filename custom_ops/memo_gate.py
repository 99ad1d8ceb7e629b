"""MemoGate: which layers does a memo database serve for this input shape?

    use_memo_L = MemoGate(shape_of_hidden)      shape: int64[3] = [B, S, D] -> bool[L]

One call per model run, before the first attention layer. It reads only the
3-element shape (a large input would be copied into Python on every call); a
layer whose flag is false takes the native exact path inside its ``If``.
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from . import bridge, registry

DOMAIN = "attmemo.runtime"


def memo_gate(shape: np.ndarray, *, layers: int, model_id: str) -> np.ndarray:
    memo = registry.memo_for(model_id)
    if memo is None or shape.shape != (3,):
        return _exact(layers=layers)
    batch, seq_len, _ = (int(d) for d in shape)
    return np.array([bool(memo.serves(layer, batch, seq_len)) for layer in range(layers)])


def _exact(*_inputs, layers: int = 0, **_attrs) -> np.ndarray:
    return np.zeros(max(int(layers), 1), dtype=bool)


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoGate",
    inputs=[PyCustomOpDef.dt_int64],
    outputs=[PyCustomOpDef.dt_bool],
    attrs={"layers": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_gate)
bridge.register(_opdef, output_dtypes=(np.bool_,), fallback=_exact)
