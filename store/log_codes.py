"""Log codes: attention probabilities as small integers on a geometric scale (numpy side).

A code q in 0..top stands for the level

    level(q) = exp(step * (q - top))          so level(top) = 1 and level(0) = exp(-step * top)

and a probability is stored as the code of the level nearest to it (nearest in value,
not in log: the error that counts is P·V's). Two layouts, n a row's true length:

log8  one code per byte, top 255, levels 1 .. 1e-8, absolute: a decoded row sums to its
      stored row within ~1e-8 per entry, so it is used as it comes (no renormalisation).
      [H, n, n] uint8: a quarter of float32.
log4  two codes per byte, top 15, levels 1 .. 1e-4 relative to the row's largest entry
      (which is coded 15 exactly), so decoded rows must be renormalised: P = G / sum(G)
      per row, done on P·V's result by the graph. Column j < c = ceil(n/2) sits in the
      low nibble of byte j, column c + j in its high nibble: unpacking is two bit operations
      and one concatenation of contiguous halves, never an interleave. [H, n, c] uint8: an
      eighth of float32.

Why these levels (MiniLM, 32 `edited` queries at 256 tokens, every layer reusing, the sentence
embedding's cosine to exact): float32 mean 0.99620 / p1 0.97331; log8 0.99620 / 0.97333;
log4 with levels down to 1e-4 of the row max 0.99608 / 0.97308, down to 1e-3 0.99467 / 0.97114,
down to 1e-5 0.99593 / 0.97332. Keeping the k largest entries of each row instead (top-k,
renormalised) fails: k = 32 of 256 gives mean 0.936 (MiniLM's rows are diffuse).
The graph decodes either natively: DequantizeLinear(codes, step, top) then Exp
(transforms/fed_decode.py); ``decode`` here is the same arithmetic in numpy, for the
per-layer Python ops and for training targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LogCodes:
    bits: int            # 8: one code per byte; 4: two
    step: float          # natural-log distance between adjacent levels
    relative: bool       # levels are relative to each row's largest entry (then rows are renormalised)

    @property
    def top(self) -> int:
        return 2 ** self.bits - 1

    def columns(self, n: int) -> int:
        """Stored bytes per row of n probabilities."""
        return n if self.bits == 8 else (n + 1) // 2

    def levels(self) -> np.ndarray:
        """float32[top + 1]: level(q), computed as the graph computes it (float32 step)."""
        q = np.arange(self.top + 1, dtype=np.float32) - np.float32(self.top)
        return np.exp(np.float32(self.step) * q)


LOG8 = LogCodes(bits=8, step=float(np.log(1e8) / 255), relative=False)
LOG4 = LogCodes(bits=4, step=float(np.log(1e4) / 15), relative=True)


def encode(probs_Xn: np.ndarray, spec: LogCodes) -> np.ndarray:
    """uint8[..., spec.columns(n)]: the codes of float probabilities [..., n] (rows on the last axis)."""
    x = np.asarray(probs_Xn, np.float32)
    if spec.relative:
        x = x / np.maximum(x.max(axis=-1, keepdims=True), np.float32(1e-30))
    levels = spec.levels()
    with np.errstate(divide="ignore"):
        below = np.floor(np.log(np.maximum(x, 1e-38)) / np.float32(spec.step)) + spec.top
    below = np.clip(below, 0, spec.top - 1).astype(np.intp)
    # Nearest in value: the level just below or the one just above.
    codes = below + (levels[below + 1] - x < x - levels[below])
    codes = np.clip(codes, 0, spec.top).astype(np.uint8)
    return codes if spec.bits == 8 else pack(codes)


def pack(codes_Xn: np.ndarray) -> np.ndarray:
    """uint8[..., ceil(n/2)] of 4-bit codes [..., n]: the first half low nibbles, the second half high."""
    n = codes_Xn.shape[-1]
    c = (n + 1) // 2
    packed = codes_Xn[..., :c].copy()
    packed[..., : n - c] |= codes_Xn[..., c:] << 4
    return packed


def unpack(packed_Xc: np.ndarray, n: int) -> np.ndarray:
    """uint8[..., n]: the 4-bit codes ``pack`` stored (the graph does the same with BitwiseAnd, BitShift, Concat)."""
    return np.concatenate([packed_Xc & 15, packed_Xc >> 4], axis=-1)[..., :n]


def decode(stored_Xc: np.ndarray, out_Xn: np.ndarray, spec: LogCodes) -> None:
    """Write the probabilities ``stored_Xc`` codes into float32 ``out_Xn`` (renormalised rows for log4).

    Costs 0.6-1.1 ms per 12x256x256 block in numpy (a table lookup and,
    for log4, an unpack and a row sum): the per-layer Python ops pay it per hit; the fed
    model decodes in the graph instead.
    """
    n = out_Xn.shape[-1]
    codes = stored_Xc if spec.bits == 8 else unpack(stored_Xc, n)
    np.take(spec.levels(), codes, out=out_Xn)
    if spec.relative:
        out_Xn /= out_Xn.sum(axis=-1, keepdims=True)
