"""Facts about a Hugging Face model folder that the CLI checks exports against."""

from __future__ import annotations

import json
from pathlib import Path

# Config keys naming the number of transformer layers, by architecture family.
_LAYER_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def model_layer_count(model_dir: str | Path) -> int | None:
    """Number of attention layers declared in ``model_dir/config.json``, or None if not stated."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return next((int(config[k]) for k in _LAYER_KEYS if isinstance(config.get(k), int)), None)
