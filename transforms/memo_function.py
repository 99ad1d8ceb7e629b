"""The body of the ``attmemo::MemoAttention`` function.

    context, still_out = MemoAttention(hidden_BSD, mask_BS, use_memo_L, still_in, use_doc_L, match_BM,
                                       *weights_values_and_shared_inputs)

B batch, S sequence, D hidden size, H heads, L layers, M columns of a document match.
The body keeps the model's own nodes for the exact computation, so a miss runs the
same native kernels as the unmodified export (bit-identical), and wraps them so a hit
skips them::

    # one MemoGate per run gives use_memo_L, use_doc_L and match_BM
    use_doc = use_doc_L[layer]                                         # the document key serves a sequence here
    use_memo = use_memo_L[layer] and still_in                          # a layer where nothing hit ends lookups
    context, still_out = If(use_doc or use_memo,
        then: If(use_doc,
                 then: hit, any, all, P* = MemoFetch(match_BM, mask)  # P* float32, stored attention
                       <reuse P*>                                     still_out = still_in
                 else: hit, any, all, P* = MemoLookup(pool(hidden, mask), mask)   # P* uint16
                       <reuse P* / 65535>                             still_out = any)
        else: <exact P> @ V                                           still_out = still_in)
    <reuse P*> = If(any, then: If(all, then: P* @ V,
                                       else: Where(hit, P*, <exact P>) @ V),
                         else: <exact P> @ V)

``If`` runs only the branch it takes, so with no database (or with a layer
switched off) the cost is one If per layer plus one small Python call per run. The If
returns the context [B, H, S, d], not P [B, H, S, S]: ORT copies an If's
result, and at S=512 a copy of P per layer cost ~2.5 % of the model's time.

The function has attributes ``layer`` (int) and ``model_id`` (string), which
the Python ops receive to find the layer's memo store.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from attmemo.custom_ops.memo_gate import DOMAIN as RUNTIME_DOMAIN
from attmemo.store.values import UNORM_MAX  # the stored format the graph decodes

from .exclusive_slice import Slice
from .key_pooling import pooled_features

DOMAIN = "attmemo"
NAME = "MemoAttention"
OPSET_VERSION = 1
EXACT_PROBS = "exact.probs"

_FLOAT = ir.TensorType(ir.DataType.FLOAT)


def build_function(
    core: Slice, post: Slice, *, hidden: ir.Value, mask: ir.Value | None, opset_imports: dict[str, int]
) -> tuple[ir.Function, list[ir.Value | None]]:
    """Wrap one layer's attention core into a function.

    core: the exclusive slice ending at the probabilities P_BHSS.
    post: the nodes from P to the context, ending at MatMul(P, V).
    Returns the function and the actual arguments of a call to it, in order:
    hidden, mask (or None), the gate (None until add_gate), then every other
    value core and post read.
    """
    others = [v for v in dict.fromkeys([*core.inputs, *post.inputs]) if v is not hidden and v is not mask]
    # Slots 2-5 are the gate's three outputs and the previous layer's "still hitting"
    # flag; fuse.py connects them (add_gate, chain_layers).
    actuals: list[ir.Value | None] = [hidden, mask, None, None, None, None, *others]
    formals = [ir.Value(name=f"in{i}", type=v.type if v else None, shape=v.shape if v else None)
               for i, v in enumerate(actuals)]
    outer = {actual: formal for actual, formal in zip(actuals, formals) if actual is not None}
    f_hidden, f_mask = formals[0], formals[1] if mask is not None else None
    f_gate, f_still, f_doc, f_match = formals[2:6]

    index = ir.Node("", "Constant", [], [ir.RefAttr("value_int", "layer", ir.AttributeType.INT)],
                    outputs=[ir.Value(name="layer_index")])
    flag = ir.Node("", "Gather", [f_gate, index.outputs[0]], outputs=[ir.Value(name="layer_flag")])
    use_memo = ir.Node("", "And", [flag.outputs[0], f_still], outputs=[ir.Value(name="use_memo")])
    use_doc = ir.Node("", "Gather", [f_doc, index.outputs[0]], outputs=[ir.Value(name="use_doc")])
    reuse = ir.Node("", "Or", [use_doc.outputs[0], use_memo.outputs[0]], outputs=[ir.Value(name="may_reuse")])
    # Which key: inside the branch that may reuse, so a run that reuses nothing (no database,
    # a miss) pays one If per layer, not two (two cost ~4 % of MiniLM at 128 tokens).
    which = ir.Node("", "If", [use_doc.outputs[0]], [
        ir.AttrGraph("then_branch", _document_graph(core, post, outer, f_hidden, f_mask, f_match, still=f_still)),
        ir.AttrGraph("else_branch", _lookup_graph(core, post, outer, f_hidden, f_mask,
                                                  opset=default_opset(opset_imports))),
    ], outputs=[ir.Value(name="reuse.context", type=_FLOAT),
                ir.Value(name="reuse.still_hitting", type=ir.TensorType(ir.DataType.BOOL))])
    branch = ir.Node("", "If", [reuse.outputs[0]], [
        ir.AttrGraph("then_branch", ir.Graph([], list(which.outputs), nodes=[which], name="reuse")),
        ir.AttrGraph("else_branch", _exact_graph(core, post, outer, still=f_still)),
    ], outputs=[ir.Value(name="context", type=_FLOAT),
                ir.Value(name="still_hitting", type=ir.TensorType(ir.DataType.BOOL))])

    used = dict(opset_imports)
    used[RUNTIME_DOMAIN] = 1
    graph = ir.Graph(formals, list(branch.outputs), nodes=[index, flag, use_memo, use_doc, reuse, branch],
                     opset_imports=used)
    attributes = [ir.Attr("layer", ir.AttributeType.INT, 0), ir.Attr("model_id", ir.AttributeType.STRING, "")]
    return ir.Function(DOMAIN, NAME, "", graph=graph, attributes=attributes), actuals


def chain_layers(graph: ir.Graph, calls: list[ir.Node]) -> None:
    """Connect each layer's "still hitting" output to the next layer's input.

    A batch in which no sequence hit in one memoized layer skips the lookups
    of all later layers: on inputs with no near-duplicate stored (the common
    case on diverse text) a run pays one lookup, not one per layer.
    """
    start = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array([True])))],
                    outputs=[ir.Value(name="attmemo.still_hitting", type=ir.TensorType(ir.DataType.BOOL))])
    graph.insert_before(calls[0], start)
    previous = start.outputs[0]
    for call in calls:
        call.replace_input_with(3, previous)
        previous = call.outputs[1]


def add_gate(graph: ir.Graph, calls: list[ir.Node], *, model_id: str) -> ir.Node:
    """Insert the one MemoGate of the model before its first call and connect it to every call.

        use_memo_L, use_doc_L, match_BM = MemoGate(Shape(hidden of the first layer), input_ids, mask, token types)

    One Python call per run instead of one per layer: each call costs tens of
    microseconds inside a running session, ~3 % of MiniLM at seq 128 for six. It reads
    the token ids (int64[B, S], a few KB): the document key decides there, once per run.
    """
    first = calls[0]
    shape = ir.Node("", "Shape", [first.inputs[0]], outputs=[ir.Value(name="attmemo.hidden_shape")])
    ids = _as_int64(_graph_input(graph, "input_ids"), "attmemo.ids")
    mask = _as_int64(_graph_input(graph, "attention_mask"), "attmemo.mask")
    types = _as_int64(_graph_input(graph, "token_type_ids"), "attmemo.token_types")
    gate = ir.Node(RUNTIME_DOMAIN, "MemoGate", [shape.outputs[0], ids.outputs[0], mask.outputs[0], types.outputs[0]],
                   [ir.AttrInt64("layers", len(calls)), ir.AttrString("model_id", model_id)],
                   outputs=[ir.Value(name="attmemo.use_memo", type=ir.TensorType(ir.DataType.BOOL)),
                            ir.Value(name="attmemo.use_doc", type=ir.TensorType(ir.DataType.BOOL)),
                            ir.Value(name="attmemo.match", type=ir.TensorType(ir.DataType.INT64))],
                   name="attmemo.MemoGate")
    graph.insert_before(first, [shape, ids, mask, types, gate])
    for call in calls:
        call.replace_input_with(2, gate.outputs[0])
        call.replace_input_with(4, gate.outputs[1])
        call.replace_input_with(5, gate.outputs[2])
    return gate


def _graph_input(graph: ir.Graph, name: str) -> ir.Value | None:
    return next((v for v in graph.inputs if v.name == name), None)


def _as_int64(value: ir.Value | None, name: str) -> ir.Node:
    """A node giving ``value`` as int64, or an empty int64[0, 0] (the gate's "not given")."""
    out = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT64))
    if value is None:
        return ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.zeros((0, 0), np.int64)))],
                       outputs=[out])
    return ir.Node("", "Cast", [value], [ir.AttrInt64("to", ir.DataType.INT64)], outputs=[out])


def _ref_attrs() -> list[ir.Attr]:
    return [ir.RefAttr("layer", "layer", ir.AttributeType.INT),
            ir.RefAttr("model_id", "model_id", ir.AttributeType.STRING)]


def _branch(name: str, nodes: list[ir.Node], out: ir.Value) -> ir.Graph:
    # The last node's own output is the branch output: an Identity would copy it.
    out.type = _FLOAT
    return ir.Graph([], [out], nodes=nodes, name=name)


def _exact_graph(core: Slice, post: Slice, outer: dict[ir.Value, ir.Value], *, prefix: str = "exact.",
                 still: ir.Value | None = None) -> ir.Graph:
    """<exact P> @ V; with ``still``, also pass the "still hitting" flag through (this layer did not look up)."""
    nodes, probs = copy_slice(core, outer, prefix=prefix)
    if prefix == "exact.":
        probs.name = EXACT_PROBS  # so tools can find P in the exact branch (see unfuse.py)
    post_nodes, context = copy_slice(post, {**outer, core.output: probs}, prefix=f"{prefix}post.")
    graph = _branch(prefix.rstrip("."), [*nodes, *post_nodes], context)
    if still is not None:
        passed = ir.Node("", "Identity", [still], outputs=[ir.Value(name=f"{prefix}still", type=still.type)])
        graph.append(passed)
        graph.outputs.append(passed.outputs[0])
    return graph


def _lookup_graph(core: Slice, post: Slice, outer: dict[ir.Value, ir.Value],
                  hidden: ir.Value, mask: ir.Value | None, *, opset: int) -> ir.Graph:
    """hit, any_hit, all_hit, P_u16 = MemoLookup(pool(hidden, mask), mask), then <reuse>.

    P_u16 is unorm16: decoded by a Cast, and the 1/65535 applied to the small P·V result
    when all hit (post nodes, MatMul with V and DeBERTa's reshape, are linear in P).
    """
    nodes = _mask_i64(hidden, mask)
    mask_i64 = nodes[-1].outputs[0]
    pooling, features = pooled_features(hidden, mask_i64, opset=opset)
    nodes += pooling
    lookup = ir.Node(RUNTIME_DOMAIN, "MemoLookup", [features, mask_i64], _ref_attrs(),
                     outputs=[ir.Value(name=n) for n in ("hit_B111", "any_hit", "all_hit", "stored_u16")])
    scale = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array(1 / UNORM_MAX, np.float32)))],
                    outputs=[ir.Value(name="unorm_scale")])
    graph = _reuse_graph(core, post, outer, "lookup", [*nodes, lookup, scale], lookup.outputs,
                         unorm_scale=scale.outputs[0])
    any_hit = lookup.outputs[1]
    any_hit.type = ir.TensorType(ir.DataType.BOOL)
    graph.outputs.append(any_hit)  # a batch with no hit stops later layers' lookups
    return graph


def _document_graph(core: Slice, post: Slice, outer: dict[ir.Value, ir.Value], hidden: ir.Value,
                    mask: ir.Value | None, match: ir.Value, *, still: ir.Value) -> ir.Graph:
    """hit, any_hit, all_hit, P = MemoFetch(match, mask), then <reuse>; "still hitting" passes through.

    P is float32 as stored: no decoding. The learned-key chain is not the document key's
    business, so a document hit neither starts nor stops it.
    """
    nodes = _mask_i64(hidden, mask, prefix="doc.")
    fetch = ir.Node(RUNTIME_DOMAIN, "MemoFetch", [match, nodes[-1].outputs[0]], _ref_attrs(),
                    outputs=[ir.Value(name=f"doc.{n}") for n in ("hit_B111", "any_hit", "all_hit", "stored")])
    graph = _reuse_graph(core, post, outer, "doc", [*nodes, fetch], fetch.outputs, unorm_scale=None)
    passed = ir.Node("", "Identity", [still], outputs=[ir.Value(name="doc.still", type=still.type)])
    graph.append(passed)
    graph.outputs.append(passed.outputs[0])
    return graph


def _reuse_graph(core: Slice, post: Slice, outer: dict[ir.Value, ir.Value], name: str, nodes: list[ir.Node],
                 found: tuple[ir.Value, ...], *, unorm_scale: ir.Value | None) -> ir.Graph:
    """After a lookup gave (hit_B111, any_hit, all_hit, P*), one of three paths.

    all hit:  P* @ V                            (unorm16: Cast(P*) @ V * 1/65535)
    some hit: Where(hit, P*, <exact P>) @ V     (unorm16: P* decoded first)
    none hit: <exact P> @ V                     a miss costs only the lookup
    """
    hit, any_hit, all_hit, stored = found
    p = f"{name}."

    def decoded(prefix: str) -> tuple[list[ir.Node], ir.Value]:
        if unorm_scale is None:
            return [], stored
        as_float = ir.Node("", "Cast", [stored], [ir.AttrInt64("to", ir.DataType.FLOAT)],
                           outputs=[ir.Value(name=f"{prefix}P_float")])
        return [as_float], as_float.outputs[0]

    cast, probs = decoded(f"{p}reuse.")
    reuse_post, reused = copy_slice(post, {**outer, core.output: probs}, prefix=f"{p}reuse.post.")
    tail = reuse_post
    if unorm_scale is not None:
        scaled = ir.Node("", "Mul", [reused, unorm_scale], outputs=[ir.Value(name=f"{p}reuse.context")])
        tail, reused = [*reuse_post, scaled], scaled.outputs[0]
    reuse_all = _branch(f"{p}reuse_all", [*cast, *tail], reused)

    merge_core, exact = copy_slice(core, outer, prefix=f"{p}merge.")
    merge_cast, merge_probs = decoded(f"{p}merge.")
    if unorm_scale is not None:
        scaled = ir.Node("", "Mul", [merge_probs, unorm_scale], outputs=[ir.Value(name=f"{p}merge.P_stored")])
        merge_cast, merge_probs = [*merge_cast, scaled], scaled.outputs[0]
    merged = ir.Node("", "Where", [hit, merge_probs, exact], outputs=[ir.Value(name=f"{p}merge.P")])
    merge_post, merged_context = copy_slice(post, {**outer, core.output: merged.outputs[0]}, prefix=f"{p}merge.post.")
    merge = _branch(f"{p}merge", [*merge_core, *merge_cast, merged, *merge_post], merged_context)

    some = ir.Node("", "If", [all_hit], [ir.AttrGraph("then_branch", reuse_all), ir.AttrGraph("else_branch", merge)],
                   outputs=[ir.Value(name=f"{p}hit.context", type=_FLOAT)])
    hit_graph = _branch(f"{p}hit", [some], some.outputs[0])
    any_ = ir.Node("", "If", [any_hit], [
        ir.AttrGraph("then_branch", hit_graph),
        ir.AttrGraph("else_branch", _exact_graph(core, post, outer, prefix=f"{p}miss.")),
    ], outputs=[ir.Value(name=f"{p}context", type=_FLOAT)])
    return _branch(name, [*nodes, any_], any_.outputs[0])


def _mask_i64(hidden: ir.Value, mask: ir.Value | None, *, prefix: str = "") -> list[ir.Node]:
    """Nodes computing the int64 [B, S] mask the lookups read (all ones without a mask input)."""
    if mask is not None:
        return [ir.Node("", "Cast", [mask], [ir.AttrInt64("to", ir.DataType.INT64)],
                        outputs=[ir.Value(name=f"{prefix}mask_i64")])]
    # Shape + Slice rather than Shape(end=2), which needs opset 15.
    shape = ir.Node("", "Shape", [hidden], outputs=[ir.Value(name=f"{prefix}hidden_shape")])
    bounds = [ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array([i], np.int64)))],
                      outputs=[ir.Value(name=f"{prefix}shape_{i}")]) for i in (0, 2)]
    batch_seq = ir.Node("", "Slice", [shape.outputs[0], *(b.outputs[0] for b in bounds)],
                        outputs=[ir.Value(name=f"{prefix}batch_seq")])
    ones = ir.Node("", "ConstantOfShape", [batch_seq.outputs[0]],
                   [ir.AttrTensor("value", ir.tensor([1], dtype=ir.DataType.INT64))],
                   outputs=[ir.Value(name=f"{prefix}mask_i64")])
    return [shape, *bounds, batch_seq, ones]


def default_opset(opset_imports: dict[str, int]) -> int:
    """The model's ONNX (default-domain) opset, however the exporter spelled the domain."""
    return opset_imports.get("", opset_imports.get("ai.onnx", 18))


def copy_slice(sl: Slice, outer: dict[ir.Value, ir.Value], *, prefix: str) -> tuple[list[ir.Node], ir.Value]:
    """Copy the slice's nodes, reading its inputs from ``outer``; names get ``prefix``.

    Returns the copied nodes and the copy of the slice output. Each copy has its
    own prefix because ONNX needs unique value names across nested subgraphs.
    """
    mapping = dict(outer)
    copies: list[ir.Node] = []
    for i, node in enumerate(sl.nodes):
        # Positional names, not the layer's own ("/encoder/layer.3/..."), so that
        # all layers of a model share one function body.
        outputs = [ir.Value(name=f"{prefix}{i}.{j}", type=out.type, shape=out.shape)
                   for j, out in enumerate(node.outputs)]
        copy = ir.Node(node.domain, node.op_type, [mapping[v] if v is not None else None for v in node.inputs],
                       list(node.attributes.values()), overload=node.overload, outputs=outputs,
                       name=f"{prefix}{i}.{node.op_type}")
        mapping.update(zip(node.outputs, outputs))
        copies.append(copy)
    return copies, mapping[sl.output]


def same_body(a: ir.Function, b: ir.Function) -> bool:
    """True when two functions serialize identically (so one definition serves both)."""
    return _fingerprint(a) == _fingerprint(b)


def _fingerprint(f: ir.Function) -> bytes:
    return ir.serde.serialize_function(f).SerializeToString(deterministic=True)
