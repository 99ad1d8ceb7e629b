"""Graph passes that put attention memoization into ONNX encoders."""

from .fuse import fuse_memo_attention

__all__ = ["fuse_memo_attention"]
