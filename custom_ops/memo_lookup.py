"""MemoLookup: fetch stored attention probabilities for the sequences that hit.

    hit_B111, any_hit, all_hit, stored_BHSS = MemoLookup(features_BF, mask_BS)

B batch, S sequence, H heads, F key features. ``features_BF`` is the layer's
input hidden states pooled natively by the graph (transforms/key_pooling.py),
``mask_BS`` the int64 attention mask (1 = real token).
``hit_B111`` says per sequence whether ``stored_BHSS`` holds its reused
probabilities; ``any_hit`` / ``all_hit`` (bool[1]) let the graph skip the
merge when a batch is all-miss or all-hit. ``stored`` is unorm16 (uint16, rows
sum to 65535, see attmemo.store.values): the graph decodes it natively. When
nothing hits it is a 1x1x1x1 zero, so no large tensor crosses the bridge.
"""

from __future__ import annotations

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from . import bridge, registry
from .memo_gate import DOMAIN

_NOTHING = np.zeros((1, 1, 1, 1), dtype=np.uint16)
_FALSE = np.zeros(1, dtype=bool)


def memo_lookup(features_BF: np.ndarray, mask_BS: np.ndarray, *, layer: int, model_id: str):
    memo = registry.memo_for(model_id)
    if memo is None:
        return _exact(features_BF)
    hit_B, stored_BHSS = memo.lookup(layer, features_BF, mask_BS)
    if not hit_B.any():
        return _exact(features_BF)
    return hit_B.reshape(-1, 1, 1, 1), np.ones(1, dtype=bool), np.array([bool(hit_B.all())]), stored_BHSS


def _exact(features_BF: np.ndarray, *_inputs, **_attrs):
    batch = features_BF.shape[0] if features_BF.ndim == 2 else 1
    return np.zeros((batch, 1, 1, 1), dtype=bool), _FALSE, _FALSE, _NOTHING


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoLookup",
    inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64],
    outputs=[PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_uint16],
    attrs={"layer": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_lookup)
bridge.register(_opdef, output_dtypes=(np.bool_, np.bool_, np.bool_, np.uint16), fallback=_exact)
