"""Graph passes that put attention memoization into ONNX encoders.

``fuse_memo_attention`` loads on first use: the serving path imports leaf modules of
this package (names.py) and must not pay for onnxscript's rewriter.
"""

__all__ = ["fuse_memo_attention"]


def __getattr__(name: str):
    if name == "fuse_memo_attention":
        from .fuse import fuse_memo_attention
        return fuse_memo_attention
    raise AttributeError(f"module 'attmemo.transforms' has no attribute {name!r}")
