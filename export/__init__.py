"""Export Hugging Face encoders to ONNX with eager attention (needs the ``export`` extra)."""

from .hf_export import SOURCE_DIR_KEY, ExportError, export_hf_model, tokenizer_dir_for

__all__ = ["SOURCE_DIR_KEY", "ExportError", "export_hf_model", "tokenizer_dir_for"]
