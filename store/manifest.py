"""The database's table of contents: ``manifest.json``, validated on load.

A database folder holds, besides this file (L layer, b bucket length)::

    lengths/b{b}.npy          int32[count_b]  true token count of each stored row
    tokens/b{b}.npy           int32[count_b, b]  token ids of each stored row (documents.py)
    L{L}/key.w1.npy ...       the layer's key embedding (see keys.py)
    L{L}/b{b}.ann             Annoy index of the layer's keys, item id = row
    L{L}/b{b}.values          raw [count_b, H, b, b] attention probabilities (see values.py)
    shift/...                 the document key's shift index over every stored text (shift_index.py;
                              absent in databases built before it: they match position for position)

Every file is listed with its size and sha256. Loading checks the schema (types
and ranges of every field), that every listed path stays inside the folder,
every file's size, and the sha256 of every file but the value stores: Annoy
(C++) and np.load trust their files, and these are small. For MiniLM: 210 KB of
key weights per layer, and per stored text and layer about 1 KB of index
against 50 KB of stored attention at 64 tokens. All these checks took opening
a 24-text MiniLM database from 3.8 to 6.0 ms (hashing its 1.4 MB: 1.5 ms);
at ~1 GB/s, a 100,000-text one would spend ~0.6 s hashing (an estimate).
``verify_checksums`` also rehashes the value stores (reads everything).
Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path, PurePosixPath

SCHEMA_VERSION = 1
FILENAME = "manifest.json"
# The large files, hashed only by verify_checksums. A flipped byte inside one
# gives a wrong stored probability, not a crash; rehashing them at every open
# (or checking rows per lookup) would cost as much as the hits save.
VALUE_STORE_SUFFIX = ".values"


class MemoDatabaseError(ValueError):
    """A database folder that cannot be used; the message names the file and what to do."""

    def __init__(self, message: str):
        # One line, whatever an embedded library error said (some span several).
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)))


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
    serving: dict | None = None      # which layers serve at which threshold (attmemo calibrate; serving.py)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if self.serving is None:
            del data["serving"]
        data["layers"] = {str(k): v for k, v in self.layers.items()}
        data["buckets"] = {str(k): v for k, v in self.buckets.items()}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, where: Path) -> Manifest:
        """Parse and validate; raise MemoDatabaseError naming ``where`` and the first problem."""
        data = _parse(text, where)
        version = data.get("schema_version")
        if not (_is_int(version, 0) and version == SCHEMA_VERSION):
            raise MemoDatabaseError(f"{where}: schema version {_short(version)} is not {SCHEMA_VERSION}; "
                                    "rebuild the database with this attmemo (attmemo build-db).")
        if problem := _schema_problem(data):
            raise _invalid(where, problem)
        layers = {int(k): v for k, v in data["layers"].items()}
        from .serving import validate   # serving.py imports this module
        return cls(model_id=data["model_id"],
                   layers=layers,
                   buckets={int(k): v for k, v in data["buckets"].items()},
                   dtype=data["dtype"], threshold=float(data["threshold"]), key=KeySpec(**data["key"]),
                   corpus=data["corpus"], files={k: dict(v) for k, v in data["files"].items()},
                   serving=validate(data.get("serving"), layers, where))


def _parse(text: str | bytes, where: Path) -> dict:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:   # ValueError covers bad JSON and bad UTF-8
        raise _invalid(where, f"not JSON: {_short(error)}") from error
    if not isinstance(data, dict):
        raise _invalid(where, "not a JSON object")
    return data


def _invalid(where: Path, problem: str) -> MemoDatabaseError:
    return MemoDatabaseError(f"{where}: not a valid attmemo manifest ({problem}); "
                             "rebuild the database with attmemo build-db.")


_FIELDS = {"schema_version", "model_id", "layers", "buckets", "dtype", "threshold", "key", "corpus", "files"}
_KEY_FIELDS = {f.name for f in dataclasses.fields(KeySpec)}
# At most 9 digits: no index or length is that large, and int() refuses over 4300 digits.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,8}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _schema_problem(data: dict) -> str | None:
    """What keeps parsed JSON ``data`` from being a manifest of this schema, or None."""
    from .values import CODECS   # values.py imports this module

    # Other top-level fields are not read here; "serving" (attmemo calibrate) is
    # validated by serving.py, which owns it.
    if missing := _FIELDS - data.keys():
        return f"field {sorted(missing)[0]!r} is missing"
    if not (isinstance(data["model_id"], str) and data["model_id"] and data["model_id"].isprintable()):
        return "'model_id' must be a non-empty printable string"
    if not _int_map(data["layers"], key_min=0, value_min=1):
        return "'layers' must map layer indices >= 0 to head counts >= 1"
    if not _int_map(data["buckets"], key_min=1, value_min=0):
        return "'buckets' must map bucket lengths >= 1 to row counts >= 0"
    if not (isinstance(data["dtype"], str) and data["dtype"] in CODECS):
        return f"'dtype' must be one of {', '.join(CODECS)}"
    if not is_threshold(data["threshold"]):
        return "'threshold' must be a number in (0, 1]"
    key = data["key"]
    if not (isinstance(key, dict) and key.keys() == _KEY_FIELDS and all(_is_int(v, 1) for v in key.values())):
        return f"'key' must hold exactly {', '.join(sorted(_KEY_FIELDS))}, each an integer >= 1"
    if not isinstance(data["corpus"], dict):
        return "'corpus' must be an object"
    if not isinstance(data["files"], dict):
        return "'files' must map relative paths to their bytes and sha256"
    for name, entry in data["files"].items():
        if not _is_relative_inside(name):
            return f"file name {_short(name)} is not a relative path inside the database folder"
        if not (isinstance(entry, dict) and entry.keys() == {"bytes", "sha256"} and _is_int(entry["bytes"], 0)
                and isinstance(entry["sha256"], str) and _SHA256.fullmatch(entry["sha256"])):
            return f"the entry of {_short(name)} must be {{\"bytes\": integer >= 0, \"sha256\": 64 hex digits}}"
    return None


def is_threshold(value) -> bool:
    """A hit threshold: a JSON number (not a boolean) in (0, 1]."""
    return type(value) in (int, float) and math.isfinite(value) and 0 < value <= 1


def _is_int(value, minimum: int) -> bool:
    return type(value) is int and value >= minimum   # bool is not an integer here


def _int_map(value, *, key_min: int, value_min: int) -> bool:
    """A non-empty JSON object of decimal keys >= key_min to integers >= value_min."""
    return (isinstance(value, dict) and len(value) > 0
            and all(_DECIMAL.fullmatch(k) and int(k) >= key_min and _is_int(v, value_min) for k, v in value.items()))


def _is_relative_inside(name: str) -> bool:
    """Lexically: no absolute path, no '..' (symlinks are checked on disk, in load).

    Printable only: no NUL (os.stat raises), no newline (errors name the file
    in one line), no lone surrogate (printing the error would fail).
    """
    path = PurePosixPath(name)
    return bool(name) and name.isprintable() and not path.is_absolute() and ".." not in path.parts


def _short(value, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def write(manifest: Manifest, folder: Path) -> None:
    (folder / FILENAME).write_text(manifest.to_json() + "\n")


def load(folder: str | Path, *, verify_checksums: bool = False) -> Manifest:
    """Read and validate ``folder/manifest.json`` and the files it lists.

    Checks the schema, that every listed file exists inside ``folder`` (no
    symlink out of it), its size, and the sha256 of every file but the value
    stores; ``verify_checksums`` rehashes the value stores too. Raises
    MemoDatabaseError, one sentence naming the offending file.
    """
    folder = Path(folder)
    path = folder / FILENAME
    if not folder.is_dir():
        raise MemoDatabaseError(f"{folder}: no such database folder; build one with attmemo build-db.")
    if not path.is_file():
        raise MemoDatabaseError(f"{path}: missing, so {folder} is not an attmemo database; build one with attmemo build-db.")
    try:
        manifest = Manifest.from_json(path.read_bytes(), where=path)
        for name, entry in manifest.files.items():
            rehash = verify_checksums or not name.endswith(VALUE_STORE_SUFFIX)
            _check_file(folder, name, entry, manifest=path, rehash=rehash)
    except OSError as error:   # e.g. no permission to read
        raise MemoDatabaseError(f"{error.filename or path}: unreadable ({error.strerror or error}); "
                                "fix its permissions or rebuild the database.") from error
    return manifest


def _check_file(folder: Path, name: str, entry: dict, *, manifest: Path, rehash: bool) -> None:
    file = folder / name
    _check_inside(folder, name, manifest=manifest)
    if not file.is_file():
        raise MemoDatabaseError(f"{file}: listed in the manifest but missing; rebuild the database.")
    if (size := file.stat().st_size) != entry["bytes"]:
        raise MemoDatabaseError(f"{file}: {size} bytes, the manifest says {entry['bytes']}; "
                                "the database is damaged, rebuild it.")
    if rehash and _sha256(file) != entry["sha256"]:
        raise MemoDatabaseError(f"{file}: checksum differs from the manifest; the database is damaged, rebuild it.")


def _check_inside(folder: Path, name: str, *, manifest: Path) -> None:
    """A name that passed the schema stays inside ``folder`` unless a symlink on its way leads out.

    Only paths with a symlink on the way are resolved: resolving all 63 of a
    MiniLM database's cost 1.6 ms per open, more than hashing its small files.
    """
    part = str(folder)
    for component in name.split("/"):
        part = os.path.join(part, component)
        if os.path.islink(part):
            break
    else:
        return
    resolved = os.path.realpath(folder / name)
    if not Path(resolved).is_relative_to(os.path.realpath(folder)):
        raise MemoDatabaseError(f"{manifest}: lists {name}, a symlink to {resolved} outside the database folder; "
                                "rebuild the database.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
