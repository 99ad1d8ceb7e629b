"""Shared fixtures: tiny random-weight models exported once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from attmemo.export.hf_export import export_hf_model
from tiny_models import ARCHITECTURES, make_tiny_model, sample_inputs

TEXTS = [
    "the model has a cache of attention scores for each layer and head",
    "after the first game the team was in the news",
    "price",
]


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_model(tiny_models_dir):
    """arch -> (HF folder, plain eager ONNX export); built on first use."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in cache:
            folder = make_tiny_model(arch, tiny_models_dir / arch)
            cache[arch] = (folder, export_hf_model(folder, tiny_models_dir / f"{arch}.plain.onnx"))
        return cache[arch]
    return get


def run_model(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def padded_feeds(model_dir: Path) -> dict[str, np.ndarray]:
    """Batch of 3 texts of different lengths, padded to the longest."""
    return sample_inputs(model_dir, TEXTS)


def max_diff_on_real_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


__all__ = ["ARCHITECTURES", "TEXTS", "max_diff_on_real_tokens", "padded_feeds", "run_model"]
