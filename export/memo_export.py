"""Hugging Face folder -> MemoAttention ONNX model: what ``attmemo-export`` does."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from attmemo.transforms.model_file import TransformReport, transform_file

from .hf_export import export_hf_model, tokenizer_dir_for
from .model_info import model_layer_count


def export_memo_model(model_dir: str | Path, out: str | Path, *, task: str = "feature-extraction",
                      opset: int = 18, allow_partial: bool = False,
                      keep_plain: str | Path | None = None) -> TransformReport:
    """Export ``model_dir`` with eager attention and rewrite every attention core into MemoAttention.

    Writes ``out`` and its tokenizer folder ``tokenizer_dir_for(out)``; with
    ``keep_plain`` the unmodified export is kept there too (for comparisons).
    Returns the transform report; raises ExportError / TransformError.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="attmemo-") as tmp:
        plain = export_hf_model(model_dir, Path(tmp) / "plain.onnx", task=task, opset=opset)
        report = transform_file(plain, out, allow_partial=allow_partial,
                                expected_layers=model_layer_count(model_dir))
        _replace_dir(tokenizer_dir_for(plain), tokenizer_dir_for(out))
        if keep_plain is not None:
            shutil.copyfile(plain, keep_plain)
    return report


def _replace_dir(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
