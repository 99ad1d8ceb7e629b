"""Stored attention probabilities: one fixed-stride memmap per layer and length bucket.

Row r of the bucket-b file of a layer with H heads is a [H, b, columns(b)] block; a
sequence of n <= b real tokens fills its top-left [H, n, columns(n)] (padding rows and
columns are not stored, the rest of the block stays zero). columns(n) is n, or ceil(n/2)
for log4. Five codecs:

unorm16 (default): round(p * 65535) as uint16; at encoding the
    rounding error of each row is added to the row's largest entry, so every row
    sums to exactly 65535. The lookup op returns these integers as they are and
    the graph decodes them natively (Cast to float, then one multiply by 1/65535
    on the small P·V result): decoding in numpy costs as much as a hit saves.
float16 (the same bytes) and float32 (twice the bytes): p as IEEE half or single.
    The document key (attmemo.document_tier) hands a block that fills its bucket to
    onnxruntime in place, as a slice of the read-only mapping; the fed model casts
    float16 natively. Measured on edited BBC documents at 256 tokens (MiniLM, eval):
    a hit costs 0.77 of the unmodified model with float32, ~0.80 with float16 and
    ~0.87 with unorm16 (widened by numpy first); the oracle is 0.76. The per-layer
    lookup op must return unorm16 (a Python op cannot return float16): it converts
    a float16 block per hit through a 64K-entry table and encodes a float32 one,
    so that path is slower with either.
log8 (a quarter of float32's bytes) and log4 (an eighth): log codes (log_codes.py), uint8,
    handed to the fed model in place like float32 and decoded by it natively
    (DequantizeLinear + Exp, log4 unpacked by two bit operations first; fed_decode.py).
    Quality and cost (benchmarks/compact_formats.py: MiniLM, 32 `edited` texts of 256
    tokens, every layer reusing): sentence-embedding cosine to exact, mean / p1, float32
    0.99620 / 0.97331, log8 0.99619 / 0.97327, log4 0.99608 / 0.97308; a hit costs 0.77 of
    the unmodified model with float32, 0.81 with log8 (float16 0.80, unorm16 0.81: log8 is as
    fast at half their bytes), 0.90 with log4, the oracle 0.77 (2 cores, load below 1.5; runs
    under load gave the same CPU-time ratios within 0.03). log4's extra is its unpack
    (BitwiseAnd, BitShift: ~0.2 ms each per layer) and the row sums. So: float32 while its value stores fit in the memory the
    page cache can keep (17.9 MiB per 256-token text of MiniLM); log8, then log4, when they
    would not: a page-cache miss costs 4-12 ms per stored matrix (runtime-facts.md), more
    than decoding all six of a log4 hit, and log4 keeps 8x as many texts in memory.
    The per-layer Python ops decode in numpy per hit (log_codes.decode: 0.6-1.1 ms per
    12x256x256 block), and the lookup op then re-encodes to unorm16: slower, never wrong.
numpy converts IEEE half to float32 at ~2 ns per value (6 ms for one 12x512x512 matrix),
so nothing on a serving path does that.

A hit is re-expanded into the query's [H, S, S] (see ``raw_into``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import log_codes
from .log_codes import LogCodes
from .manifest import MemoDatabaseError

UNORM_MAX = 65535


def encode_unorm16(probs_Hnn: np.ndarray) -> np.ndarray:
    q = probs_Hnn * np.float32(UNORM_MAX)
    np.rint(q, out=q)
    deficit = np.float32(UNORM_MAX) - q.sum(axis=-1)   # integers below 2**24: exact in float32
    rows = q.reshape(-1, q.shape[-1])
    rows[np.arange(rows.shape[0]), rows.argmax(axis=-1)] += deficit.reshape(-1)
    np.clip(q, 0, UNORM_MAX, out=q)
    return q.astype(np.uint16)


def _decode_unorm16(stored: np.ndarray, out: np.ndarray) -> None:
    np.multiply(stored, np.float32(1 / UNORM_MAX), out=out, dtype=np.float32)


def _decode_float(stored: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, stored)


# float16 bit pattern -> round(p * 65535): the lookup op's unorm16 for a float16 store.
_HALF_TO_UNORM16 = np.rint(np.clip(np.nan_to_num(np.arange(2**16, dtype=np.uint32).astype(np.uint16)
                                                 .view(np.float16).astype(np.float32)), 0, 1)
                           * UNORM_MAX).astype(np.uint16)


@dataclasses.dataclass(frozen=True)
class Codec:
    storage: np.dtype
    encode: Callable[[np.ndarray], np.ndarray]        # float32[H, n, n] -> stored [H, n, columns(n)]
    decode: Callable[[np.ndarray, np.ndarray], None]  # (stored [..., columns(n)], out float32 [..., n]) in place
    fed_dtype: np.dtype       # what the fed model's inputs hold (store/documents.py, transforms/unfuse.py)
    fed_scale: float | None   # what the fed model multiplies P·V by
    log: LogCodes | None = None   # log codes (log_codes.py): the fed model decodes them in the graph

    def columns(self, n: int) -> int:
        """Stored elements per row of n probabilities (n, or ceil(n/2) for two codes per byte)."""
        return self.log.columns(n) if self.log is not None else n


def _log_codec(spec: LogCodes) -> Codec:
    return Codec(np.dtype(np.uint8), lambda p: log_codes.encode(p, spec),
                 lambda stored, out: log_codes.decode(stored, out, spec), np.dtype(np.uint8), None, spec)


CODECS = {
    "unorm16": Codec(np.dtype(np.uint16), encode_unorm16, _decode_unorm16, np.dtype(np.float32), 1 / UNORM_MAX),
    "float16": Codec(np.dtype(np.float16), lambda p: np.ascontiguousarray(p, np.float16), _decode_float,
                     np.dtype(np.float16), None),
    "float32": Codec(np.dtype(np.float32), lambda p: np.ascontiguousarray(p, np.float32), _decode_float,
                     np.dtype(np.float32), None),
    "log8": _log_codec(log_codes.LOG8),
    "log4": _log_codec(log_codes.LOG4),
}


def codec(name: str) -> Codec:
    if name not in CODECS:
        raise MemoDatabaseError(f"unknown value dtype {name!r}; use one of {', '.join(CODECS)}.")
    return CODECS[name]


def entry_bytes(heads: int, bucket: int, dtype: str) -> int:
    c = codec(dtype)
    return heads * bucket * c.columns(bucket) * c.storage.itemsize


def _check_size(path: Path, expected: int, what: str) -> None:
    """np.memmap maps a longer file without complaint, so a wrong layout could pass: demand the exact size."""
    try:
        actual = path.stat().st_size
    except OSError as error:
        raise MemoDatabaseError(f"{path}: cannot read the value store ({error}); rebuild the database.") from error
    if actual != expected:
        raise MemoDatabaseError(f"{path}: {actual} bytes, but {what} take {expected}; rebuild the database.")


class ValueFile:
    """One layer's bucket file, opened for writing ("w+") or reading ("r")."""

    def __init__(self, path: Path, *, count: int, heads: int, bucket: int, dtype: str, mode: str):
        self.path, self.bucket, self.codec = path, bucket, codec(dtype)
        storage, columns = self.codec.storage, self.codec.columns(bucket)
        if mode == "r":
            _check_size(path, count * entry_bytes(heads, bucket, dtype),
                        f"{count} rows of [{heads}, {bucket}, {columns}] {dtype}")
        try:
            self.rows = np.memmap(path, dtype=storage, mode=mode, shape=(count, heads, bucket, columns))
        except (OSError, ValueError) as error:
            raise MemoDatabaseError(f"{path}: cannot map the value store ({error}); rebuild the database.") from error

    def write(self, row: int, probs_Hnn: np.ndarray) -> None:
        n = probs_Hnn.shape[-1]
        self.rows[row, :, :n, :self.codec.columns(n)] = self.codec.encode(probs_Hnn)

    def stored(self, row: int, n: int) -> np.ndarray:
        """The valid region of ``row`` as stored: [H, n, codec.columns(n)], a view of the mapping."""
        return self.rows[row, :, :n, :self.codec.columns(n)]

    def read(self, row: int, n: int, out_Hnn: np.ndarray | None = None) -> np.ndarray:
        """Decode the valid [H, n, n] region of ``row`` (into ``out_Hnn`` if given)."""
        out = out_Hnn if out_Hnn is not None else np.empty((self.rows.shape[1], n, n), np.float32)
        self.codec.decode(self.stored(row, n), out)
        return out

    def read_rows(self, row: int, n: int, rows_r: np.ndarray) -> np.ndarray:
        """float32[H, r, n]: the decoded rows ``rows_r`` of ``row``'s [H, n, n] (training targets)."""
        out = np.empty((self.rows.shape[1], len(rows_r), n), np.float32)
        self.codec.decode(self.stored(row, n)[:, rows_r], out)
        return out

    def raw_into(self, row: int, n: int, out_HSS: np.ndarray, positions: np.ndarray | None = None) -> None:
        """Write ``row`` (n real tokens) as unorm16 probabilities of a query padded to S >= n.

        positions: int[n] indices of the query's real tokens; None means the
        first n (right padding). Real rows get the stored [n, n] block and zeros
        on padding columns, so no mass falls on padding and rows sum to 65535.
        Padding rows (whose outputs no real token reads) attend uniformly to
        the n real tokens, so they sum to 65535 as well.
        """
        size = out_HSS.shape[-1]
        uniform = np.full(n, UNORM_MAX // n, dtype=np.uint16)
        uniform[: UNORM_MAX % n] += 1
        stored = self.unorm16(row, n)
        if positions is None or np.array_equal(positions, np.arange(n)):
            out_HSS[:, :n, :n] = stored
            out_HSS[:, :n, n:] = 0
            out_HSS[:, n:, :n] = uniform
            out_HSS[:, n:, n:] = 0
            return
        padding = np.setdiff1d(np.arange(size), positions)
        out_HSS[...] = 0
        out_HSS[:, positions[:, None], positions] = stored
        out_HSS[:, padding[:, None], positions] = uniform

    def unorm16(self, row: int, n: int) -> np.ndarray:
        """The [H, n, n] region of ``row`` as unorm16 (what the lookup op returns): in place if stored so."""
        stored = self.stored(row, n)
        if self.codec.log is None and self.rows.dtype == np.uint16:
            return stored
        if self.codec.log is None and self.rows.dtype == np.float16:
            return _HALF_TO_UNORM16[stored.view(np.uint16)]
        # float32 as it is; log codes decoded by numpy first (log_codes.decode's cost, per hit).
        return encode_unorm16(self.read(row, n))

    def fed(self, row: int, n: int, out_1Hnc: np.ndarray) -> np.ndarray:
        """[1, H, n, codec.columns(n)] of ``row`` as the fed model reads it (``codec.fed_dtype``; see unfuse.fed_model).

        A float16, float32 or log-coded block that fills its bucket is returned in place
        (onnxruntime reads a contiguous read-only mapping without copying it); otherwise it
        is copied (unorm16: widened) into ``out_1Hnc``.
        """
        if self.rows.dtype == self.codec.fed_dtype and n == self.bucket:
            return self.rows[row:row + 1]
        np.copyto(out_1Hnc[0], self.stored(row, n))
        return out_1Hnc

    def as_float(self, row: int, n: int, out_1Hnn: np.ndarray) -> np.ndarray:
        """[1, H, n, n] float32 of ``row``: in place if stored as float32 filling its bucket, else decoded into ``out_1Hnn``."""
        if self.rows.dtype == np.float32 and n == self.bucket:
            return self.rows[row:row + 1]
        self.codec.decode(self.stored(row, n), out_1Hnn[0])
        return out_1Hnn

    def flush(self) -> None:
        self.rows.flush()
