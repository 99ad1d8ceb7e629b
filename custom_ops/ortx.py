"""onnxruntime-extensions' Python-op API, without what its package ``__init__`` drags in.

``import onnxruntime_extensions`` runs ``onnxruntime_extensions.cvt``, which imports
transformers and torch when they are installed (5-6 s and ~1 GB of address space on the
2-core machine) and sets ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` for the whole
process. A serving process needs only ``_ocos``: the op declarations, the hook and the
library path. So ``_ocos`` is loaded under a bare stand-in of its package, and the stand-in
is dropped again: a later ``import onnxruntime_extensions`` (by the user, or by export code)
runs the real ``__init__``, which finds ``_ocos`` already loaded and shares its op table.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PACKAGE = "onnxruntime_extensions"


def _load_ocos() -> types.ModuleType:
    loaded = sys.modules.get(f"{_PACKAGE}._ocos")
    if loaded is not None:
        return loaded
    if _PACKAGE in sys.modules:   # the real package is imported already: use it as it is
        return importlib.import_module(f"{_PACKAGE}._ocos")
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnxruntime-extensions is not installed; pip install onnxruntime-extensions==0.15.2")
    stand_in = types.ModuleType(_PACKAGE)
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[_PACKAGE] = stand_in
    try:
        return importlib.import_module(f"{_PACKAGE}._ocos")
    finally:
        if sys.modules.get(_PACKAGE) is stand_in:
            del sys.modules[_PACKAGE]


_ocos = _load_ocos()

Opdef = _ocos.Opdef
PyCustomOpDef = _ocos.PyCustomOpDef
onnx_op = Opdef.declare   # what onnxruntime_extensions exports as onnx_op
library_path = _ocos.get_library_path
