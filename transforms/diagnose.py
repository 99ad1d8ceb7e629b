"""Why a Softmax was not rewritten: one phrase per unmatched layer, for error messages."""

from __future__ import annotations

import onnx_ir as ir

# One attention op hides P; what to do depends on who fused it.
_FUSED = {
    # ONNX Attention (opset 23): torch's dynamo exporter emits it for SDPA at opset >= 23.
    ("", "Attention"): "is a fused ONNX Attention op (opset >= 23), which hides the probabilities; "
                       "export with opset 18-22 or eager attention (attmemo-export does)",
    # onnxruntime.transformers.optimizer with its default FusionOptions.
    ("com.microsoft", "Attention"): "was fused into com.microsoft Attention by onnxruntime's transformer optimizer, "
                                    "which hides the probabilities; optimize again with --disable_attention "
                                    "(FusionOptions.enable_attention = False)",
    ("com.microsoft", "MultiHeadAttention"): "was fused into com.microsoft MultiHeadAttention by onnxruntime's "
                                             "transformer optimizer, which hides the probabilities; optimize again "
                                             "with --disable_attention (FusionOptions.enable_attention = False)",
}


def fused_attention(model: ir.Model) -> str | None:
    """Why the model's attention cannot be memoized when one fused op computes it, else None."""
    for node in model.graph:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) in _FUSED:
            return f"attention {_FUSED[domain, node.op_type]}"
    return None

# Ops an exporter puts between Q·K^T and Softmax (scale, bias, mask, reshape) or after it.
_SCORE_OPS = {"Add", "Div", "Mul", "Where", "Reshape", "Sub"}
_PROB_OPS = {"Where", "IsNaN", "Reshape", "Cast"}


def why_not_attention(softmax: ir.Node) -> str:
    probs = softmax.outputs[0]
    axis = softmax.attributes.get_int("axis", -1)
    rank = len(probs.shape) if probs.shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        return f"it normalises axis {axis}, not the last (key) axis"
    if probs.is_graph_output():
        return "its probabilities are a model output"
    if not _feeds_matmul(probs):
        return "its output does not feed a MatMul with V"
    scores = _find_scores(softmax.inputs[0])
    if scores is None:
        return "its input is not a (scaled, masked) Q·K^T MatMul"
    if not any(_moves_last_axis(n) for n in _producers(scores.inputs[1], depth=3)):
        return "the key side of its Q·K^T MatMul is not a transposed K"
    return "its score chain has an op sequence no exporter variant we know produces"


def _feeds_matmul(value: ir.Value, depth: int = 3) -> bool:
    for use in value.uses():
        if use.node.op_type == "MatMul" and use.idx == 0:
            return True
        if depth and use.node.op_type in _PROB_OPS and _feeds_matmul(use.node.outputs[0], depth - 1):
            return True
    return False


def _find_scores(value: ir.Value | None, depth: int = 6) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or depth == 0:
        return None
    if node.op_type == "MatMul":
        return node
    if node.op_type not in _SCORE_OPS:
        return None
    for v in node.inputs:
        found = _find_scores(v, depth - 1)
        if found is not None:
            return found
    return None


def _producers(value: ir.Value | None, depth: int) -> list[ir.Node]:
    node = value.producer() if value is not None else None
    if node is None or depth == 0:
        return []
    return [node] + [p for v in node.inputs for p in _producers(v, depth - 1)]


def _moves_last_axis(node: ir.Node) -> bool:
    """A Transpose that puts the sequence axis last, as K^T needs (a head split alone does not)."""
    if node.op_type != "Transpose":
        return False
    perm = node.attributes.get_ints("perm", None)
    return perm is not None and perm[-1] != len(perm) - 1
