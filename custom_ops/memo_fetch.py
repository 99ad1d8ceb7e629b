"""MemoFetch: one layer's stored attention for the sequences the document key serves there.

    hit_B111, any_hit, all_hit, stored_BHSS = MemoFetch(match_BM, mask_BS)

match_BM comes from the run's MemoGate (store/document_executor.py); mask_BS is the
int64 attention mask, read for S. ``stored_BHSS`` is float32 [B, H, S, S] (the one copy
into onnxruntime is the bridge's memcpy: a float32 store needs no conversion); rows of
sequences not served are zero and replaced by the exact ones in the graph. Anything
unusable selects the exact path (the op never raises: that would abort the process).
"""

from __future__ import annotations

import numpy as np

from . import bridge, registry
from .memo_gate import DOMAIN
from .memo_lookup import checked
from .ortx import PyCustomOpDef, onnx_op

_NOTHING = np.zeros((1, 1, 1, 1), np.float32)
_FALSE = np.zeros(1, dtype=bool)


def memo_fetch(match_BM: np.ndarray, mask_BS: np.ndarray, *, layer: int, model_id: str):
    memo = registry.memo_for(model_id)
    executor = getattr(memo, "executor", None)
    if executor is None or np.ndim(mask_BS) != 2 or np.ndim(match_BM) != 2 or len(match_BM) != len(mask_BS):
        return _exact(match_BM, mask_BS)
    try:
        hit_B, stored_BHSS = executor.deliver(layer, match_BM, mask_BS.shape[1])
    except Exception as error:  # noqa: BLE001 - an exception in a Python op aborts the process
        memo.fall_back(layer, type(error).__name__, f"document fetch failed ({error})", sequences=len(mask_BS),
                       error=error)
        return _exact(match_BM, mask_BS)
    return checked(memo, layer, hit_B, stored_BHSS, mask_BS, dtype=np.float32, exact=_exact)


def _exact(match_BM=None, mask_BS=None, *_inputs, **_attrs):
    batch = len(mask_BS) if np.ndim(mask_BS) == 2 else 1
    return np.zeros((batch, 1, 1, 1), dtype=bool), _FALSE, _FALSE, _NOTHING


_opdef = onnx_op(
    op_type=f"{DOMAIN}::MemoFetch",
    inputs=[PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int64],
    outputs=[PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_bool, PyCustomOpDef.dt_float],
    attrs={"layer": PyCustomOpDef.dt_int64, "model_id": PyCustomOpDef.dt_string},
)(memo_fetch)
bridge.register(_opdef, output_dtypes=(np.bool_, np.bool_, np.bool_, np.float32), fallback=_exact)
