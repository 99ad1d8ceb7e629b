"""Which layers a database serves, at which threshold: the manifest's ``serving`` section.

Written by ``attmemo calibrate``::

    "serving": {"thresholds": {"2": 0.9, "3": 0.9},
                "documents": {"threshold": 0.95, "layers": [0, 1, 2]},
                "measured": {...what calibration saw...}}

thresholds: the per-layer learned-key lookups inside the model (MemoLookup). A
layer not listed never looks up (its MemoAttention takes the exact path at the
cost of one If). An empty ``thresholds`` switches them off.
documents: the document key (documents.py), asked once per run by
attmemo.InferenceSession before the model runs; on a hit the listed layers
reuse the stored text's attention. Absent: not used.
Without the section every layer serves at the build's ``threshold``, and the
document key serves verbatim repeats only (threshold 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from .manifest import FILENAME, MemoDatabaseError, is_threshold


@dataclasses.dataclass(frozen=True)
class Documents:
    threshold: float          # hit if this share of positions hold the same token id
    layers: tuple[int, ...]   # layers that reuse on a hit


def documents_of(manifest) -> Documents | None:
    """What the document key serves (see the module docstring)."""
    if manifest.serving is None:
        return Documents(1.0, tuple(sorted(manifest.layers)))
    documents = manifest.serving.get("documents")
    return None if documents is None else Documents(float(documents["threshold"]), tuple(documents["layers"]))


def thresholds_of(manifest) -> dict[int, float]:
    """layer -> threshold the database serves (see the module docstring)."""
    if manifest.serving is None:
        return {layer: manifest.threshold for layer in manifest.layers}
    return {int(layer): float(tau) for layer, tau in manifest.serving["thresholds"].items()}


def validate(serving: object, layers: dict[int, int], where: Path) -> dict | None:
    """The manifest's ``serving`` value checked against its layers; raise MemoDatabaseError naming ``where``."""
    if serving is None:
        return None
    if not isinstance(serving, dict) or not isinstance(serving.get("thresholds"), dict):
        problem = "\"serving\" must be an object with a \"thresholds\" object"
    else:
        problem = _thresholds_problem(serving["thresholds"], layers) or _documents_problem(serving.get("documents"),
                                                                                          layers)
    if problem:
        raise MemoDatabaseError(f"{where}: {problem}; run attmemo calibrate again or rebuild the database.")
    return serving


def _thresholds_problem(thresholds: dict, layers: dict[int, int]) -> str | None:
    for layer, tau in thresholds.items():
        if not (isinstance(layer, str) and layer.isdigit() and int(layer) in layers):
            return f"\"serving\" names layer {layer!r}, which the database does not store"
        if not is_threshold(tau):
            return f"\"serving\" threshold {tau!r} of layer {layer} is not in (0, 1]"
    return None


def _documents_problem(documents: object, layers: dict[int, int]) -> str | None:
    if documents is None:
        return None
    listed = documents.get("layers") if isinstance(documents, dict) else None
    if not (isinstance(listed, list) and listed and
            all(isinstance(k, int) and not isinstance(k, bool) and k in layers for k in listed)):
        return "\"serving\" \"documents\" must be an object listing layers the database stores"
    if not is_threshold(documents.get("threshold")):
        return f"\"serving\" \"documents\" threshold {documents.get('threshold')!r} is not in (0, 1]"
    return None


def write(folder: str | Path, *, thresholds: dict[int, float], measured: dict,
          documents: Documents | None = None) -> None:
    """Replace the ``serving`` section of ``folder``'s manifest (atomically: readers see old or new)."""
    path = Path(folder) / FILENAME
    data = json.loads(path.read_text())
    data["serving"] = {"thresholds": {str(layer): float(tau) for layer, tau in sorted(thresholds.items())},
                       "measured": measured}
    if documents is not None:
        data["serving"]["documents"] = {"threshold": float(documents.threshold), "layers": list(documents.layers)}
    handle, temporary = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
