"""Rewrite each layer's attention probabilities into one ``attmemo::MemoAttention`` call.

Matches   context = MatMul(P, V)   with   P = Softmax(mask + scale * (Q @ K^T))
and rewrites it to   context = MemoAttention(hidden, mask, V, ...).

Letters: B batch, H heads, S query length, L key length, d head size.

The pattern only has to *recognise* an attention core; what moves into the
function is decided structurally: every node that exists only to feed P (see
exclusive_slice.py). So the Q/K projections, reshapes, transposes, scaling,
masking and softmax all move in, whatever layout the exporter chose, and the
V projection stays out.

Exporter variants (alternatives inside one pattern, not copied rules):
- K^T: Transpose(K, perm=[0,1,3,2]) (eager export, torch.onnx), a 3-D
  Reshape/Transpose/Reshape round trip, or Transpose(K, perm=[0,2,3,1]) when the
  exporter fused the BSHd->BHSd transpose (onnxscript's SDPA fusion lists these).
- scale: Div or Mul after Q@K^T (transformers 4.57 eager / 5.x eager), or Mul/Div
  on both Q and K before it (SDPA exports split sqrt(scale) onto each).
- mask: Add(scores, bias) with the bias from a Sub/Mul or a Where chain; or none.
- guard: Where(IsNaN(P), 0, P) after Softmax (SDPA exports).
- relative position: MPNet adds a position bias shared by all layers; DeBERTa-v2
  adds c2p + p2c terms to Q@K^T/scale as [B*H, S, L], reshapes to 4-D, masks with
  Where, and reshapes P back to 3-D for a batched MatMul with V.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern

from . import memo_function
from .exclusive_slice import Slice, exclusive_slice

log = logging.getLogger(__name__)


class MemoAttentionRule(pattern.RewriteRuleClassBase):
    def __init__(self, *, model_id: str, mask: ir.Value | None, opset_imports: dict[str, int]):
        super().__init__(name="MemoAttention")
        self._model_id = model_id
        self._mask = mask
        self._opset_imports = opset_imports
        self.calls: list[tuple[ir.Node, ir.Function]] = []

    def pattern(self, op, query, key, value, mask, q_scale, k_scale, qk_scale, rel_pos):
        key_t = pattern.OrValue([
            op.Transpose(key, perm=[0, 1, 3, 2]),
            op.Reshape(op.Transpose(op.Reshape(key, pattern.ANY_VALUE), perm=[0, 2, 1]), pattern.ANY_VALUE),
            op.Transpose(key, perm=[0, 2, 3, 1]),
            op.Transpose(key, perm=[0, 2, 1]),  # 3-D batched heads (DeBERTa)
        ])
        query = pattern.OrValue([op.Mul(query, q_scale), op.Div(query, q_scale), query])
        key_t = pattern.OrValue([op.Mul(key_t, k_scale), op.Div(key_t, k_scale), key_t])
        scores = op.MatMul(query, key_t)
        scores = pattern.OrValue([op.Mul(scores, qk_scale), op.Div(scores, qk_scale), scores])
        # Relative-position terms: MPNet's shared position bias, DeBERTa's c2p + p2c.
        scores = pattern.OrValue([op.Add(scores, rel_pos), scores])
        # DeBERTa computes scores as [B*H, S, L] and reshapes to 4-D before masking.
        scores = pattern.OrValue([op.Reshape(scores, pattern.ANY_VALUE), scores])
        scores = pattern.OrValue([
            op.Add(scores, mask),
            op.Add(mask, scores),
            op.Where(mask, pattern.ANY_VALUE, scores),
            scores,
        ])
        probs = op.Softmax(scores, _outputs=["probs"])
        # NaN guard: a scalar 0 in torchlib's SDPA (dynamo), a [1]-shaped 0 in torch.onnx's
        # TorchScript SDPA symbolic with a boolean mask (torch 2.13, dynamo=False).
        zero = pattern.OrValue([pattern.Constant(0.0), pattern.Constant([0.0])])
        probs = pattern.OrValue([op.Where(op.IsNaN(probs), zero, probs), probs])
        probs = pattern.OrValue([op.Reshape(probs, pattern.ANY_VALUE), probs])
        return op.MatMul(probs, value)

    def check(self, context, probs: ir.Value, **_):
        result = pattern.MatchResult()
        softmax = probs.producer()
        rank = len(probs.shape) if probs.shape is not None else None
        axis = softmax.attributes.get_int("axis", -1)
        if axis != -1 and axis != (rank - 1 if rank is not None else None):
            return result.fail(f"Softmax normalises axis {axis}, not the last (key) axis.", probs)
        probs = _guarded(probs)
        if probs.is_graph_output() or probs.producer().inputs[0].is_graph_output():
            return result.fail("The attention probabilities are a model output; they cannot be skipped.", probs)
        graph = context.graph_or_function
        core = exclusive_slice(graph, probs)
        post = _post_nodes(graph, probs, context.root)
        hidden = _layer_input(core)
        if hidden is None:
            return result.fail("No activation feeds the Q/K projections.", probs)
        self._current = (core, post, hidden)
        return result

    def rewrite(self, op, **_):
        core, post, hidden = self._current
        layer = len(self.calls)
        function, actuals = memo_function.build_function(
            core, post, hidden=hidden, mask=self._mask, opset_imports=self._opset_imports
        )
        context, _still = op.MemoAttention(*actuals, _domain=memo_function.DOMAIN, _outputs=2,
                                           layer=layer, model_id=self._model_id)
        self.calls.append((context.producer(), function))
        log.debug("layer %d: %d nodes moved into MemoAttention", layer, len(core.nodes) + len(post.nodes))
        return context


def _guarded(probs: ir.Value) -> ir.Value:
    """Softmax output, or the Where(IsNaN(p), 0, p) guard after it when present."""
    for use in probs.uses():
        if use.node.op_type == "Where" and use.idx == 2:
            return use.node.outputs[0]
    return probs


def _post_nodes(graph: ir.Graph, probs: ir.Value, root: ir.Node) -> Slice:
    """The nodes from P to the context MatMul(P, V) that only serve it.

    Usually just the MatMul; DeBERTa adds a Reshape of P to 3-D whose target
    shape is itself computed from Shape(P), so those nodes come along too.
    """
    downstream: set[ir.Node] = set()
    frontier = [probs]
    while frontier:
        for use in frontier.pop().uses():
            if use.node not in downstream:
                downstream.add(use.node)
                frontier.extend(use.node.outputs)
    serving = exclusive_slice(graph, root.outputs[0])
    nodes = [n for n in serving.nodes if n in downstream]
    members = set(nodes)
    inputs = [v for n in nodes for v in n.inputs if v is not None and v is not probs and v.producer() not in members]
    return Slice(output=root.outputs[0], nodes=nodes, inputs=list(dict.fromkeys(inputs)))


def _layer_input(sl: Slice) -> ir.Value | None:
    """The layer's hidden states [B, S, D]: the activation the Q projection reads.

    Walk up from Q@K^T's query side, always following the first input that is
    computed at run time, until a MatMul/Gemm with a constant operand (the
    projection; for an int8 model, the float input its activations were
    quantized from). The walk may leave the slice: when something outside the slice
    also reads Q (DeBERTa's legacy export branches on Q's shape in an If), Q is
    a slice input, but the memo key must still be the layer's input.
    """
    matmuls = [n for n in sl.nodes if n.op_type == "MatMul"]
    # Q@K^T is the last MatMul of the slice (projections come before it).
    value = matmuls[-1].inputs[0] if matmuls else None
    while value is not None and value.producer() is not None:
        node = value.producer()
        activations = [v for v in node.inputs if v is not None and not _is_constant(v)]
        if node.op_type in ("MatMul", "Gemm") and len(activations) == 1:
            return activations[0]
        if node.op_type == "MatMulInteger":  # quantize_dynamic: MatMulInteger(DynamicQuantizeLinear(hidden), W_int8)
            quantize = node.inputs[0].producer()
            return quantize.inputs[0] if quantize is not None and quantize.op_type == "DynamicQuantizeLinear" else None
        value = activations[0] if activations else None
    return None


def _is_constant(value: ir.Value) -> bool:
    """A weight or constant: an initializer, a Constant, or an Identity of one (exporters dedupe weights so)."""
    producer = value.producer()
    if value.const_value is not None or value.is_initializer():
        return True
    if producer is None:
        return False
    return producer.op_type == "Constant" or (producer.op_type == "Identity" and _is_constant(producer.inputs[0]))

