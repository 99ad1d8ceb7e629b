"""The memo key's pooling, as native nodes: hidden [B, S, D] -> features [B, F].

    features_BF = pool(hidden_BSD, mask_BS)      F = P * (D // G)

For each sequence, its n real tokens (mask 1, wherever they sit) are averaged
into P equal position segments, then every G adjacent hidden units are
averaged: exactly attmemo.store.keys.pool, which the database build uses on
recorded hidden states. Doing it in the graph means the Python lookup receives
F floats instead of S x D (at S = 512, MiniLM: 768 instead of 196,608) and
does no large numpy work inside onnxruntime's run, where it measured 3x
slower than in isolation.

Segment p of n tokens covers ranks [start_p, end_p) with
start_p = min(floor(p n / P), n - 1) and end_p = max(floor((p + 1) n / P), start_p + 1).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attmemo.store.keys import POOL_HIDDEN, POOL_SEGMENTS


class _Builder:
    def __init__(self, prefix: str):
        self.nodes: list[ir.Node] = []
        self.prefix = prefix

    def __call__(self, op: str, *inputs: ir.Value, **attrs) -> ir.Value:
        attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()]
        node = ir.Node("", op, list(inputs), attributes,
                       outputs=[ir.Value(name=f"{self.prefix}{len(self.nodes)}.{op}")])
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray) -> ir.Value:
        return self("Constant", value=ir.tensor(array))


def pooled_features(hidden_BSD: ir.Value, mask_BS: ir.Value, *, opset: int = 18,
                    prefix: str = "key.") -> tuple[list[ir.Node], ir.Value]:
    """Nodes computing float32 [B, F] key features; mask_BS is int64 (1 = real token).

    opset: the model's default-domain opset (13 or later); every node is valid there.
    """
    op = _Builder(prefix)
    mask = op("Cast", mask_BS, to=ir.DataType.FLOAT)                                   # [B, S]
    n = op("ReduceSum", mask, op.const(np.array([1], np.int64)), keepdims=1)          # [B, 1]
    rank = op("Sub", op("CumSum", mask, op.const(np.array(1, np.int64))), op.const(np.float32(1)))  # [B, S]
    p = op.const(np.arange(POOL_SEGMENTS, dtype=np.float32))                           # [P]
    segments = op.const(np.float32(POOL_SEGMENTS))
    start = op("Min", op("Floor", op("Div", op("Mul", p, n), segments)), op("Sub", n, op.const(np.float32(1))))
    end = op("Max", op("Floor", op("Div", op("Mul", op("Add", p, op.const(np.float32(1))), n), segments)),
             op("Add", start, op.const(np.float32(1))))                                # [B, P]
    axis = op.const(np.array([2], np.int64))
    rank_B1S = op("Unsqueeze", rank, op.const(np.array([1], np.int64)))
    inside = op("And", op("GreaterOrEqual", rank_B1S, op("Unsqueeze", start, axis)),
                op("Less", rank_B1S, op("Unsqueeze", end, axis)))                       # [B, P, S]
    real = op("Unsqueeze", mask, op.const(np.array([1], np.int64)))                    # [B, 1, S]
    weights = op("Div", op("Mul", op("Cast", inside, to=ir.DataType.FLOAT), real),
                 op("Unsqueeze", op("Sub", end, start), axis))                         # [B, P, S]
    means = op("MatMul", weights, hidden_BSD)                                          # [B, P, D]
    # Shape + Slice, not Shape(start=2): Shape's start needs opset 15.
    d = op("Slice", op("Shape", hidden_BSD), axis, op.const(np.array([3], np.int64)))  # [1] = D: shape[2:3]
    group = op.const(np.array([POOL_HIDDEN], np.int64))
    d_used = op("Mul", op("Div", d, group), group)
    used = op("Slice", means, op.const(np.array([0], np.int64)), d_used, axis)         # [B, P, D']
    grouped = op("Reshape", used, op.const(np.array([0, 0, -1, POOL_HIDDEN], np.int64)))
    if opset >= 18:
        pooled = op("ReduceMean", grouped, op.const(np.array([3], np.int64)), keepdims=0)  # [B, P, D'/G]
    else:  # axes were an attribute before opset 18
        pooled = op("ReduceMean", grouped, axes=[3], keepdims=0)
    features = op("Reshape", pooled, op.const(np.array([0, -1], np.int64)))            # [B, F]
    return op.nodes, features
