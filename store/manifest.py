"""The database's table of contents: ``manifest.json``, validated on load.

A database folder holds, besides this file (L layer, b bucket length)::

    lengths/b{b}.npy          int32[count_b]  true token count of each stored row
    L{L}/key.w1.npy ...       the layer's key embedding (see keys.py)
    L{L}/b{b}.ann             Annoy index of the layer's keys, item id = row
    L{L}/b{b}.values          raw [count_b, H, b, b] attention probabilities (see values.py)

Every file is listed with its size and sha256. Loading checks the schema, the
presence and size of every file (cheap); ``verify_checksums`` also rehashes
them (reads everything). Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

SCHEMA_VERSION = 1
FILENAME = "manifest.json"


class MemoDatabaseError(ValueError):
    """A database folder that cannot be used; the message names the file and what to do."""


@dataclasses.dataclass
class KeySpec:
    segments: int        # hidden states are mean-pooled into this many position segments
    hidden_pool: int     # and this many adjacent hidden units are averaged
    width: int           # hidden layer of the key network
    dim: int             # key vector size (before the length coordinate)


@dataclasses.dataclass
class Manifest:
    model_id: str
    layers: dict[int, int]           # layer -> heads
    buckets: dict[int, int]          # bucket length -> stored rows (same rows in every layer)
    dtype: str                       # value codec, see values.CODECS
    threshold: float                 # hit if 1 - distance >= threshold
    key: KeySpec
    corpus: dict                     # what the database was built from (path, texts, max_length)
    files: dict[str, dict]           # relative path -> {"bytes": int, "sha256": str}
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["layers"] = {str(k): v for k, v in self.layers.items()}
        data["buckets"] = {str(k): v for k, v in self.buckets.items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: Path) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("schema_version") != SCHEMA_VERSION:
                raise MemoDatabaseError(f"{where}: schema version {data.get('schema_version')!r} is not "
                                 f"{SCHEMA_VERSION}; rebuild the database with this attmemo (attmemo build-db).")
            return cls(model_id=str(data["model_id"]),
                       layers={int(k): int(v) for k, v in data["layers"].items()},
                       buckets={int(k): int(v) for k, v in data["buckets"].items()},
                       dtype=str(data["dtype"]), threshold=float(data["threshold"]),
                       key=KeySpec(**data["key"]), corpus=dict(data["corpus"]),
                       files={str(k): dict(v) for k, v in data["files"].items()})
        except MemoDatabaseError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MemoDatabaseError(f"{where}: not a valid attmemo manifest ({type(error).__name__}: {error}); "
                             "rebuild the database with attmemo build-db.") from error


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def write(manifest: Manifest, folder: Path) -> None:
    (folder / FILENAME).write_text(manifest.to_json() + "\n")


def load(folder: str | Path, *, verify_checksums: bool = False) -> Manifest:
    """Read and validate ``folder/manifest.json``; raise MemoDatabaseError naming the offending file."""
    folder = Path(folder)
    path = folder / FILENAME
    if not folder.is_dir():
        raise MemoDatabaseError(f"{folder}: no such database folder; build one with attmemo build-db.")
    if not path.is_file():
        raise MemoDatabaseError(f"{path}: missing, so {folder} is not an attmemo database; build one with attmemo build-db.")
    manifest = Manifest.from_json(path.read_text(), where=path)
    for name, entry in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise MemoDatabaseError(f"{file}: listed in the manifest but missing; rebuild the database.")
        if file.stat().st_size != entry["bytes"]:
            raise MemoDatabaseError(f"{file}: {file.stat().st_size} bytes, the manifest says {entry['bytes']}; "
                             "the database is damaged, rebuild it.")
        if verify_checksums and _sha256(file) != entry["sha256"]:
            raise MemoDatabaseError(f"{file}: checksum differs from the manifest; the database is damaged, rebuild it.")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
