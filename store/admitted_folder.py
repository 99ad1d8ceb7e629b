"""Folders of admitted texts (admission.py): a new store's description, and attaching a folder's
segment to a loaded MemoDatabase, built or not.

A folder with no build holds only ``admitted/``; its ``store.json`` names the model, the heads
of every layer and the codec, so any process can open it with no model at hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import filelock

from . import keys, serving
from .admission import LOCK_SECONDS, AdmittedStore, has_segment
from .documents import DocumentIndex
from .layout import ADMITTED_DESCRIPTOR, ADMITTED_DIR, ADMITTED_LOCK, ADMITTED_TEMPORARY
from .manifest import FILENAME as MANIFEST, KeySpec, Manifest, MemoDatabaseError
from .values import codec as value_codec


def create(folder: Path, *, model_id: str, heads: dict[int, int], dtype: str) -> None:
    """Make ``folder`` an admitted-only store (no build) if it is not a store yet; raise MemoDatabaseError if it is another's."""
    folder = Path(folder)
    (folder / ADMITTED_DIR).mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(folder / ADMITTED_LOCK), timeout=LOCK_SECONDS):
        descriptor = folder / ADMITTED_DESCRIPTOR
        if not descriptor.exists():
            temporary = folder / ADMITTED_DIR / f"{ADMITTED_TEMPORARY}store-{os.getpid()}"
            temporary.write_text(json.dumps({"model_id": model_id, "dtype": dtype,
                                             "layers": {str(k): v for k, v in sorted(heads.items())}}) + "\n")
            os.replace(temporary, descriptor)


def read_descriptor(folder: Path) -> tuple[str, dict[int, int], str]:
    """(model id, {layer: heads}, dtype) of an admitted-only folder; MemoDatabaseError naming the file."""
    path = Path(folder) / ADMITTED_DESCRIPTOR
    try:
        data = json.loads(path.read_text())
        heads = {int(k): int(v) for k, v in data["layers"].items()}
        value_codec(data["dtype"])
        if not (isinstance(data["model_id"], str) and heads and all(h > 0 for h in heads.values())):
            raise ValueError("bad fields")
        return data["model_id"], heads, data["dtype"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MemoDatabaseError(f"{path}: not a readable admitted-store description ({error}); "
                                "remove the folder to start a new store.") from error


# What a folder with no build and no calibration serves: the document key at 0.9 on every layer.
# docs/benchmarks.md: on edited documents 0.9 reuses 100 % at cosine 0.9965 (p1 0.975), where 0.95
# reuses 92 %; on templated messages, whose fills must not share attention, it reuses 6 % at p1 0.989.
DEFAULT_SHARE = 0.9


def open_admitted_only(cls, folder: Path):
    """A ``cls`` (MemoDatabase) over a folder holding admitted texts only, serving DEFAULT_SHARE on every layer."""
    model_id, heads, dtype = read_descriptor(folder)
    key = KeySpec(segments=keys.POOL_SEGMENTS, hidden_pool=keys.POOL_HIDDEN, width=1, dim=1)   # no learned key
    manifest = Manifest(model_id=model_id, layers=heads, buckets={}, dtype=dtype, threshold=DEFAULT_SHARE, key=key,
                        corpus={"admitted": True}, files={})
    plan = serving.Plan({}, serving.Documents(DEFAULT_SHARE, tuple(sorted(heads))))
    database = cls(Path(folder), manifest, {}, DocumentIndex({}, {}), plan=plan)
    attach(database)
    return database


def attach(database) -> None:
    """Attach ``database``'s folder's admitted segment to its document key (no-op if its plan serves none).

    Also where the folder has no admitted/ yet: another process may start admitting into it
    while this one serves (an os.stat per lookup finds out).
    """
    folder, plan = Path(database.folder), database.document_serving
    if database.documents is None or plan is None:
        return
    manifest = database.manifest
    base = sum(entry["bytes"] for entry in manifest.files.values())
    if (folder / MANIFEST).exists():
        base += (folder / MANIFEST).stat().st_size
    database.documents.admitted = AdmittedStore(
        folder, model_id=manifest.model_id, heads={layer: manifest.layers[layer] for layer in plan.every_layer},
        dtype=manifest.dtype, min_share=plan.threshold, base_bytes=base)
