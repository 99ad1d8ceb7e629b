"""attmemo: attention memoization inside ONNX Runtime.

    import attmemo
    session = attmemo.InferenceSession("model.memo.onnx")
    # or, with a plain onnxruntime session:
    session = onnxruntime.InferenceSession("model.memo.onnx", attmemo.session_options())
"""

from .session import InferenceSession, session_options

__all__ = ["InferenceSession", "session_options"]
