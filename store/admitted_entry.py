"""The file of one admitted text (admission.py): self-describing, written whole, then renamed.

    MAGIC | uint32 header length | header JSON {n, dtype, model_id, layers: {layer: H}}
          | int32[n] token ids | zero padding to 64 bytes | per layer, ascending: [H, n, n] values

Values start on a 64-byte boundary, so a layer's block maps as a whole float32/float16 array
that onnxruntime reads in place. A file whose size is not exactly what its header says is
never served (a damaged or foreign file, not one of ours cut short: those are never renamed).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .values import codec as value_codec

MAGIC = b"attmemo-admit-1\n"
_ALIGN = 64


class Entry:
    """One admitted text: where its file is and where its values start.

    pending: {layer: [H, n, n]} while the writer has not put it on disk yet (name None):
    this process serves it from memory meanwhile.
    """

    def __init__(self, name: str | None, n: int, heads: dict[int, int], offset: int, size: int, *,
                 ids: np.ndarray | None = None, pending: dict[int, np.ndarray] | None = None):
        self.name, self.n, self.heads, self.offset, self.size = name, n, heads, offset, size
        self.ids, self.pending = ids, pending


def header(n: int, heads: dict[int, int], dtype: str, model_id: str) -> dict:
    return {"n": n, "dtype": dtype, "model_id": model_id, "layers": {str(k): v for k, v in sorted(heads.items())}}


def entry_bytes(head: dict) -> int:
    """Bytes of the file of one admitted text with this header."""
    n, heads = int(head["n"]), head["layers"].values()
    return values_offset(n, head) + sum(int(h) * n * n for h in heads) * value_codec(head["dtype"]).storage.itemsize


def values_offset(n: int, head: dict) -> int:
    size = len(MAGIC) + 4 + len(json.dumps(head, sort_keys=True).encode()) + 4 * n
    return -(-size // _ALIGN) * _ALIGN


def pending_entry(ids_n: np.ndarray, blocks: dict[int, np.ndarray], head: dict) -> Entry:
    n = len(ids_n)
    return Entry(None, n, {int(k): int(v) for k, v in head["layers"].items()}, values_offset(n, head),
                 entry_bytes(head), ids=ids_n, pending=blocks)


def write(path: Path, ids_n: np.ndarray, blocks: dict[int, np.ndarray], head: dict, *, after_layer=None) -> None:
    """Write the whole file at ``path``; ``after_layer()`` runs after each layer's block (a test's kill point)."""
    encoded = json.dumps(head, sort_keys=True).encode()
    prefix = MAGIC + struct.pack("<I", len(encoded)) + encoded + ids_n.tobytes()
    with open(path, "wb") as f:
        f.write(prefix + b"\0" * (values_offset(len(ids_n), head) - len(prefix)))
        for layer in sorted(blocks):
            f.write(memoryview(blocks[layer]).cast("B"))    # [H, n, n] contiguous (admission.admit made it so)
            if after_layer is not None:
                after_layer()
    if (written := path.stat().st_size) != entry_bytes(head):
        path.unlink()
        raise ValueError(f"wrote {written} bytes of an entry of {entry_bytes(head)}")


def read(path: Path, *, model_id: str, dtype: str, heads: dict[int, int]) -> tuple[Entry, np.ndarray]:
    """(the entry, int32[n] ids) of the file at ``path``; ValueError if it is not one of this store's."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("no attmemo header")
        (length,) = struct.unpack("<I", f.read(4))
        head = json.loads(f.read(length))
        n = int(head["n"])
        ids = np.frombuffer(f.read(4 * n), np.int32)
    stored = {int(k): int(v) for k, v in head["layers"].items()}
    if head["model_id"] != model_id or head["dtype"] != dtype or stored != heads:
        raise ValueError("stored for another model, codec or set of layers")
    size = entry_bytes(head)
    if len(ids) != n or (actual := path.stat().st_size) != size:
        raise ValueError(f"{actual} bytes, expected {size}")
    return Entry(path.name, n, stored, values_offset(n, head), size), ids
