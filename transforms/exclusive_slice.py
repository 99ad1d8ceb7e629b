"""The nodes that exist only to compute one value.

A memo hit replaces a layer's attention probabilities, so every node whose
results flow *only* into those probabilities becomes dead work on a hit: the
Q and K projections, Q·K^T, scaling, masking, softmax and, for DeBERTa, the
relative-position terms. This module finds exactly that set (the value's
"exclusive backward slice") for any graph, so the graph pass does not need to
know each architecture's projection layout.

A node belongs to the slice when it has at least one used output and every
use of every output is inside the slice (and no output is a graph output).
Shared work (hidden states, the V projection, the mask bias shared by all
layers, relative-position embeddings shared across layers) stays outside and
becomes an input of the slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir


@dataclasses.dataclass
class Slice:
    """An exclusive backward slice of ``output``.

    nodes:  slice nodes in graph (topological) order; the last one produces ``output``.
    inputs: values the slice reads but does not produce (activations, weights,
            constants shared with other nodes), in first-use order.
    """

    output: ir.Value
    nodes: list[ir.Node]
    inputs: list[ir.Value]


def _is_exclusive(node: ir.Node, members: set[ir.Node]) -> bool:
    used = False
    for out in node.outputs:
        if out.is_graph_output():
            return False
        for use in out.uses():
            used = True
            if use.node not in members:
                return False
    return used


def exclusive_slice(graph: ir.Graph, output: ir.Value, *, stop_at: Sequence[ir.Node] = ()) -> Slice:
    """Return the nodes computed only for ``output`` in ``graph``.

    ``graph`` must be topologically sorted (ONNX requires it). One reverse pass
    suffices: when a node is visited every consumer of it has already been
    decided. Nodes with subgraph attributes (If/Loop) are never absorbed, since
    their bodies may read outer values the slice cannot see; ``stop_at`` keeps
    further nodes out.
    """
    root = output.producer()
    if root is None:
        raise ValueError(f"Value {output.name!r} has no producer; it cannot be sliced.")
    nodes = list(graph)
    position = {node: i for i, node in enumerate(nodes)}
    members: set[ir.Node] = {root}
    blocked = set(stop_at)
    for node in reversed(nodes[: position[root]]):
        if node in blocked or _has_subgraph(node):
            continue
        if _is_exclusive(node, members):
            members.add(node)
    ordered = [n for n in nodes if n in members]
    return Slice(output=output, nodes=ordered, inputs=_external_inputs(ordered, members))


def _has_subgraph(node: ir.Node) -> bool:
    return any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for attr in node.attributes.values()
    )


def _external_inputs(nodes: list[ir.Node], members: set[ir.Node]) -> list[ir.Value]:
    seen: dict[ir.Value, None] = {}
    for node in nodes:
        for value in node.inputs:
            if value is None:
                continue
            if value.producer() in members:
                continue
            seen.setdefault(value, None)
    return list(seen)
