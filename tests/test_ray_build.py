"""``attmemo build-db --ray``: the corpus recorded on a local Ray cluster of 2 workers gives the
database the one-process build gives.

The Ray build runs the real command (``--ray local --ray-workers 2``, so Ray starts a local
cluster of 2 CPUs and 2 recording actors, one onnxruntime session each); the local build calls
build_database on the same tiny model and corpus. Every stored file must be byte-identical (the
manifest's sha256 of values, tokens, key embeddings and Annoy indexes), and sessions over the two
databases must give the same outputs and the same lookups and hits. Without Ray installed,
``--ray`` says in one sentence how to install it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attmemo
from attmemo.custom_ops import registry

from conftest import TEXTS, TINY_CORPUS, padded_feeds, run_model

BIN = Path(sys.executable).parent
MAX_LENGTH = 32


def _build_db_argv(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "attmemo"), "build-db", str(model), "--corpus", str(corpus), "--out", str(out),
            "--max-length", str(MAX_LENGTH), *extra]


@pytest.fixture(scope="module")
def two_builds(tiny_db, tmp_path_factory):
    """(MemoAttention model, the local build's folder, the Ray build's folder, the Ray command's stdout)."""
    from attmemo.builder.build import build_database

    model, _, corpus = tiny_db
    folder = tmp_path_factory.mktemp("ray-build")
    local = build_database(model, corpus, out=folder / "local.memo", max_length=MAX_LENGTH).out
    result = subprocess.run(_build_db_argv(model, corpus, folder / "ray.memo", "--ray", "local", "--ray-workers", "2"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return model, local, folder / "ray.memo", result.stdout


def test_the_ray_build_reports_like_the_local_one(two_builds):
    *_, stdout = two_builds
    assert "recording on Ray (local)" in stdout
    assert f"recording: {len(TINY_CORPUS)}" in stdout and "texts/s" in stdout     # the driver's progress
    assert "check: first corpus texts" in stdout


def test_the_ray_build_stores_the_same_files(two_builds):
    _, local, ray_built, _ = two_builds
    manifests = [json.loads((db / "manifest.json").read_text()) for db in (local, ray_built)]
    assert manifests[0]["files"] and manifests[0]["files"] == manifests[1]["files"]
    assert manifests[0] == manifests[1]


def test_sessions_over_both_databases_give_the_same_answers(two_builds, tiny_model, tokenizer):
    model, local, ray_built, _ = two_builds
    feeds = [padded_feeds(tiny_model("bert")[0])] + [
        {k: v.astype(np.int64) for k, v in tokenizer([text], return_tensors="np").items()}
        for text in TINY_CORPUS[::3] + TEXTS]
    answers = []
    for db in (local, ray_built):
        session = attmemo.InferenceSession(str(model), db=db)
        outputs = [run_model(session, feed) for feed in feeds]
        answers.append((outputs, session.memo_stats()))
        registry.detach(session._memo.model_id)
    (local_outputs, local_stats), (ray_outputs, ray_stats) = answers
    for a, b in zip(local_outputs, ray_outputs):
        np.testing.assert_array_equal(a, b)
    counts = [{layer: (s["lookups"], s["hits"]) for layer, s in stats.items()} for stats in (local_stats, ray_stats)]
    assert counts[0] == counts[1] and sum(hits for _, hits in counts[0].values()) > 0


def test_without_ray_the_option_says_how_to_install_it(tiny_db, tmp_path):
    """Ray made unimportable in a fresh interpreter: one sentence, exit 2, before anything is built."""
    model, _, corpus = tiny_db
    argv = _build_db_argv(model, corpus, tmp_path / "out.memo", "--ray", "local")[1:]
    script = ("import sys; sys.modules['ray'] = None; from attmemo.cli import main; "
              f"sys.exit(main({argv!r}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["error: building on Ray needs Ray, which is not installed; "
                                          "install it with pip install attmemo[ray]."]
    assert not (tmp_path / "out.memo").exists()
