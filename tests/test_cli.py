"""The command line, run as users run it: real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tiny_models import LAYERS

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_attmemo_export_rewrites_every_layer(tiny_model, tmp_path):
    model_dir, _ = tiny_model("bert")
    out = tmp_path / "bert.onnx"
    result = run(BIN / "attmemo-export", model_dir, out)
    assert result.returncode == 0, result.stderr
    assert f"rewrote {LAYERS} of {LAYERS} attention layers" in result.stdout
    onnx.checker.check_model(str(out), full_check=True)
    assert (tmp_path / "bert.tokenizer" / "tokenizer.json").exists()


def test_attmemo_transform_prints_the_count(tiny_model, tmp_path):
    _, plain = tiny_model("roberta")
    result = run(BIN / "attmemo", "transform", plain, tmp_path / "memo.onnx")
    assert result.returncode == 0, result.stderr
    assert f"rewrote {LAYERS} of {LAYERS}" in result.stdout


@pytest.mark.parametrize("make_input, expected", [
    (lambda tmp: tmp / "missing.onnx", "no such file"),
    (lambda tmp: _write(tmp / "text.onnx", "not a model"), "not a readable ONNX model"),
])
def test_attmemo_transform_bad_input_is_one_sentence(make_input, expected, tmp_path):
    result = run(BIN / "attmemo", "transform", make_input(tmp_path), tmp_path / "out.onnx")
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("make_dir, expected", [
    (lambda tmp: tmp / "nowhere", "does not exist"),
    (lambda tmp: _mkdir(tmp / "empty"), "config.json"),
])
def test_attmemo_export_bad_folder_is_one_sentence(make_dir, expected, tmp_path):
    result = run(BIN / "attmemo-export", make_dir(tmp_path), tmp_path / "out.onnx")
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
