"""A session rewrites a model once; later sessions read the rewrite from the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

import attmemo
from attmemo import model_cache
from conftest import padded_feeds, run_model


@pytest.fixture
def model(tiny_model, tmp_path, monkeypatch):
    """(a MemoAttention model of the tiny bert, its feeds), with a cache of this test's own."""
    from attmemo.transforms.model_file import transform_file

    folder, plain = tiny_model("bert")
    transform_file(plain, tmp_path / "m.onnx")
    monkeypatch.setenv("ATTMEMO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "m.onnx", padded_feeds(folder)


def test_the_exact_model_is_rewritten_once_and_read_back_after(model):
    model, feeds = model
    first = run_model(attmemo.InferenceSession(str(model)), feeds)
    kept = model_cache.cache_path(model, "exact")
    assert kept.is_file()
    written = kept.stat().st_mtime_ns
    again = run_model(attmemo.InferenceSession(str(model)), feeds)
    np.testing.assert_array_equal(again, first)
    assert kept.stat().st_mtime_ns == written, "read back, not rewritten"
    os.utime(model, ns=(1, 1))            # the model file changed: another key
    assert model_cache.cache_path(model, "exact") != kept


def test_a_kept_model_whose_bytes_changed_is_rewritten_not_served(model):
    model, feeds = model
    first = run_model(attmemo.InferenceSession(str(model)), feeds)
    kept = model_cache.cache_path(model, "exact")
    damaged = bytearray(kept.read_bytes())
    damaged[-100] ^= 0xFF                 # one flipped byte, inside a weight
    kept.write_bytes(bytes(damaged))
    assert model_cache.load(kept) is None
    np.testing.assert_array_equal(run_model(attmemo.InferenceSession(str(model)), feeds), first)
    assert model_cache.load(kept) is not None, "rewritten and kept again"


def test_the_cache_can_be_turned_off(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTMEMO_CACHE", "off")
    assert model_cache.cache_path(tiny_model("bert")[1], "exact") is None
