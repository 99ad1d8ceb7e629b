"""attmemo.InferenceSession from Python: a bad model path or db= is one sentence naming the path (issue 14)."""

from __future__ import annotations

import pytest

import attmemo


def _one_sentence(error: BaseException, path) -> str:
    message = str(error)
    assert str(path) in message and "\n" not in message
    assert "ONNXRuntimeError" not in message and "NO_SUCHFILE" not in message and "INVALID_PROTOBUF" not in message
    return message


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        attmemo.InferenceSession(str(tmp_path / "nope.onnx"))
    assert "no such model file" in _one_sentence(caught.value, tmp_path / "nope.onnx")


# A protobuf with only ir_version set parses, but has no graph (onnxruntime: INVALID_ARGUMENT).
@pytest.mark.parametrize("content", [b"not a model", b"", b"\x08\x07"])
def test_unreadable_model_file(tmp_path, content):
    path = tmp_path / "text.onnx"
    path.write_bytes(content)
    with pytest.raises(attmemo.ModelFileError) as caught:
        attmemo.InferenceSession(str(path))
    assert "not a readable ONNX model" in _one_sentence(caught.value, path)


def test_a_folder_as_the_model(tmp_path):
    with pytest.raises(attmemo.ModelFileError) as caught:
        attmemo.InferenceSession(tmp_path)
    assert "is a folder" in _one_sentence(caught.value, tmp_path)


def test_a_file_as_db(tiny_db, tmp_path):
    model, _, corpus = tiny_db
    with pytest.raises(attmemo.MemoDatabaseError) as caught:
        attmemo.InferenceSession(str(model), db=corpus)
    assert "is a file, not a memo database folder" in _one_sentence(caught.value, corpus)


def test_a_missing_db_folder(tiny_db, tmp_path):
    model, _, _ = tiny_db
    with pytest.raises(attmemo.MemoDatabaseError) as caught:
        attmemo.InferenceSession(str(model), db=tmp_path / "gone.memo")
    assert "no such memo database folder" in _one_sentence(caught.value, tmp_path / "gone.memo")


def test_a_missing_db_is_only_logged_when_not_strict(tiny_db, tmp_path):
    model, _, _ = tiny_db
    session = attmemo.InferenceSession(str(model), db=tmp_path / "gone.memo", strict=False)
    assert session.memo_status.startswith("disabled:")


def test_a_model_written_by_another_attmemo_version(tiny_db, tmp_path):
    """MemoGate read only the hidden states' shape before it read the token ids (issue 11).

    Without a database such a model still runs (as its exact model); with one it cannot."""
    import onnx

    model = onnx.load(str(tiny_db[0]))
    gate = next(node for node in model.graph.node if node.op_type == "MemoGate")
    del gate.input[1:]
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    attmemo.InferenceSession(str(path))
    with pytest.raises(attmemo.ModelFileError) as caught:
        attmemo.InferenceSession(str(path), db=tiny_db[1])
    assert "written by another version" in _one_sentence(caught.value, path)
