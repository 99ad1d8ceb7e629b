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

import logging

import numpy as np
from .ortx import PyCustomOpDef, onnx_op

from . import bridge, registry
from .memo_gate import DOMAIN

log = logging.getLogger(__name__)

_NOTHING = np.zeros((1, 1, 1, 1), dtype=np.uint16)
_FALSE = np.zeros(1, dtype=bool)


def memo_lookup(features_BF: np.ndarray, mask_BS: np.ndarray, *, layer: int, model_id: str):
    memo = registry.memo_for(model_id)
    if memo is None:
        return _exact(features_BF)
    hit_B, stored_BHSS = memo.lookup(layer, features_BF, mask_BS)
    return checked(memo, layer, hit_B, stored_BHSS, mask_BS, dtype=np.uint16, exact=lambda *_: _exact(features_BF))


def checked(memo, layer: int, hit_B, stored_BHSS, mask_BS, *, dtype, exact):
    """The op's outputs for a lookup's result, or ``exact()``'s when the result must not enter the graph."""
    problem = _unusable_result(hit_B, stored_BHSS, mask_BS, heads=_heads(memo, layer), dtype=np.dtype(dtype))
    if problem is not None:
        _fall_back(memo, layer, problem, sequences=len(mask_BS) if np.ndim(mask_BS) == 2 else 1)
        return exact()
    if not hit_B.any():
        return exact()
    return hit_B.reshape(-1, 1, 1, 1), np.ones(1, dtype=bool), np.array([bool(hit_B.all())]), stored_BHSS


def _unusable_result(hit_B, stored_BHSS, mask_BS: np.ndarray, *, heads: int | None, dtype: np.dtype) -> str | None:
    """Why a lookup's result must not enter the graph, or None if it may.

    hit_B must be bool[B] and, if anything hit, stored_BHSS ``dtype``[B, H, S, S]
    with B, S from the mask and H from the database (any H if the memo does
    not say). The graph would take other shapes: [1, H, S, S] broadcasts over
    the batch and [B, 1, S, S] over the heads in its Where and MatMul, silently
    giving wrong output; another dtype would be cast by the bridge.
    """
    if np.ndim(mask_BS) != 2:
        return f"the mask is {_describe(mask_BS)}, not [B, S]"
    batch, size = mask_BS.shape
    if not (isinstance(hit_B, np.ndarray) and hit_B.dtype == np.bool_ and hit_B.shape == (batch,)):
        return f"the hit flags are {_describe(hit_B)}, not bool[{batch}]"
    if not hit_B.any():
        return None   # stored_BHSS is not used
    if heads is None and np.ndim(stored_BHSS) == 4:
        heads = np.shape(stored_BHSS)[1]
    expected = (batch, heads, size, size)
    if not (isinstance(stored_BHSS, np.ndarray) and stored_BHSS.dtype == dtype and stored_BHSS.shape == expected):
        return f"the stored probabilities are {_describe(stored_BHSS)}, not {dtype}{list(expected)}"
    return None


# Optional parts of a memo: MemoDatabase has both, registry.Memo does not require them
# (the in-test memos of tests/test_memo_paths.py have neither).

def _heads(memo, layer: int) -> int | None:
    heads = getattr(memo, "heads", None)
    return heads(layer) if heads is not None else None


_logged: set[tuple[int, str]] = set()


def _fall_back(memo, layer: int, reason: str, *, sequences: int) -> None:
    """Count and log the refused result once per layer (through the memo, which owns the counters)."""
    fall_back = getattr(memo, "fall_back", None)
    if fall_back is not None:
        fall_back(layer, "result", f"unusable lookup result: {reason}", sequences=sequences)
    elif (layer, reason) not in _logged:
        _logged.add((layer, reason))
        log.warning("memo layer %s: unusable lookup result: %s; computing exactly (logged once)", layer, reason)


def _describe(array) -> str:
    return f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__


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
