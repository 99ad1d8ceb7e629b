"""Reuse a stored text's attention for an edited query, through a token alignment, natively.

H heads, n query tokens, m stored tokens, d head size; a, b, r as in store/align.py:
a(i) stored position of query token i (-1 inserted), b(k) query position of stored
token k (-1 lost), r(i) the stored row query token i reads.

The remapped attention (the definition, ``remapped_probs``):

    P_q[i, j] = P_s[r(i), a(j)] / Z_i   where a(j) >= 0, 0 for an inserted column j
    Z_i       = sum over stored columns k that survive (b(k) >= 0) of P_s[r(i), k]

is never built. Each served layer computes its context on the stored positions instead:

    V1_BHnD   = [V_BHnd | 1]                            a ones column: D = d + 1
    VS_BHmD   = Gather(Pad(V1, one zero row), COLUMNS)  row k = V1[b(k)], zeros where lost
    R_BHmD    = P_s_BHmm @ VS                           one MatMul of the stored matrix as fed
    RQ_BHnD   = Gather(R, ROWS)                         row i = R[r(i)]
    context   = RQ[..., :d] / max(RQ[..., d], tiny)     the last column is Z_i

so the cost is the oracle's P·V plus gathers of V-sized tensors. A scale on P_s that is
constant per row cancels in the division, so a unorm16 store (round(P * 65535), widened)
needs no 1/65535, a log4 store (rows relative to their largest entry) no renormalisation,
and a float16 or log-coded store is decoded natively as in ``fed_model``.

Graph inputs added: ROWS int64[n] (r), COLUMNS int64[m] (b, with n where lost),
shared by every served layer; each served layer's stored P_s [1, H, m, m] comes in
the input ``fed_model`` names (``names.fed_input(layer)``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from attmemo.store.align import Alignment

from .names import ALIGNED_COLUMNS as COLUMNS, ALIGNED_ROWS as ROWS
from .unfuse import dense_probs, fed_model, memo_calls

# A row whose surviving columns hold no stored mass (all it attended to was deleted)
# gets a zero context rather than NaN; Z is a sum of probabilities, so 1e-30 never
# distorts a real one.
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class _Unscaled:
    """What ``fed_model`` needs of a codec: the division by Z cancels any per-row scale on P."""
    fed_dtype: np.dtype
    log: object = None        # store.log_codes.LogCodes of a log-coded store
    fed_scale: None = None


def aligned_fed_model(model: ir.Model, layers, *, fed_dtype=np.float32, codec=None) -> list[str]:
    """Rewrite ``model`` (a MemoAttention model) in place so ``layers`` reuse stored P through an alignment.

    fed_dtype: float32 or float16, the dtype of the stored P_s inputs [1, H, m, m]; or
    codec: a store's codec (store/values.py), whose inputs the layers then read as stored
    (log codes: uint8 [1, H, m, codec.columns(m)]). Other layers compute exactly. Returns
    the stored-P input names, in layer order; the model also gains the inputs ROWS and
    COLUMNS (attmemo.document_tier.alignment_feeds). Raises ValueError if a served layer
    does not multiply P by V in one MatMul.
    """
    unscaled = _Unscaled(np.dtype(codec.fed_dtype if codec is not None else fed_dtype),
                         getattr(codec, "log", None))
    served = [call.attributes.get_int("layer") for call in memo_calls(model)
              if call.attributes.get_int("layer") in set(layers)]
    names = fed_model(model, layers, unscaled, renormalise=False)   # in the order of ``served``
    rows = ir.Value(name=ROWS, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["sequence"]))
    columns = ir.Value(name=COLUMNS, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["stored"]))
    model.graph.inputs.extend([rows, columns])
    stored_shape = ir.Shape(["batch", None, "stored", "stored"])
    for layer, name in zip(served, names):
        fed = next(v for v in model.graph.inputs if v.name == name)
        fed.shape = stored_shape if unscaled.log is None else ir.Shape(["batch", None, "stored", None])  # m, not n
        probs = dense_probs(model, layer)
        probs.shape = stored_shape
        matmul = _matmul_of(probs, name)
        _context_on_stored_positions(model.graph, matmul, rows, columns, prefix=name.replace("stored_probs", "aligned"))
    return names


def remapped_probs(stored_Hmm: np.ndarray, alignment: Alignment) -> np.ndarray:
    """float32[H, n, n]: the explicit remapped attention (the module docstring's P_q), a test oracle."""
    a = alignment.stored_of_query
    kept = a >= 0
    probs = stored_Hmm[:, alignment.rows][:, :, np.where(kept, a, 0)] * kept
    return (probs / np.maximum(probs.sum(axis=-1, keepdims=True), _TINY)).astype(np.float32)


def _matmul_of(probs: ir.Value, name: str) -> ir.Node:
    """The one MatMul(P, V) reading the dense ``probs``; ValueError naming the input ``name`` otherwise."""
    readers = {use[0] for use in probs.uses()}
    matmuls = [node for node in readers if node.op_type == "MatMul" and node.inputs[0] is probs]
    if len(matmuls) != 1 or len(readers) != 1:
        found = ", ".join(sorted(node.op_type for node in readers)) or "nothing"
        raise ValueError(f"{name} feeds {found}, not one MatMul(P, V): this model's attention cannot "
                         "be remapped; serve it position for position (fed_model).")
    return matmuls[0]


def _context_on_stored_positions(graph: ir.Graph, matmul: ir.Node, rows: ir.Value, columns: ir.Value, *,
                                 prefix: str) -> None:
    """Replace ``matmul`` = MatMul(P_s, V) by the module docstring's chain."""
    probs, values = matmul.inputs
    nodes: list[ir.Node] = []

    def add(op: str, inputs, name: str, **attributes) -> ir.Value:
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
        node = ir.Node("", op, inputs, attrs, outputs=[ir.Value(name=f"{prefix}.{name}")], name=f"{prefix}.{name}")
        nodes.append(node)
        return node.outputs[0]

    def const(array: np.ndarray, name: str) -> ir.Value:
        return add("Constant", [], name, value=ir.tensor(array))

    batch_heads_n = add("Shape", [values], "shape_BHn", end=3)
    ones_shape = add("Concat", [batch_heads_n, const(np.array([1], np.int64), "one")], "shape_BHn1", axis=0)
    ones = add("ConstantOfShape", [ones_shape], "ones_BHn1", value=ir.tensor(np.array([1.0], np.float32)))
    with_ones = add("Concat", [values, ones], "V1_BHnD", axis=-1)
    zero_row = const(np.array([0, 0, 0, 0, 0, 0, 1, 0], np.int64), "pads")
    padded = add("Pad", [with_ones, zero_row], "V1_BHn1D")
    scattered = add("Gather", [padded, columns], "VS_BHmD", axis=2)
    on_stored = add("MatMul", [probs, scattered], "R_BHmD")
    gathered = add("Gather", [on_stored, rows], "RQ_BHnD", axis=2)
    last = const(np.array([-1], np.int64), "last")
    axis = const(np.array([3], np.int64), "axis")
    numerator = add("Slice", [gathered, const(np.array([0], np.int64), "start"), last, axis], "num_BHnd")
    end = const(np.array([np.iinfo(np.int64).max], np.int64), "end")
    total = add("Max", [add("Slice", [gathered, last, end, axis], "Z_BHn1"),
                        const(np.array(_TINY, np.float32), "tiny")], "Zsafe_BHn1")
    context = add("Div", [numerator, total], "context_BHnd")
    graph.insert_before(matmul, nodes)
    ir.convenience.replace_all_uses_with(matmul.outputs[0], context)
    graph.remove(matmul, safe=True)
