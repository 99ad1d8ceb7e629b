"""Rewrite an ONNX file on disk: load, fuse, check, save."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
import onnx.inliner
import onnx_ir as ir

from .diagnose import fused_attention, why_not_attention
from .fuse import fuse_memo_attention
from .memo_function import default_opset

# Squeeze/Unsqueeze/ReduceSum/Split take axes as inputs from opset 13 on; the pass emits those forms.
MIN_OPSET = 13

log = logging.getLogger(__name__)


class TransformError(ValueError):
    """A model that cannot be rewritten; the message says why and what to do."""


@dataclasses.dataclass
class TransformReport:
    rewritten: int
    attention_layers: int   # Softmax nodes found: every attention layer has one
    missed: list[str]       # "softmax name: why it was not recognised" for each one left as it was


def transform_file(src: str | Path, dst: str | Path, *, allow_partial: bool = False,
                   expected_layers: int | None = None) -> TransformReport:
    """Rewrite every attention core of the ONNX model ``src`` into MemoAttention and save to ``dst``.

    expected_layers: how many layers the model has (e.g. from its config);
    defaults to the number of Softmax nodes. Raises TransformError when fewer
    layers were rewritten, unless ``allow_partial``; ``dst`` is then not written.
    """
    model = _load(Path(src))
    opset = default_opset(dict(model.graph.opset_imports))
    if opset < MIN_OPSET:
        raise TransformError(f"{src}: opset {opset} is older than {MIN_OPSET}; convert it first with "
                             f"onnx.version_converter.convert_version(model, {MIN_OPSET}) or export at opset 14-22.")
    softmaxes = sum(1 for n in model.graph if n.op_type == "Softmax")
    expected = expected_layers if expected_layers is not None else softmaxes
    rewritten = fuse_memo_attention(model)
    missed = [f"{n.name or '(unnamed Softmax)'}: {why_not_attention(n)}" for n in model.graph if n.op_type == "Softmax"]
    report = TransformReport(rewritten=rewritten, attention_layers=expected, missed=missed)
    fused = fused_attention(model) if rewritten == 0 else None
    if fused is not None:
        raise TransformError(f"{src}: {fused}.")
    if rewritten == 0:
        raise TransformError(f"{src}: no attention layer was recognised ({_describe(missed)}); "
                             "export with eager attention (attmemo-export does) or report the model.")
    if rewritten < expected and not allow_partial:
        raise TransformError(f"{src}: rewrote {rewritten} of {expected} attention layers ({_describe(missed)}); "
                             "pass --allow-partial to accept a partial rewrite.")
    _save(model, Path(dst))
    return report


def _describe(missed: list[str]) -> str:
    if not missed:
        return "no Softmax was left unmatched"
    shown = "; ".join(missed[:3]) + ("; ..." if len(missed) > 3 else "")
    return f"not recognised: {shown}"


def _load(path: Path) -> ir.Model:
    if not path.is_file():
        raise TransformError(f"{path}: no such file; give the path of an .onnx model.")
    try:
        return ir.load(path)
    except Exception as error:  # noqa: BLE001 - protobuf raises many types for a bad file
        raise TransformError(f"{path}: not a readable ONNX model ({type(error).__name__}).") from error


def _save(model: ir.Model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Models over protobuf's 2 GB limit need external data; everything we export is far below it.
    ir.save(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    # The checker does not check the nodes inside model-local functions against the
    # model's opset (an opset-18 ReduceMean in an opset-14 model passed it); inlined, it does.
    onnx.checker.check_model(onnx.inliner.inline_local_functions(onnx.load(str(path))), full_check=True)
    log.info("wrote %s", path)
