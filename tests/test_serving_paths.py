"""Every session serves the database's plan: plain onnxruntime sessions, batches, padding.

On the tiny bert's real database serving the document key alone (every layer at 0.9):
the executor decides per sequence inside the graph (MemoGate once per run, MemoFetch in
each served layer), so a plain ``onnxruntime.InferenceSession`` reuses as
``attmemo.InferenceSession`` does, batches reuse sequence by sequence, padding never
makes a match, and calibration in the same process never changes what a live session
is served.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

import attmemo
from attmemo.custom_ops import registry
from attmemo.store import MemoDatabase, serving
from conftest import TINY_CORPUS


@pytest.fixture(autouse=True)
def detached(tiny_db):
    """A database attached here would serve every later session of the tiny bert in the process."""
    yield
    registry.detach(MemoDatabase.open(tiny_db[1]).model_id)


def _batch(tokenizer, texts: list[str], session) -> dict[str, np.ndarray]:
    """The texts padded at the end to the longest, as an embedding server batches them."""
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    return {k: v.astype(np.int64) for k, v in encoded.items() if k in names}


def _alone(session, feed: dict[str, np.ndarray], b: int) -> np.ndarray:
    """Sequence ``b`` of a padded batch run by itself, unpadded: [n, D]."""
    n = int(feed["attention_mask"][b].sum())
    return session.run(None, {k: v[b:b + 1, :n] for k, v in feed.items()})[0][0]


def _hits(stats) -> list[int]:
    """Hits of layers 0 and 1 (the tiny bert's two)."""
    return [stats.get(layer, {}).get("hits", 0) for layer in (0, 1)]


def test_a_plain_onnxruntime_session_reuses_what_the_database_serves(documents_only, tokenizer, exact):
    model, db = documents_only
    plain = ort.InferenceSession(str(model), attmemo.session_options(db=db))
    database = attmemo.session._shared(db)
    before = _hits(database.stats.snapshot())
    feed = _batch(tokenizer, [TINY_CORPUS[-1]], plain)
    edited = {**feed, "input_ids": feed["input_ids"].copy()}
    edited["input_ids"][0, 3] = feed["input_ids"][0, 4]          # one token changed in place: 13/14 >= 0.9
    np.testing.assert_allclose(plain.run(None, feed)[0], exact.run(None, feed)[0], atol=2e-4)
    reused = plain.run(None, edited)[0]
    assert not np.allclose(reused, exact.run(None, edited)[0], atol=1e-6), "the stored attention was reused"
    assert [a - b for a, b in zip(_hits(database.stats.snapshot()), before)] == [2, 2]


def test_a_batch_reuses_per_sequence_and_computes_the_others_exactly(documents_only, tokenizer, exact):
    model, db = documents_only
    for session in (attmemo.InferenceSession(str(model), db=db),
                    ort.InferenceSession(str(model), attmemo.session_options(db=db))):
        stored, unseen = TINY_CORPUS[2], "a text the database never saw at all"
        feed = _batch(tokenizer, [stored, unseen, TINY_CORPUS[9]], session)
        assert len(set(feed["attention_mask"].sum(axis=1).tolist())) == 3, "three lengths, padded at the end"
        database = attmemo.session._shared(db)
        before = database.stats.snapshot()
        out = session.run(None, feed)[0]
        after = database.stats.snapshot()
        assert [after[k]["hits"] - before.get(k, {}).get("hits", 0) for k in (0, 1)] == [2, 2]
        assert [after[k]["fallbacks"] - before.get(k, {}).get("fallbacks", 0) for k in (0, 1)] == [0, 0], \
            "the hits were delivered, not dropped to the exact path"
        # A sequence is looked up where a stored text has its length (the unseen one may have none).
        compared = sum(int(n) in database.stored_lengths for n in feed["attention_mask"].sum(axis=1))
        assert [after[k]["lookups"] - before.get(k, {}).get("lookups", 0) for k in (0, 1)] == [compared] * 2
        for b in range(3):
            n = int(feed["attention_mask"][b].sum())
            # Stored texts reuse their own recorded attention; the unseen one computes exactly.
            np.testing.assert_allclose(out[b, :n], _alone(exact, feed, b), atol=2e-4, err_msg=f"sequence {b}")
        # The stored texts' rows come from the stored (unorm16) attention, not from the exact path.
        assert not np.array_equal(out[0, :int(feed["attention_mask"][0].sum())], _alone(exact, feed, 0))


def test_padding_never_creates_a_match(documents_only, tokenizer, exact):
    model, db = documents_only
    plain = ort.InferenceSession(str(model), attmemo.session_options(db=db))
    database = attmemo.session._shared(db)
    stored = tokenizer(TINY_CORPUS[-1], return_tensors="np")["input_ids"]     # S tokens, stored
    size = stored.shape[1]
    n = max(set(range(2, size)) - {int(k) for k in database.stored_lengths})  # a length never stored
    padded = stored.copy()
    padded[0, n:] = 0                                                          # its first n, padded to S
    feed = {"input_ids": padded, "attention_mask": (np.arange(size) < n).astype(np.int64)[None],
            "token_type_ids": np.zeros_like(padded)}
    feed = {k: v for k, v in feed.items() if k in {i.name for i in plain.get_inputs()}}
    before = _hits(database.stats.snapshot())
    np.testing.assert_array_equal(plain.run(None, feed)[0][0, :n], exact.run(None, feed)[0][0, :n])
    assert _hits(database.stats.snapshot()) == before


def test_calibration_never_changes_what_a_live_session_is_served(tiny_db, tmp_path, tokenizer):
    from attmemo.calibrate import calibrate

    model, db, _ = tiny_db
    copy = tmp_path / "bert.memo"
    shutil.copytree(db, copy)
    serving.write(copy, thresholds={0: 0.01, 1: 0.01}, documents=None, measured={})   # per-layer lookups hit
    live = attmemo.InferenceSession(str(model), db=copy)
    feed = _batch(tokenizer, [TINY_CORPUS[5]], live)

    def served() -> tuple[np.ndarray, dict]:
        before = live.memo_stats()
        out = live.run(None, feed)[0]
        after = live.memo_stats()
        return out, {k: {c: after[k][c] - before.get(k, {}).get(c, 0) for c in ("lookups", "hits")} for k in after}

    reference, counted = served()
    assert counted[0]["hits"] == 1, "the live session reuses"
    calibrate(model, TINY_CORPUS[:6], db=copy, rounds=1, write=False)
    again, counted_again = served()
    np.testing.assert_array_equal(again, reference)
    assert counted_again == counted


def test_serving_imports_neither_torch_nor_transformers(tiny_db):
    model, db, _ = tiny_db
    code = textwrap.dedent(f"""
        import sys
        import attmemo, onnxruntime
        session = attmemo.InferenceSession({str(model)!r}, db={str(db)!r})
        plain = onnxruntime.InferenceSession({str(model)!r}, attmemo.session_options(db={str(db)!r}))
        loaded = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not loaded, loaded
        import onnxruntime_extensions  # the real package still imports afterwards, sharing the ops
        assert onnxruntime_extensions.Opdef is sys.modules["onnxruntime_extensions._ocos"].Opdef
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
