"""Which layers a database serves, at which threshold: the manifest's ``serving`` section.

Written by ``attmemo calibrate``::

    "serving": {"thresholds": {"2": 0.9, "3": 0.9}, "measured": {...what calibration saw...}}

A layer not listed never looks up (its MemoAttention takes the exact path at
the cost of one If). An empty ``thresholds`` switches memoization off. Without
the section every layer serves at the build's ``threshold``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .manifest import FILENAME, MemoDatabaseError


def thresholds_of(manifest) -> dict[int, float]:
    """layer -> threshold the database serves (see the module docstring)."""
    if manifest.serving is None:
        return {layer: manifest.threshold for layer in manifest.layers}
    return {int(layer): float(tau) for layer, tau in manifest.serving["thresholds"].items()}


def validate(serving: object, layers: dict[int, int], where: Path) -> dict | None:
    """The manifest's ``serving`` value checked against its layers; raise MemoDatabaseError naming ``where``."""
    if serving is None:
        return None
    problem = None
    if not isinstance(serving, dict) or not isinstance(serving.get("thresholds"), dict):
        problem = "\"serving\" must be an object with a \"thresholds\" object"
    else:
        for layer, tau in serving["thresholds"].items():
            if not (isinstance(layer, str) and layer.isdigit() and int(layer) in layers):
                problem = f"\"serving\" names layer {layer!r}, which the database does not store"
            elif isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
                problem = f"\"serving\" threshold {tau!r} of layer {layer} is not in (0, 1]"
    if problem:
        raise MemoDatabaseError(f"{where}: {problem}; run attmemo calibrate again or rebuild the database.")
    return serving


def write(folder: str | Path, *, thresholds: dict[int, float], measured: dict) -> None:
    """Replace the ``serving`` section of ``folder``'s manifest (atomically: readers see old or new)."""
    path = Path(folder) / FILENAME
    data = json.loads(path.read_text())
    data["serving"] = {"thresholds": {str(layer): float(tau) for layer, tau in sorted(thresholds.items())},
                       "measured": measured}
    handle, temporary = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
