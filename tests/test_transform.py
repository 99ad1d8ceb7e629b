"""The graph pass: every attention core of every supported encoder becomes one MemoAttention call.

Spec:
- all layers are rewritten, for every architecture and every exporter variant;
- the rewritten model passes onnx.checker (full_check) and, with no memo
  database, reproduces the unmodified export on real tokens (batch > 1, padding);
- the Q/K projections, Q·K^T, scale, mask and softmax live only inside the
  MemoAttention function (so a hit can skip them); the V projection stays outside;
- anything that is not an attention core is left alone, with a clear error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import attmemo
from attmemo.transforms.model_file import TransformError, transform_file
from conftest import max_diff_on_real_tokens, padded_feeds, run_model
from tiny_models import (
    ARCHITECTURES,
    LAYERS,
    export_optimum_default,
    export_sentence_transformers,
    export_torch_onnx,
    make_sentence_transformers_folder,
)

ATOL = 1e-4


def ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def assert_exact_without_database(plain: Path, memo: Path, model_dir: Path) -> None:
    feeds = padded_feeds(model_dir)
    want = run_model(ort.InferenceSession(str(plain)), feeds)
    got = run_model(attmemo.InferenceSession(str(memo)), feeds)
    assert max_diff_on_real_tokens(got, want, feeds["attention_mask"]) <= ATOL


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_is_rewritten_and_exact(arch, tiny_model, tmp_path):
    model_dir, plain = tiny_model(arch)
    memo = tmp_path / "memo.onnx"
    report = transform_file(plain, memo, expected_layers=LAYERS)
    assert (report.rewritten, report.missed) == (LAYERS, [])
    after = ops(memo)
    assert after["MemoAttention"] == LAYERS
    assert after["Softmax"] == 0
    assert_exact_without_database(plain, memo, model_dir)


def test_hit_path_can_skip_q_k_and_softmax_but_not_v(tiny_model, tmp_path):
    """BERT: per layer, Q proj, K proj, Q·K^T and P·V move into the function; V proj stays."""
    _, plain = tiny_model("bert")
    memo = tmp_path / "memo.onnx"
    transform_file(plain, memo)
    assert ops(plain)["MatMul"] - ops(memo)["MatMul"] == 4 * LAYERS
    model = onnx.load(str(memo))
    (function,) = model.functions  # one body shared by all layers
    assert (function.domain, function.name) == ("attmemo", "MemoAttention")
    exact = function
    while (branch := next((n for n in exact.node if n.op_type == "If"), None)) is not None:
        exact = next(a.g for a in branch.attribute if a.name == "else_branch")   # the innermost else
    assert Counter(n.op_type for n in exact.node)["Softmax"] == 1
    assert Counter(n.op_type for n in exact.node)["MatMul"] == 4


VARIANTS = {
    "optimum-sdpa": lambda d, out: export_optimum_default(d, out),
    "torch-onnx": lambda d, out: export_torch_onnx(d, out, dynamo=False),
    "torch-dynamo": lambda d, out: export_torch_onnx(d, out, dynamo=True),
    "torch-dynamo-sdpa": lambda d, out: export_torch_onnx(d, out, dynamo=True, attn_implementation="sdpa"),
}


# SDPA does not exist for DeBERTa-v2 / MPNet / ELECTRA in transformers 4.57 (their exports are eager).
EXPORTED_ELSEWHERE = [(arch, variant) for arch in ("bert", "roberta", "distilbert") for variant in sorted(VARIANTS)]
EXPORTED_ELSEWHERE += [("deberta-v2", "torch-onnx"), ("deberta-v2", "torch-dynamo"), ("mpnet", "torch-dynamo")]


@pytest.mark.parametrize("arch, variant", EXPORTED_ELSEWHERE)
def test_models_exported_elsewhere_are_rewritten(arch, variant, tiny_model, tmp_path):
    model_dir, _ = tiny_model(arch)
    plain = VARIANTS[variant](model_dir, tmp_path / "plain.onnx")
    memo = tmp_path / "memo.onnx"
    report = transform_file(plain, memo)
    assert report.rewritten == LAYERS
    assert_exact_without_database(plain, memo, model_dir)


def test_sentence_transformers_export_is_rewritten(tiny_model, tmp_path):
    model_dir, _ = tiny_model("bert")
    st_dir = make_sentence_transformers_folder(model_dir, tmp_path / "st")
    plain = export_sentence_transformers(st_dir, tmp_path / "plain.onnx")
    memo = tmp_path / "memo.onnx"
    assert transform_file(plain, memo).rewritten == LAYERS
    session = ort.InferenceSession(str(plain))
    feeds = {i.name: padded_feeds(model_dir)[i.name] for i in session.get_inputs()}
    want = session.run(["sentence_embedding"], feeds)[0]
    got = attmemo.InferenceSession(str(memo)).run(["sentence_embedding"], feeds)[0]
    assert np.abs(got - want).max() <= ATOL


# --- negative matches: tiny hand-written graphs --------------------------------------------

def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _attention_graph(*, softmax_axis: int = -1, probs_as_output: bool = False, transpose_k: bool = True,
                     nan_guard: bool = False):
    """hidden [B,S,8] -> 2 heads of 4: Softmax(Q·K^T / 2) · V, with weights as initializers.

    nan_guard: Where(IsNaN(P), 0, P) after the Softmax, as SDPA exports of some versions emit.
    """
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [8, 8], rng.normal(size=64).astype(np.float32))
             for n in ("wq", "wk", "wv")]
    inits += [helper.make_tensor("shape", TensorProto.INT64, [4], [0, 0, 2, 4]),
              helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])]
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["hidden", f"w{name}"], [f"{name}_proj"]),
                  helper.make_node("Reshape", [f"{name}_proj", "shape"], [f"{name}_BSHd"]),
                  helper.make_node("Transpose", [f"{name}_BSHd"], [f"{name}_BHSd"], perm=[0, 2, 1, 3])]
    key = "k_BHdS" if transpose_k else "k_BHSd"
    if transpose_k:
        nodes.append(helper.make_node("Transpose", ["k_BHSd"], ["k_BHdS"], perm=[0, 1, 3, 2]))
    nodes += [helper.make_node("MatMul", ["q_BHSd", key], ["scores"]),
              helper.make_node("Div", ["scores", "two"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=softmax_axis)]
    if nan_guard:
        inits.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        nodes += [helper.make_node("IsNaN", ["probs"], ["is_nan"]),
                  helper.make_node("Where", ["is_nan", "zero", "probs"], ["guarded"])]
    nodes.append(helper.make_node("MatMul", ["guarded" if nan_guard else "probs", "v_BHSd"], ["context"]))
    outputs = [helper.make_tensor_value_info("context", TensorProto.FLOAT, ["B", 2, "S", 4])]
    if probs_as_output:
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 2, "S", "S"]))
    hidden = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "S", 8])
    return helper.make_graph(nodes, "attention", [hidden], outputs, inits)


@pytest.mark.parametrize("nan_guard", [False, True])
def test_hand_written_attention_is_rewritten(nan_guard, tmp_path):
    src = _save(_attention_graph(nan_guard=nan_guard), tmp_path / "att.onnx")
    assert transform_file(src, tmp_path / "memo.onnx").rewritten == 1
    assert ops(tmp_path / "memo.onnx")["IsNaN"] == 0  # the guard moved into the function too
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"hidden": x})[0]
    got = attmemo.InferenceSession(str(tmp_path / "memo.onnx")).run(None, {"hidden": x})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("graph, why", [
    (lambda: _attention_graph(softmax_axis=1), "normalises axis 1, not the last"),
    (lambda: _attention_graph(probs_as_output=True), "probabilities are a model output"),
    (lambda: _attention_graph(transpose_k=False), "key side of its Q·K^T MatMul is not a transposed K"),
])
def test_non_attention_softmax_is_left_alone_with_the_reason(graph, why, tmp_path):
    src = _save(graph(), tmp_path / "not.onnx")
    with pytest.raises(TransformError, match="no attention layer was recognised") as error:
        transform_file(src, tmp_path / "memo.onnx")
    assert why in str(error.value)
    assert not (tmp_path / "memo.onnx").exists()


def test_classifier_softmax_gives_a_clear_error(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])],
        "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))])
    src = _save(graph, tmp_path / "classifier.onnx")
    with pytest.raises(TransformError) as error:
        transform_file(src, tmp_path / "memo.onnx")
    message = str(error.value)
    assert "no attention layer was recognised" in message
    assert "its probabilities are a model output" in message


def _two_blocks(first, second):
    """Chain two hand-written attention blocks: the second reads the first's output."""
    for node in second.node:
        node.input[:] = [("l2." + i if i != "hidden" else "context_BSD") for i in node.input]
        node.output[:] = ["l2." + o for o in node.output]
    reshape_back = [helper.make_node("Transpose", ["context"], ["context_BSHd"], perm=[0, 2, 1, 3]),
                    helper.make_node("Reshape", ["context_BSHd", "flat"], ["context_BSD"])]
    inits = list(first.initializer) + [helper.make_tensor("flat", TensorProto.INT64, [3], [0, 0, 8])]
    for t in second.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = "l2." + t.name
        inits.append(copy)
    outs = [helper.make_tensor_value_info("l2." + o.name, TensorProto.FLOAT, None) for o in second.output]
    for out, original in zip(outs, second.output):
        out.type.CopyFrom(original.type)
    return helper.make_graph(list(first.node) + reshape_back + list(second.node), "two", list(first.input), outs, inits)


def test_layers_with_different_bodies_get_overloads(tmp_path):
    """Block 2 has a NaN guard block 1 lacks: two function overloads, one per body, and still exact."""
    src = _save(_two_blocks(_attention_graph(), _attention_graph(nan_guard=True)), tmp_path / "two.onnx")
    assert transform_file(src, tmp_path / "memo.onnx").rewritten == 2
    assert len(onnx.load(str(tmp_path / "memo.onnx")).functions) == 2
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"hidden": x})[0]
    got = attmemo.InferenceSession(str(tmp_path / "memo.onnx")).run(None, {"hidden": x})[0]
    np.testing.assert_array_equal(got, want)


def test_partial_rewrite_needs_consent(tmp_path):
    """Two attention blocks, the second exposes its probabilities: 1 of 2 layers rewritable."""
    graph = _two_blocks(_attention_graph(), _attention_graph(probs_as_output=True))
    src = _save(graph, tmp_path / "two.onnx")
    with pytest.raises(TransformError, match="rewrote 1 of 2 .*--allow-partial"):
        transform_file(src, tmp_path / "memo.onnx")
    assert transform_file(src, tmp_path / "memo.onnx", allow_partial=True).rewritten == 1
