"""attmemo: attention memoization inside ONNX Runtime.

    import attmemo
    session = attmemo.InferenceSession("model.onnx")
    # or, with a plain onnxruntime session:
    session = onnxruntime.InferenceSession("model.onnx", attmemo.session_options())

The names below load on first use: ``import attmemo.store`` (numpy and annoy) must
not load onnxruntime and the Python ops through this package's ``__init__``.
"""

from __future__ import annotations

import importlib

__all__ = ["InferenceSession", "MemoDatabaseError", "ModelFileError", "session_options"]

_HOME = {"InferenceSession": "attmemo.session", "session_options": "attmemo.session",
         "MemoDatabaseError": "attmemo.store.manifest", "ModelFileError": "attmemo.session_errors"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'attmemo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
