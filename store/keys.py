"""Key embedding at run time (numpy): a layer's input hidden states -> a small vector.

    features_F = pool(hidden_nD)                       n real tokens, D hidden size
    key_K      = relu(features_F @ w1 + b1) @ w2 + b2  F = segments * (D // hidden_pool)

Pooling averages the real tokens into ``segments`` equal position segments
(reuse only works between position-aligned inputs, so position must survive)
and averages ``hidden_pool`` adjacent hidden units, like the paper's
MaxPool2d(2). The two linear layers are trained in torch
(attmemo.models.key_embedding) so that the L2 distance between two keys
predicts the distance between the two layers' attention matrices; feature
standardisation is folded into ``w1``/``b1`` at export.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from .manifest import KeySpec, MemoDatabaseError

WEIGHTS = ("w1", "b1", "w2", "b2")


def weight_file(name: str) -> str:
    """File name of one weight array inside the layer's folder."""
    return f"key.{name}.npy"

# The pooling the graph computes natively (attmemo.transforms.key_pooling): a
# model rewritten by attmemo pools with these, so databases must too.
POOL_SEGMENTS = 8
POOL_HIDDEN = 4


def feature_size(spec: KeySpec, hidden_size: int) -> int:
    return spec.segments * (hidden_size // spec.hidden_pool)


def pool(hidden_nD: np.ndarray, spec: KeySpec) -> np.ndarray:
    """float32[F] features of one sequence's real tokens ``hidden_nD`` (n >= 1)."""
    n, d = hidden_nD.shape
    means_PD = _segment_weights(n, spec.segments) @ hidden_nD
    d_used = d - d % spec.hidden_pool
    return means_PD[:, :d_used].reshape(spec.segments, -1, spec.hidden_pool).mean(axis=2).reshape(-1)


@functools.lru_cache(maxsize=1024)
def _segment_weights(n: int, segments: int) -> np.ndarray:
    """float32[segments, n]: row p averages tokens [p*n//segments, (p+1)*n//segments), at least one token.

    A matrix product, because it costs a fraction of numpy's reduceat (measured).
    """
    weights = np.zeros((segments, n), np.float32)
    for p in range(segments):
        start = min(p * n // segments, n - 1)
        end = max((p + 1) * n // segments, start + 1)
        weights[p, start:end] = 1.0 / (end - start)
    weights.setflags(write=False)
    return weights


@dataclasses.dataclass
class KeyEmbedding:
    w1: np.ndarray   # float32[F, E]
    b1: np.ndarray   # float32[E]
    w2: np.ndarray   # float32[E, K]
    b2: np.ndarray   # float32[K]

    @property
    def dim(self) -> int:
        return self.w2.shape[1]

    def embed(self, features_BF: np.ndarray) -> np.ndarray:
        """float32[B, K] keys of pooled features float32[B, F].

        einsum, not ``@``: this runs inside onnxruntime's run, where OpenBLAS's
        worker threads busy-wait after each product and steal both cores from
        onnxruntime (measured: baseline 96 -> 72 ms at seq 512 without them);
        limiting them per call with threadpoolctl cost 160 us per lookup.
        """
        hidden = np.einsum("bf,fe->be", features_BF, self.w1)
        hidden += self.b1
        np.maximum(hidden, 0, out=hidden)
        return np.einsum("be,ek->bk", hidden, self.w2) + self.b2

    def save(self, folder: Path) -> list[Path]:
        paths = []
        for name in WEIGHTS:
            path = folder / weight_file(name)
            np.save(path, np.ascontiguousarray(getattr(self, name), dtype=np.float32), allow_pickle=False)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, folder: Path) -> KeyEmbedding:
        arrays = {}
        for name in WEIGHTS:
            path = folder / weight_file(name)
            try:
                arrays[name] = np.load(path, allow_pickle=False).astype(np.float32, copy=False)
            except (OSError, ValueError) as error:
                raise MemoDatabaseError(f"{path}: unreadable key-embedding weights ({error}); "
                                 "rebuild the database.") from error
        key = cls(**arrays)
        if key.w1.ndim != 2 or key.w2.ndim != 2 or key.b1.shape != key.w1.shape[1:] \
                or key.w2.shape[0] != key.w1.shape[1] or key.b2.shape != key.w2.shape[1:]:
            raise MemoDatabaseError(f"{folder}: key-embedding weights have inconsistent shapes; rebuild the database.")
        return key
