"""Which layers a database serves, at which threshold: the manifest's ``serving`` section.

Written by ``attmemo calibrate``::

    "serving": {"thresholds": {"2": 0.9, "3": 0.9},
                "documents": {"threshold": 0.7, "layers": [0, 2, 3],
                              "closer": {"threshold": 0.85, "layers": [1]}},
                "measured": {...what calibration saw...}}

thresholds: the per-layer learned-key lookups inside the model (MemoLookup). A
layer not listed never looks up (its MemoAttention takes the exact path at the
cost of one If). An empty ``thresholds`` switches them off.
documents: the document key (documents.py, document_executor.py), asked once per
run by the model's MemoGate in any onnxruntime session (and first by
attmemo.InferenceSession.run's batch-1 fast path); the listed layers reuse the
matched stored text's attention. Absent: not used. "closer" (optional, nests):
a stricter tier whose layers also reuse when the match is at least its
threshold, for layers that tolerate another text's attention only when it is
a close match.
Without the section every layer serves at the build's ``threshold``, and the
document key serves verbatim repeats only (threshold 1). ``Plan.of`` parses the
section once (manifest.py validated it); MemoDatabase serves a Plan.
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
    threshold: float                   # hit if this share of positions hold the same token id
    layers: tuple[int, ...]            # layers that reuse on a hit
    closer: Documents | None = None    # from its (higher) threshold on, its layers reuse too

    def served(self, share: float) -> tuple[int, ...]:
        """The layers that reuse a stored text matching at ``share`` of positions, sorted; () below the threshold."""
        if share < self.threshold:
            return ()
        return tuple(sorted((*self.layers, *(self.closer.served(share) if self.closer else ()))))

    @property
    def every_layer(self) -> tuple[int, ...]:
        """The layers that reuse on the closest match."""
        return self.served(1.0)

    def tiers(self) -> list[tuple[int, ...]]:
        """The sets of layers a hit may reuse, one per threshold (each needs its own fed model)."""
        closer = self.closer.tiers() if self.closer is not None else []
        return [tuple(sorted(self.layers)), *(tuple(sorted((*self.layers, *tier))) for tier in closer)]

    def describe(self) -> str:
        """E.g. "0.7 on layers 0,2,3; at 0.85 on layers 1 too"."""
        tiers, tier = [], self
        while tier is not None:
            tiers.append(f"{tier.threshold:g} on layers {','.join(map(str, tier.layers))}")
            tier = tier.closer
        return tiers[0] + "".join(f"; at {text} too" for text in tiers[1:])

    def as_json(self) -> dict:
        data = {"threshold": float(self.threshold), "layers": list(self.layers)}
        return data if self.closer is None else {**data, "closer": self.closer.as_json()}

    @classmethod
    def from_json(cls, data: dict) -> Documents:
        closer = data.get("closer")
        return cls(float(data["threshold"]), tuple(data["layers"]), None if closer is None else cls.from_json(closer))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a database serves, parsed once from the manifest (see the module docstring)."""
    thresholds: dict[int, float]       # layer -> threshold of the per-layer learned-key lookups
    documents: Documents | None        # the document key; None: not used

    @classmethod
    def of(cls, manifest) -> Plan:
        """The manifest's validated ``serving`` section; without one, the build's defaults."""
        if manifest.serving is None:
            return cls({layer: manifest.threshold for layer in manifest.layers},
                       Documents(1.0, tuple(sorted(manifest.layers))))
        documents = manifest.serving.get("documents")
        return cls({int(layer): float(tau) for layer, tau in manifest.serving["thresholds"].items()},
                   None if documents is None else Documents.from_json(documents))


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


def _documents_problem(documents: object, layers: dict[int, int], *, where: str = "\"documents\"",
                       above: float = 0.0, taken: frozenset[int] = frozenset()) -> str | None:
    if documents is None:
        return None
    listed = documents.get("layers") if isinstance(documents, dict) else None
    if not (isinstance(listed, list) and listed and
            all(isinstance(k, int) and not isinstance(k, bool) and k in layers for k in listed)):
        return f"\"serving\" {where} must be an object listing layers the database stores"
    if taken & set(listed) or len(set(listed)) < len(listed):
        return f"\"serving\" {where} lists a layer twice"
    threshold = documents.get("threshold")
    if not is_threshold(threshold):
        return f"\"serving\" {where} threshold {threshold!r} is not in (0, 1]"
    if threshold <= above:
        return f"\"serving\" {where} threshold {threshold!r} is not above the threshold it is closer than"
    return _documents_problem(documents.get("closer"), layers, where=f"{where} \"closer\"", above=threshold,
                              taken=taken | set(listed))


def write(folder: str | Path, *, thresholds: dict[int, float], measured: dict,
          documents: Documents | None = None) -> None:
    """Replace the ``serving`` section of ``folder``'s manifest (atomically: readers see old or new)."""
    path = Path(folder) / FILENAME
    data = json.loads(path.read_text())
    data["serving"] = {"thresholds": {str(layer): float(tau) for layer, tau in sorted(thresholds.items())},
                       "measured": measured}
    if documents is not None:
        data["serving"]["documents"] = documents.as_json()
    handle, temporary = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
