"""attmemo: attention memoization inside ONNX Runtime.

    import attmemo
    session = attmemo.InferenceSession("model.onnx")
    # or, with a plain onnxruntime session:
    session = onnxruntime.InferenceSession("model.onnx", attmemo.session_options())
"""

from .session import InferenceSession, session_options
from .session_errors import ModelFileError
from .store import MemoDatabaseError

__all__ = ["InferenceSession", "MemoDatabaseError", "ModelFileError", "session_options"]
