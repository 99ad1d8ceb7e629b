"""Export a local Hugging Face encoder folder to ONNX with eager attention.

Eager attention gives every layer the explicit chain
``MatMul(Q, K^T) -> Div(scale) -> Add(mask) -> Softmax -> MatMul(V)`` that the
attmemo graph rewrites look for (the SDPA path splits the scale onto Q and K and
adds an IsNaN/Where guard after the Softmax).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_DIR_KEY = "attmemo.source_model_dir"
_OPTIMUM_LOGGERS = ("optimum", "transformers", "torch.onnx")


class ExportError(ValueError):
    """A model folder or export request that cannot be exported; the message says what to do."""


def tokenizer_dir_for(onnx_path: str | Path) -> Path:
    """Return the folder where ``export_hf_model`` saves the tokenizer for ``onnx_path``
    (``model.onnx`` -> ``model.tokenizer/``)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.with_suffix("") if onnx_path.suffix == ".onnx" else onnx_path
    return stem.parent / (stem.name + ".tokenizer")


def export_hf_model(model_dir: str | Path, out_path: str | Path, *,
                    task: str = "feature-extraction", opset: int = 18) -> Path:
    """Export the HF model in ``model_dir`` (eager attention, eval mode) to ``out_path``.

    The ONNX model has dynamic batch and sequence axes, records the absolute source
    folder in its metadata under ``attmemo.source_model_dir``, and the tokenizer (if
    the folder has one) is saved to ``tokenizer_dir_for(out_path)``.
    Returns the absolute path of the written ONNX file. Raises ``ExportError``.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    out_path = Path(out_path).expanduser().resolve()
    model_type = _check_model_dir(model_dir)
    _check_task(model_type, task)
    model = _load_model(model_dir, task)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attmemo-export-", dir=out_path.parent) as tmp:
        _run_optimum(model, Path(tmp), task, opset)
        _write_onnx(Path(tmp) / "model.onnx", out_path, model_dir)
    _save_tokenizer(model_dir, tokenizer_dir_for(out_path))
    logger.info("Exported %s (%s, %s) to %s", model_dir, model_type, task, out_path)
    return out_path


def _check_model_dir(model_dir: Path) -> str:
    """Validate that ``model_dir`` is a loadable HF folder; return its ``model_type``."""
    from transformers import AutoConfig

    if not model_dir.is_dir():
        raise ExportError(f"Model folder {model_dir} does not exist; pass the path of a local "
                          "Hugging Face model folder (one containing config.json).")
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"Model folder {model_dir} has no config.json; pass a folder saved "
                          "with save_pretrained (config.json plus the weights).")
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise ExportError(f"config.json in {model_dir} cannot be read by transformers ({exc}); "
                          "use a folder saved by a supported transformers model.") from exc
    return config.model_type


def _check_task(model_type: str, task: str) -> None:
    """Raise ``ExportError`` unless optimum can export ``model_type`` for ``task``."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (fills the TasksManager registry)
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, "onnx", library_name="transformers")
    except KeyError as exc:
        raise ExportError(f"Architecture {model_type!r} is not supported by the optimum ONNX "
                          "exporter; use an encoder such as bert, roberta or deberta-v2.") from exc
    if TasksManager.map_from_synonym(task) not in tasks:
        raise ExportError(f"Task {task!r} is not supported for {model_type!r}; "
                          f"use one of: {', '.join(sorted(tasks))}.")


def _load_model(model_dir: Path, task: str):
    """Load the model for ``task`` from ``model_dir`` offline, eager attention; return it in eval mode."""
    from optimum.exporters.tasks import TasksManager

    model_class = TasksManager.get_model_class_for_task(
        TasksManager.map_from_synonym(task), framework="pt", library="transformers")
    try:
        model = model_class.from_pretrained(str(model_dir), local_files_only=True,
                                            attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise ExportError(f"Cannot load the model weights from {model_dir} ({exc}); "
                          "check that the folder holds a complete save_pretrained output.") from exc
    return model.eval()


def _run_optimum(model, tmp: Path, task: str, opset: int) -> None:
    """Export ``model`` with optimum into ``tmp`` (writes ``tmp/model.onnx``); returns nothing."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    with _quiet(), torch.no_grad():
        onnx_export_from_model(model, tmp, task=task, opset=opset, do_validation=False)
    if not (tmp / "model.onnx").is_file():
        raise ExportError(f"optimum produced no single model.onnx for task {task!r}; "
                          "use an encoder-only task such as feature-extraction.")


def _write_onnx(src: Path, out_path: Path, model_dir: Path) -> None:
    """Copy the exported ``src`` to ``out_path`` with the source-folder metadata; returns nothing."""
    import onnx

    external = src.with_name(src.name + "_data").exists()
    model = onnx.load(str(src), load_external_data=True)
    meta = {p.key: p for p in model.metadata_props}
    if SOURCE_DIR_KEY in meta:
        meta[SOURCE_DIR_KEY].value = str(model_dir)
    else:
        onnx.helper.set_model_props(model, {**{k: p.value for k, p in meta.items()},
                                            SOURCE_DIR_KEY: str(model_dir)})
    if external:
        onnx.save(model, str(out_path), save_as_external_data=True,
                  all_tensors_to_one_file=True, location=out_path.name + "_data")
    else:
        onnx.save(model, str(out_path))


def _save_tokenizer(model_dir: Path, tok_dir: Path) -> None:
    """Save the folder's tokenizer into ``tok_dir`` if it has one; returns nothing."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        logger.info("No tokenizer saved: %s has none that loads (%s)", model_dir, exc)
        return
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok.save_pretrained(str(tok_dir))


class _quiet:
    """Context manager: hide tracer/deprecation warnings and lower optimum's INFO chatter."""

    def __enter__(self):
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            import torch
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        except (ImportError, AttributeError):
            pass
        self._levels = {n: logging.getLogger(n).level for n in _OPTIMUM_LOGGERS}
        for name in _OPTIMUM_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warn.__exit__(*exc)
        return False
