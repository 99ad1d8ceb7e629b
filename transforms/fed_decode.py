"""Decode log-coded stored attention inside the fed model (store/log_codes.py has the numpy twin).

B batch, H heads, n tokens, c = ceil(n/2) stored bytes per row of a log4 store.

    log8: codes_BHnn uint8 --DequantizeLinear(step, zero point 255)--> x --Exp--> G_BHnn
    log4: packed_BHnc uint8 --BitwiseAnd 15--> low ---------------------\\
                            --BitShift >> 4--> high --Slice(:n - c)--> Concat(-1) --> codes_BHnn ... as log8 (zero point 15)

G is the probability for log8 and proportional to it per row for log4 (levels relative to
the row's largest entry); the caller divides P·V by G's row sums then (unfuse.fed_model).
Measured per MiniLM layer at n = 256 (12 heads; 2 cores, under load): DequantizeLinear +
Exp ~0.23 ms; the unpack ~0.4 ms more. A 16- or 256-entry table through Gather was slower
still (1.7 ms: Gather copies per index), so levels are computed, not looked up.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attmemo.store.log_codes import LogCodes

# BitwiseAnd is opset 18; before it the low nibble is x - ((x >> 4) << 4), one node more.
_BITWISE_AND_OPSET = 18


def decode_nodes(packed: ir.Value, spec: LogCodes, *, prefix: str, dense_name: str,
                 opset: int) -> tuple[list[ir.Node], ir.Value]:
    """(nodes to insert, G float32[B, H, n, n] named ``dense_name``) decoding the fed input ``packed`` (uint8)."""
    nodes: list[ir.Node] = []

    def add(op: str, inputs, name: str, **attributes) -> ir.Value:
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in attributes.items()]
        node = ir.Node("", op, inputs, attrs, outputs=[ir.Value(name=prefix + name)], name=prefix + name)
        nodes.append(node)
        return node.outputs[0]

    def const(array: np.ndarray, name: str) -> ir.Value:
        return add("Constant", [], name, value=ir.tensor(array))

    codes = packed
    if spec.bits == 4:
        four = const(np.array(4, np.uint8), "four")
        high = add("BitShift", [packed, four], "code_high", direction="RIGHT")
        if opset >= _BITWISE_AND_OPSET:
            low = add("BitwiseAnd", [packed, const(np.array(15, np.uint8), "fifteen")], "code_low")
        else:
            low = add("Sub", [packed, add("BitShift", [high, four], "code_high_back", direction="LEFT")], "code_low")
        # An odd n stores one padding code in the last high nibble: keep n - c high columns
        # (slicing the uint8 half is the cheapest place to drop it).
        rows = add("Shape", [packed], "rows", start=2, end=3)
        kept = add("Sub", [rows, add("Shape", [packed], "packed_columns", start=3, end=4)], "high_columns")
        high = add("Slice", [high, const(np.array([0], np.int64), "start"), kept,
                             const(np.array([3], np.int64), "axis")], "code_high_kept")
        codes = add("Concat", [low, high], "codes", axis=-1)
    logits = add("DequantizeLinear", [codes, const(np.array(spec.step, np.float32), "step"),
                                      const(np.array(spec.top, np.uint8), "top")], "log_level")
    dense = add("Exp", [logits], "exp")
    dense.name = dense_name
    dense.type = ir.TensorType(ir.DataType.FLOAT)
    dense.shape = ir.Shape(["batch", None, "sequence", "sequence"])
    return nodes, dense
