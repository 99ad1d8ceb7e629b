"""Shared fixtures: tiny random-weight models exported once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from attmemo.export.hf_export import export_hf_model
from tiny_models import ARCHITECTURES, make_tiny_model, sample_inputs

# Rewritten models are cached (attmemo.model_cache): keep this run's out of the user's cache.
_CACHE = None if "ATTMEMO_CACHE" in os.environ else tempfile.mkdtemp(prefix="attmemo-test-cache-")
if _CACHE is not None:
    os.environ["ATTMEMO_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)

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


# Corpus of the tiny database: word sequences of several lengths (tiny tokenizer vocabulary).
TINY_CORPUS = [
    " ".join(("the model has a cache of attention scores for each layer and head after the first game "
              "the team was in the news market price data").split()[i:i + n])
    for n in (4, 6, 9, 12) for i in range(0, 8, 2)
]


@pytest.fixture(scope="session")
def minilm_workdir(tmp_path_factory) -> Path:
    """A workdir holding the real all-MiniLM-L6-v2 as ``attmemo eval`` exports it (plain, MemoAttention,
    oracle; attmemo.evaluation.models), exported once for every test that needs it."""
    from attmemo.evaluation import models
    work = tmp_path_factory.mktemp("minilm-eval")
    models(work)
    return work


@pytest.fixture(scope="session")
def tiny_db(tiny_model, tiny_models_dir):
    """A real memo database of the tiny bert: (MemoAttention model, database folder, corpus .txt).

    Built once per session by attmemo.builder.build.build_database; tests that damage it copy it first.
    """
    from attmemo.export.memo_export import export_memo_model
    from attmemo.builder.build import build_database
    from attmemo.builder.train import KeyTraining

    folder, _ = tiny_model("bert")
    model = tiny_models_dir / "bert.memo.onnx"
    if not model.exists():
        export_memo_model(folder, model)
    corpus = tiny_models_dir / "tiny-corpus.txt"
    corpus.write_text("\n".join(TINY_CORPUS) + "\n")
    db = tiny_models_dir / "bert.memo.memo"
    if not db.exists():
        build_database(model, corpus, out=db, max_length=32, training=KeyTraining(epochs=5))
    return model, db, corpus


@pytest.fixture
def documents_only(tiny_db, tmp_path):
    """A copy of the tiny database serving the document key alone (every layer, threshold 0.9)."""
    from attmemo.store import serving

    model, db, _ = tiny_db
    copy = tmp_path / "bert.memo"
    shutil.copytree(db, copy)
    serving.write(copy, thresholds={}, documents=serving.Documents(0.9, (0, 1)), measured={})
    return model, copy


@pytest.fixture(scope="session")
def tokenizer(tiny_db):
    from transformers import AutoTokenizer

    from attmemo.export.hf_export import tokenizer_dir_for
    return AutoTokenizer.from_pretrained(str(tokenizer_dir_for(tiny_db[0])))


@pytest.fixture(scope="session")
def exact(tiny_db):
    """The model with every MemoAttention inlined to its exact branch (what a miss runs)."""
    from attmemo.session import exact_model, rewritten_model_bytes
    return ort.InferenceSession(rewritten_model_bytes(tiny_db[0], exact_model))


def run_model(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def padded_feeds(model_dir: Path) -> dict[str, np.ndarray]:
    """Batch of 3 texts of different lengths, padded to the longest."""
    return sample_inputs(model_dir, TEXTS)


def max_diff_on_real_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


__all__ = ["ARCHITECTURES", "TEXTS", "TINY_CORPUS", "max_diff_on_real_tokens", "padded_feeds", "run_model"]
