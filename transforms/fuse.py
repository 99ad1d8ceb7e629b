"""fuse_memo_attention: the graph pass users run (``attmemo transform``)."""

from __future__ import annotations

import hashlib
import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnx_ir.passes.common import RemoveUnusedNodesPass

from attmemo.custom_ops.memo_gate import DOMAIN as RUNTIME_DOMAIN
from attmemo.custom_ops.registry import LAYERS_KEY, MODEL_ID_KEY

from . import memo_function
from .memo_attention import MemoAttentionRule

log = logging.getLogger(__name__)


def fuse_memo_attention(model: ir.Model) -> int:
    """Rewrite every recognised attention core of ``model`` in place.

    Returns how many layers were rewritten. The model gains one
    ``attmemo::MemoAttention`` function (or one overload per distinct layer
    body) and metadata ``attmemo.model_id`` identifying its weights, which
    memo databases are bound to.
    """
    graph = model.graph
    model_id = model.metadata_props.get(MODEL_ID_KEY) or weights_fingerprint(model)
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    rule = MemoAttentionRule(model_id=model_id, mask=mask, opset_imports=dict(graph.opset_imports))
    # remove_nodes=False: exporters let mask chains read Q·K^T's shape, so matched
    # values have uses outside the pattern. What becomes dead is removed below,
    # which is exactly the exclusive slice that moved into the function.
    rewrite = pattern.RewriteRule(rule.pattern, rule.rewrite, rule.check, name=rule.name, remove_nodes=False)
    count = pattern.RewriteRuleSet([rewrite]).apply_to_model(model)
    if count == 0:
        return 0
    _add_functions(model, rule.calls)
    calls = [node for node, _ in rule.calls]
    memo_function.add_gate(graph, calls, model_id=model_id)
    memo_function.chain_layers(graph, calls)
    RemoveUnusedNodesPass()(model)
    graph.opset_imports[memo_function.DOMAIN] = memo_function.OPSET_VERSION
    graph.opset_imports[RUNTIME_DOMAIN] = 1
    model.metadata_props[MODEL_ID_KEY] = model_id
    model.metadata_props[LAYERS_KEY] = str(count)
    return count


def _add_functions(model: ir.Model, calls: list[tuple[ir.Node, ir.Function]]) -> None:
    """One function if all layers share a body; otherwise one overload per distinct body."""
    distinct: list[ir.Function] = []
    for node, function in calls:
        match = next((f for f in distinct if memo_function.same_body(f, function)), None)
        if match is None:
            match = ir.Function(function.domain, function.name, str(len(distinct)) if distinct else "",
                                graph=function.graph, attributes=function.attributes.values())
            distinct.append(match)
        node.overload = match.overload
    for function in distinct:
        model.functions[function.identifier()] = function
    if len(distinct) > 1:
        log.info("layers need %d distinct MemoAttention bodies (overloads)", len(distinct))


def weights_fingerprint(model: ir.Model) -> str:
    """A short hash of every initializer's bytes: a database is only valid for these weights."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(model.graph.initializers):
        tensor = model.graph.initializers[name].const_value
        digest.update(name.encode())
        if tensor is not None:
            digest.update(tensor.tobytes())
    return digest.hexdigest()
