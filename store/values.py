"""Stored attention probabilities: one fixed-stride memmap per layer and length bucket.

Row r of the bucket-b file of a layer with H heads is a [H, b, b] block; a
sequence of n <= b real tokens fills its top-left [H, n, n] (padding rows and
columns are not stored, the rest of the block stays zero). Values are
"unorm16": round(p * 65535) as uint16; at encoding the rounding error of each
row is added to the row's largest entry, so every row sums to exactly 65535.

The lookup op returns these integers as they are and the graph decodes them
natively (Cast to float, then one multiply by 1/65535 on the small P·V
result): decoding in numpy costs as much as a hit saves. IEEE half was
measured and dropped: numpy converts it at ~2 ns per value (6 ms for one
12x512x512 matrix) and a Python op cannot return float16.

A hit is re-expanded into the query's [H, S, S] (see ``raw_into``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


# name -> (storage dtype, encode float32[H, n, n] -> stored, decode(stored, out float32) in place)
CODECS = {
    "unorm16": (np.dtype(np.uint16), encode_unorm16, _decode_unorm16),
}


def codec(name: str):
    if name not in CODECS:
        raise MemoDatabaseError(f"unknown value dtype {name!r}; use one of {', '.join(CODECS)}.")
    return CODECS[name]


def entry_bytes(heads: int, bucket: int, dtype: str) -> int:
    return heads * bucket * bucket * codec(dtype)[0].itemsize


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
        self.path, self.bucket = path, bucket
        storage, self._encode, self._decode = codec(dtype)
        if mode == "r":
            _check_size(path, count * entry_bytes(heads, bucket, dtype),
                        f"{count} rows of [{heads}, {bucket}, {bucket}] {dtype}")
        try:
            self.rows = np.memmap(path, dtype=storage, mode=mode, shape=(count, heads, bucket, bucket))
        except (OSError, ValueError) as error:
            raise MemoDatabaseError(f"{path}: cannot map the value store ({error}); rebuild the database.") from error

    def write(self, row: int, probs_Hnn: np.ndarray) -> None:
        n = probs_Hnn.shape[-1]
        self.rows[row, :, :n, :n] = self._encode(probs_Hnn)

    def read(self, row: int, n: int, out_Hnn: np.ndarray | None = None) -> np.ndarray:
        """Decode the valid [H, n, n] region of ``row`` (into ``out_Hnn`` if given)."""
        stored = self.rows[row, :, :n, :n]
        out = out_Hnn if out_Hnn is not None else np.empty(stored.shape, np.float32)
        self._decode(stored, out)
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
        if positions is None or np.array_equal(positions, np.arange(n)):
            out_HSS[:, :n, :n] = self.rows[row, :, :n, :n]
            out_HSS[:, :n, n:] = 0
            out_HSS[:, n:, :n] = uniform
            out_HSS[:, n:, n:] = 0
            return
        padding = np.setdiff1d(np.arange(size), positions)
        out_HSS[...] = 0
        out_HSS[:, positions[:, None], positions] = self.rows[row, :, :n, :n]
        out_HSS[:, padding[:, None], positions] = uniform

    def view(self, row: int) -> np.ndarray:
        """The stored [H, b, b] block of ``row``, in place (zero-copy; read-only mapping)."""
        return self.rows[row]

    def flush(self) -> None:
        self.rows.flush()
