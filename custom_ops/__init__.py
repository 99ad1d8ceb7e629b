"""attmemo's onnxruntime-extensions Python ops.

Importing this package declares the ops; they become usable in a session once
``SessionOptions.register_custom_ops_library(library_path())`` is called
(:func:`attmemo.session_options` does both).
"""

from .ortx import library_path

from . import memo_fetch, memo_gate, memo_lookup  # noqa: F401  (declares the ops)
from .memo_gate import DOMAIN

__all__ = ["DOMAIN", "library_path"]
