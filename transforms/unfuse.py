"""Turn a MemoAttention model back into plain ONNX, for recording and for the oracle.

recording_model: every MemoAttention call is replaced by its exact branch, and
    each layer's input hidden states [B, S, D] and probabilities P [B, H, S, S]
    become graph outputs, so a memo database can be built by running it.
oracle_model: every layer's P is a graph *input* and the nodes that only fed P
    are gone. No memoization scheme can be faster than feeding the true P for
    free; benchmarks report it side by side.
exact_model: every MemoAttention call is replaced by its exact branch and the
    gate is gone: the unmodified model again, with no Python op and no If.
    attmemo.InferenceSession runs this when calibration switched memoization off.
fed_model: the oracle's shape for chosen layers, fed stored attention instead:
    what attmemo.InferenceSession runs when the document key hit (store/documents.py).
admitting_model: the exact model whose chosen layers' P are extra outputs, already in
    the store's codec: what an admitting attmemo.InferenceSession runs on a miss
    (store/admission.py), so admission costs one run, not a run plus a recording run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass

from . import fed_decode, memo_function
from .names import fed_input, fed_probs, hidden_value, layer_prefix, probs_value


@dataclasses.dataclass
class LayerValues:
    layer: int
    hidden: str   # graph output / input names
    probs: str


def memo_calls(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == memo_function.DOMAIN and n.op_type == memo_function.NAME]


def recording_model(model: ir.Model) -> list[LayerValues]:
    """Rewrite ``model`` in place (see module docstring); return the new outputs per layer."""
    layers = []
    for call in memo_calls(model):
        layer = call.attributes.get_int("layer")
        hidden = _output_alias(model.graph, call.inputs[0], hidden_value(layer))
        _, values = _inline_exact(model, call, prefix=layer_prefix(layer))
        probs = values[memo_function.EXACT_PROBS]
        probs.name = probs_value(layer)
        probs.type = ir.TensorType(ir.DataType.FLOAT)
        probs.shape = ir.Shape(["batch", None, "sequence", "sequence"])
        model.graph.outputs.extend([hidden, probs])
        layers.append(LayerValues(layer, hidden.name, probs.name))
    RemoveUnusedNodesPass()(model)  # the MemoGate that fed the calls
    RemoveUnusedFunctionsPass()(model)
    return layers


def exact_model(model: ir.Model) -> int:
    """Rewrite ``model`` in place into plain ONNX computing exactly what it computed; return the calls removed."""
    calls = memo_calls(model)
    for call in calls:
        _inline_exact(model, call, prefix=layer_prefix(call.attributes.get_int('layer')))
    RemoveUnusedNodesPass()(model)  # the MemoGate and the "still hitting" constant
    RemoveUnusedFunctionsPass()(model)
    return len(calls)


def oracle_model(model: ir.Model) -> list[str]:
    """Rewrite ``model`` in place so each layer reads P from a graph input; return those input names."""
    return _feed_probs(model, layers=None, name=probs_value, scale=None)


def fed_model(model: ir.Model, layers, codec, *, renormalise: bool = True) -> list[str]:
    """Rewrite ``model`` in place so ``layers`` read stored P from graph inputs, as ``codec`` stores it.

    Other layers compute exactly. ``codec`` (store/values.py): a float16 store feeds
    float16 inputs, cast to float natively; a unorm16 store feeds round(P * 65535)
    widened to float32 by numpy (0.23 ms for 12x256x256, where ORT's uint16 Cast takes
    0.44 ms), and the 1/65535 is applied to the small P·V result as the lookup branch does;
    a log-coded store (log8, log4) feeds its uint8 codes [B, H, n, codec.columns(n)], decoded
    by the graph (fed_decode.py), and for log4, whose rows decode proportional to P, P·V is
    divided by the decoded row sums unless ``renormalise`` is False (aligned_feed divides by
    them itself). Either way the dense float32 P each served layer multiplies by V is the
    value named ``names.fed_probs(layer)`` (``dense_probs``), or the input itself for float32.
    Returns the input names, in the order of the model's layers.
    """
    log = getattr(codec, "log", None)
    dtype = ir.DataType.UINT8 if log is not None else (
        ir.DataType.FLOAT16 if codec.fed_dtype == np.float16 else ir.DataType.FLOAT)
    return _feed_probs(model, layers=set(layers), name=fed_input, scale=codec.fed_scale, dtype=dtype,
                       log=log, renormalise=renormalise and log is not None and log.relative)


def dense_probs(model: ir.Model, layer: int) -> ir.Value:
    """The float32 P a fed model's served ``layer`` multiplies by V (see ``fed_model``)."""
    wanted = fed_probs(layer)
    for node in model.graph:
        if node.outputs and node.outputs[0].name == wanted:
            return node.outputs[0]
    return next(v for v in model.graph.inputs if v.name == fed_input(layer))


def admitting_model(model: ir.Model, layers, codec) -> list[str]:
    """Rewrite ``model`` in place into the exact model that also outputs ``layers``' P (None: all); return those names.

    Each P [B, H, S, S] leaves the graph as ``codec`` stores it (store/values.py), encoded
    natively: float32 as is, float16 by a Cast, unorm16 as Cast(Round(P * 65535)), whose
    rows may sum to 65535 give or take a few units (the build's encoder corrects that in
    numpy; here it would cost more than the run saves).
    """
    names = []
    for call in memo_calls(model):
        layer = call.attributes.get_int("layer")
        prefix = layer_prefix(layer)
        _, values = _inline_exact(model, call, prefix=prefix)
        if layers is not None and layer not in layers:
            continue
        probs = values[memo_function.EXACT_PROBS]
        shape = ir.Shape(["batch", None, "sequence", "sequence"])
        encoded = _encode_probs(model.graph, probs, codec, prefix=prefix, name=probs_value(layer), shape=shape)
        model.graph.outputs.append(encoded)
        names.append(encoded.name)
    RemoveUnusedNodesPass()(model)
    RemoveUnusedFunctionsPass()(model)
    return names


def _encode_probs(graph: ir.Graph, probs: ir.Value, codec, *, prefix: str, name: str, shape: ir.Shape) -> ir.Value:
    """A new value ``name``: ``probs`` as ``codec`` stores it (its producer inserted after ``probs``')."""
    storage = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.float16): ir.DataType.FLOAT16,
               np.dtype(np.uint16): ir.DataType.UINT16}[np.dtype(codec.storage)]
    nodes, value = [], probs
    if storage == ir.DataType.UINT16:
        scale = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array(65535, np.float32)))],
                        outputs=[ir.Value(name=prefix + "admit_scale")], name=prefix + "admit_scale")
        scaled = ir.Node("", "Mul", [value, scale.outputs[0]], outputs=[ir.Value(name=prefix + "admit_scaled")],
                         name=prefix + "admit_scaled")
        rounded = ir.Node("", "Round", [scaled.outputs[0]], outputs=[ir.Value(name=prefix + "admit_rounded")],
                          name=prefix + "admit_rounded")
        nodes, value = [scale, scaled, rounded], rounded.outputs[0]
    cast = ir.Node("", "Cast" if storage != ir.DataType.FLOAT else "Identity", [value],
                   [ir.AttrInt64("to", storage)] if storage != ir.DataType.FLOAT else [],
                   outputs=[ir.Value(name=name, type=ir.TensorType(storage), shape=shape)], name=prefix + "admit_out")
    graph.insert_after(probs.producer(), [*nodes, cast])
    return cast.outputs[0]


def _feed_probs(model: ir.Model, *, layers: set[int] | None, name: Callable[[int], str],
                scale: float | None, dtype: ir.DataType = ir.DataType.FLOAT, log=None,
                renormalise: bool = False) -> list[str]:
    names = []
    for call in memo_calls(model):
        layer = call.attributes.get_int("layer")
        prefix = layer_prefix(layer)
        if layers is not None and layer not in layers:
            _inline_exact(model, call, prefix=prefix)
            continue
        shape = ir.Shape(["batch", None, "sequence", "sequence"])
        probs = ir.Value(name=name(layer), type=ir.TensorType(dtype),
                         shape=ir.Shape(["batch", None, "sequence", None]) if log is not None else shape)
        model.graph.inputs.append(probs)
        names.append(probs.name)
        if log is not None:
            nodes, probs = fed_decode.decode_nodes(probs, log, prefix=prefix, dense_name=fed_probs(layer),
                                                   opset=model.opset_imports.get("", 1))
            model.graph.insert_before(call, nodes)
        elif dtype != ir.DataType.FLOAT:
            cast = ir.Node("", "Cast", [probs], [ir.AttrInt64("to", ir.DataType.FLOAT)], name=prefix + "fed_cast",
                           outputs=[ir.Value(name=fed_probs(layer), type=ir.TensorType(ir.DataType.FLOAT),
                                             shape=shape)])
            model.graph.insert_before(call, cast)
            probs = cast.outputs[0]
        _inline_exact(model, call, prefix=prefix, probs=probs, scale=scale, renormalise=renormalise)
    RemoveUnusedNodesPass()(model)
    RemoveUnusedFunctionsPass()(model)
    return names


def rename_model_id(model: ir.Model, model_id: str) -> None:
    """Bind ``model``'s Python ops to another registry entry (custom_ops/registry.py), in place.

    Calibration runs its candidate plans under a private id, so attaching one never
    changes what live sessions of the same model are served.
    """
    for node in model.graph:
        if "model_id" in node.attributes and node.domain in (memo_function.DOMAIN, memo_function.RUNTIME_DOMAIN):
            node.attributes["model_id"] = ir.AttrString("model_id", model_id)


def _exact_branch(model: ir.Model, call: ir.Node) -> tuple[ir.Function, ir.Graph]:
    """The function and its exact branch: the innermost ``else`` (memo_function.build_function)."""
    function = model.functions[(call.domain, call.op_type, call.overload)]
    graph = function.graph
    while (branch := next((n for n in graph if n.op_type == "If"), None)) is not None:
        graph = branch.attributes["else_branch"].value
    return function, graph


def _inline_exact(model: ir.Model, call: ir.Node, *, prefix: str, probs: ir.Value | None = None,
                  scale: float | None = None, renormalise: bool = False) -> tuple[list[ir.Node], dict[str, ir.Value]]:
    """Replace ``call`` by a copy of its function's exact branch.

    P is replaced by ``probs`` if given; ``scale`` multiplies the context (linear in P);
    ``renormalise`` divides it by the row sums of ``probs`` (dividing the [B, H, n, d]
    context is cheaper than dividing P).
    """
    function, branch = _exact_branch(model, call)
    # The "still hitting" chain ends with the calls: hand each layer's input flag on.
    ir.convenience.replace_all_uses_with(call.outputs[1], call.inputs[3])
    mapping: dict[ir.Value, ir.Value] = dict(zip(function.inputs, call.inputs))
    by_name: dict[str, ir.Value] = {}
    copies = []
    for node in branch:
        if probs is not None and node.outputs[0].name == memo_function.EXACT_PROBS:
            mapping[node.outputs[0]] = probs
            continue
        outputs = [ir.Value(name=prefix + o.name, type=o.type, shape=o.shape) for o in node.outputs]
        copies.append(ir.Node(node.domain, node.op_type, [mapping.get(v) if v is not None else None for v in node.inputs],
                              list(node.attributes.values()), overload=node.overload, outputs=outputs,
                              name=prefix + (node.name or node.op_type)))
        for old, new in zip(node.outputs, outputs):
            mapping[old] = new
            by_name[old.name] = new
    context = mapping[branch.outputs[0]]
    if scale is not None:
        factor = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array(scale, np.float32)))],
                         outputs=[ir.Value(name=prefix + "scale")], name=prefix + "scale")
        scaled = ir.Node("", "Mul", [context, factor.outputs[0]], outputs=[ir.Value(
            name=prefix + "scaled_context", type=context.type, shape=context.shape)], name=prefix + "scaled_context")
        copies += [factor, scaled]
        context = scaled.outputs[0]
    if renormalise:
        last = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.array([-1], np.int64)))],
                       outputs=[ir.Value(name=prefix + "last_axis")], name=prefix + "last_axis")
        sums = ir.Node("", "ReduceSum", [probs, last.outputs[0]], [ir.AttrInt64("keepdims", 1)],
                       outputs=[ir.Value(name=prefix + "row_sums")], name=prefix + "row_sums")
        divided = ir.Node("", "Div", [context, sums.outputs[0]], outputs=[ir.Value(
            name=prefix + "renormalised_context", type=context.type, shape=context.shape)],
            name=prefix + "renormalised_context")
        copies += [last, sums, divided]
        context = divided.outputs[0]
    model.graph.insert_before(call, copies)
    ir.convenience.replace_all_uses_with(call.outputs[0], context)
    model.graph.remove(call, safe=True)
    return copies, by_name


def _output_alias(graph: ir.Graph, value: ir.Value, name: str) -> ir.Value:
    """An Identity of ``value`` named ``name``: a graph input cannot also be listed as an output."""
    alias = ir.Node("", "Identity", [value], outputs=[ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT),
                                                           shape=ir.Shape(["batch", "sequence", None]))])
    graph.insert_after(value.producer(), alias) if value.producer() else graph.insert_before(graph[0], alias)
    return alias.outputs[0]
