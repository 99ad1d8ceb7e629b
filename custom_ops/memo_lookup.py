"""MemoLookup: fetch stored attention probabilities for the sequences that hit.

    hit_B111, all_hit, stored_BHSS = MemoLookup(hidden_BSD, mask_BS)

B batch, S sequence, D hidden size, H heads. ``hidden_BSD`` is the layer's
input (the memo key), ``mask_BS`` the int64 attention mask (1 = real token).
``hit_B111`` says per sequence whether ``stored_BHSS`` holds its reused
probabilities; the graph merges them with exactly computed ones. When nothing
hits, ``stored`` is a 1x1x1x1 zero so no large tensor crosses the bridge.
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from . import bridge, registry
from .memo_gate import DOMAIN


def memo_lookup(hidden_BSD: np.ndarray, mask_BS: np.ndarray, *, layer: int, model_id: str):
    memo = registry.memo_for(model_id)
    if memo is None:
        return _exact(hidden_BSD)
    hit_B, stored_BHSS = memo.lookup(layer, hidden_BSD, mask_BS)
    if not hit_B.any():
        return _exact(hidden_BSD)
    return hit_B.reshape(-1, 1, 1, 1), np.array(bool(hit_B.all())), stored_BHSS


def _exact(hidden_BSD: np.ndarray, *_inputs, **_attrs):
    batch = hidden_BSD.shape[0] if hidden_BSD.ndim == 3 else 1
    return (
        np.zeros((batch, 1, 1, 1), dtype=bool),
        np.array(False),
        np.zeros((1, 1, 1, 1), dtype=np.float32),
    )


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoLookup",
    inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64],
    outputs=[PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_float],
    attrs={"layer": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_lookup)
bridge.register(_opdef, output_dtypes=(np.bool_, np.bool_, np.float32), fallback=_exact)
