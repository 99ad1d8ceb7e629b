"""Models as users have them: older opsets, SDPA exports, int8 and optimizer graphs (issue 13).

Spec, for each source in the README's "Supported" table:
- `attmemo transform` rewrites every layer and keeps the model's opset;
- the result passes onnx.checker (full_check), function bodies included (checked inlined);
- with no memo database it computes what the model it was given computes (non-pad tokens);
- the Q/K projections (float or int8) move into MemoAttention, so a hit skips them;
- a graph whose attention was fused into one op fails with what to do instead.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import attmemo
from attmemo.store.values import codec
from attmemo.transforms.model_file import TransformError, transform_file
from attmemo.transforms.unfuse import fed_model, oracle_model
from conftest import max_diff_on_real_tokens, padded_feeds, run_model
from tiny_models import LAYERS, export_optimum_default, export_sdpa_layer, export_torch_onnx

ATOL = 1e-4


def ops(model: onnx.ModelProto | Path) -> Counter:
    model = onnx.load(str(model)) if isinstance(model, Path) else model
    return Counter(n.op_type for n in model.graph.node)


def onnx_opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def assert_valid_at_its_opset(path: Path) -> None:
    """full_check on the model with its functions inlined: the checker skips function bodies otherwise."""
    onnx.checker.check_model(onnx.inliner.inline_local_functions(onnx.load(str(path))), full_check=True)


def assert_exact_without_database(plain: Path, memo: Path, model_dir: Path) -> None:
    feeds = padded_feeds(model_dir)
    want = run_model(ort.InferenceSession(str(plain)), feeds)
    got = run_model(attmemo.InferenceSession(str(memo)), feeds)
    assert max_diff_on_real_tokens(got, want, feeds["attention_mask"]) <= ATOL


# --- item 1 and 2: Hugging Face exports at opsets 14-22, eager and SDPA -------------------

EXPORTS = {
    "torch-onnx": lambda d, out, opset: export_torch_onnx(d, out, dynamo=False, opset=opset),
    "torch-onnx-sdpa": lambda d, out, opset: export_torch_onnx(d, out, dynamo=False, opset=opset,
                                                               attn_implementation="sdpa"),
    "torch-dynamo-sdpa": lambda d, out, opset: export_torch_onnx(d, out, dynamo=True, opset=opset,
                                                                 attn_implementation="sdpa"),
    "optimum-sdpa": lambda d, out, opset: export_optimum_default(d, out, opset=opset),
}

# torch's dynamo exporter writes opset 18 when asked for 14-16 (it converts down to 17 only),
# so the older opsets come from the TorchScript exporter and optimum.
# (dynamo at 18 is in test_transform.py; dynamo exports cost seconds each, so one more here.)
HF_CASES = [("torch-onnx", 14), ("torch-onnx-sdpa", 14), ("torch-onnx-sdpa", 15), ("optimum-sdpa", 16),
            ("torch-dynamo-sdpa", 17), ("torch-onnx-sdpa", 22)]


@pytest.mark.parametrize("exporter, opset", HF_CASES)
def test_hf_exports_keep_their_opset_and_compute_exactly(exporter, opset, tiny_model, tmp_path):
    model_dir, _ = tiny_model("bert")
    plain = EXPORTS[exporter](model_dir, tmp_path / "plain.onnx", opset)
    assert onnx_opset(plain) == opset
    memo = tmp_path / "memo.onnx"
    assert transform_file(plain, memo).rewritten == LAYERS
    assert onnx_opset(memo) == opset
    assert_valid_at_its_opset(memo)
    assert_exact_without_database(plain, memo, model_dir)
    # Per layer Q proj, K proj, Q·K^T and P·V moved into the function: a hit skips the first three.
    assert ops(plain)["MatMul"] - ops(memo)["MatMul"] == 4 * LAYERS


# --- item 2: torch's own SDPA decompositions, one layer, each mask kind ----------------------

# TorchScript (dynamo=False) at the oldest opset for every mask kind; torchlib (dynamo=True) for the
# boolean mask, the one that adds its NaN guard (its float-mask form is the HF dynamo export above).
# The boolean mask also at 18, where only the NaN guard's [1]-shaped zero can fail.
SDPA_CASES = [(mask, False, 14) for mask in ("bool", "additive", "where", "none")]
SDPA_CASES += [("bool", False, 18), ("bool", True, 22)]


@pytest.mark.parametrize("mask, dynamo, opset", SDPA_CASES)
def test_torch_sdpa_layer_is_rewritten(mask, dynamo, opset, tmp_path):
    plain = export_sdpa_layer(tmp_path / "sdpa.onnx", mask=mask, dynamo=dynamo, opset=opset)
    memo = tmp_path / "memo.onnx"
    assert transform_file(plain, memo).rewritten == 1
    assert_valid_at_its_opset(memo)
    after = ops(memo)
    assert (after["MatMul"], after["Softmax"], after["IsNaN"]) == (1, 0, 0)  # only the V projection stays out
    rng = np.random.default_rng(1)
    feeds = {"hidden": rng.normal(size=(2, 6, 8)).astype(np.float32),
             "attention_mask": np.array([[1] * 6, [1] * 4 + [0] * 2], np.int64)}
    session = ort.InferenceSession(str(plain))
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    want = session.run(None, feeds)[0]
    got = attmemo.InferenceSession(str(memo)).run(None, feeds)[0]
    real = feeds.get("attention_mask", np.ones((2, 6), np.int64))
    assert max_diff_on_real_tokens(got, want, real) <= 1e-6


def test_sdpa_with_explicit_scale_is_rewritten(tmp_path):
    plain = export_sdpa_layer(tmp_path / "sdpa.onnx", mask="additive", dynamo=False, opset=17, scale=0.3)
    assert transform_file(plain, tmp_path / "memo.onnx").rewritten == 1


# --- item 3: int8 (onnxruntime.quantization.quantize_dynamic) -------------------------------

@pytest.fixture(scope="module")
def int8_bert(tiny_model, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(HF folder, int8 model, its MemoAttention rewrite)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_dir, plain = tiny_model("bert")
    folder = tmp_path_factory.mktemp("int8")
    quantized = folder / "int8.onnx"
    quantize_dynamic(str(plain), str(quantized), weight_type=QuantType.QInt8)
    memo = folder / "int8.memo.onnx"
    assert transform_file(quantized, memo).rewritten == LAYERS
    return model_dir, quantized, memo


def test_int8_model_is_rewritten_and_exact(int8_bert):
    model_dir, quantized, memo = int8_bert
    assert ops(quantized)["MatMulInteger"] == 6 * LAYERS  # Q, K, V, output, two FFN projections
    assert_valid_at_its_opset(memo)
    assert_exact_without_database(quantized, memo, model_dir)


def test_a_hit_skips_the_int8_q_and_k_projections(int8_bert):
    _, quantized, memo = int8_bert
    served = [0]
    fed = ir.load(memo)
    fed_model(fed, served, codec("float32"))
    oracle = ir.load(memo)
    oracle_model(oracle)
    count = lambda m: sum(n.op_type == "MatMulInteger" for n in m.graph)  # noqa: E731
    total = ops(quantized)["MatMulInteger"]
    assert count(fed) == total - 2 * len(served)
    assert count(oracle) == total - 2 * LAYERS


def test_int8_model_reuses_stored_attention_end_to_end(int8_bert, tmp_path):
    """A database of the int8 rewrite, served by the document key: a stored text hits in every
    layer and gives the int8 model's own output (its stored P is its exact P)."""
    from attmemo.export.hf_export import tokenizer_dir_for
    from attmemo.store import serving
    from attmemo.builder.build import build_database
    from attmemo.builder.train import KeyTraining
    from conftest import TINY_CORPUS
    from tiny_models import sample_inputs

    model_dir, quantized, memo = int8_bert
    model = tmp_path / "int8.memo.onnx"
    model.write_bytes(memo.read_bytes())
    shutil.copytree(model_dir, tokenizer_dir_for(model))  # build-db tokenizes with the model's tokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_CORPUS) + "\n")
    db = tmp_path / "int8.memo.memo"
    build_database(model, corpus, out=db, max_length=32, training=KeyTraining(epochs=2))
    serving.write(db, thresholds={}, documents=serving.Documents(0.9, tuple(range(LAYERS))), measured={})
    session = attmemo.InferenceSession(str(model), db=db)
    feeds = sample_inputs(model_dir, [TINY_CORPUS[-1]], {i.name for i in session.get_inputs()})
    got = session.run(None, feeds)[0]
    assert [entry["hits"] for _, entry in sorted(session.memo_stats().items())] == [1] * LAYERS
    want = run_model(ort.InferenceSession(str(quantized)), feeds)
    # Not bit-equal: DynamicQuantizeLinear scales by the range of the whole batch, and the
    # build recorded this text's P inside a padded batch of others (batch composition alone moves
    # the int8 output by ~0.04 on this tiny model).
    cosine = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() >= 0.999


# --- item 4: onnxruntime.transformers optimizer ---------------------------------------------

def _optimize(plain: Path, out: Path, *, attention: bool) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from tiny_models import HEADS, HIDDEN

    options = FusionOptions("bert")
    options.enable_attention = attention
    optimized = optimize_model(str(plain), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN,
                               optimization_options=options)
    optimized.save_model_to_file(str(out))
    return out


def test_optimizer_output_without_attention_fusion_is_rewritten(tiny_model, tmp_path):
    model_dir, plain = tiny_model("bert")
    optimized = _optimize(plain, tmp_path / "optimized.onnx", attention=False)
    fused = ops(optimized)
    assert fused["SkipLayerNormalization"] and fused["BiasGelu"] and fused["LayerNormalization"]
    memo = tmp_path / "memo.onnx"
    assert transform_file(optimized, memo).rewritten == LAYERS
    assert ops(memo)["SkipLayerNormalization"] == fused["SkipLayerNormalization"]
    assert_exact_without_database(optimized, memo, model_dir)


def test_optimizer_attention_fusion_names_the_option_to_turn_off(tiny_model, tmp_path):
    _, plain = tiny_model("bert")
    optimized = _optimize(plain, tmp_path / "optimized.onnx", attention=True)
    assert ops(optimized)["Attention"] == LAYERS
    with pytest.raises(TransformError, match=r"--disable_attention \(FusionOptions.enable_attention = False\)"):
        transform_file(optimized, tmp_path / "memo.onnx")
    assert not (tmp_path / "memo.onnx").exists()


def test_onnx_attention_op_asks_for_an_older_opset(tmp_path):
    """torch's dynamo exporter emits ONNX Attention (opset 23) for SDPA; P is not a value there."""
    qkv = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 2, "S", 4]) for n in ("q", "k", "v")]
    graph = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"])], "fused", qkv,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2, "S", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    onnx.save(model, str(tmp_path / "fused.onnx"))
    with pytest.raises(TransformError, match="opset >= 23.*export with opset 18-22 or eager attention"):
        transform_file(tmp_path / "fused.onnx", tmp_path / "memo.onnx")


def test_opsets_before_13_are_refused_with_the_converter_to_use(tmp_path):
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "old",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), str(tmp_path / "old.onnx"))
    with pytest.raises(TransformError, match=r"opset 12 is older than 13.*convert_version"):
        transform_file(tmp_path / "old.onnx", tmp_path / "memo.onnx")
