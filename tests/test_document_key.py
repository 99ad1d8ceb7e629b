"""The document key: one lookup per run, before the model, for position-aligned near duplicates.

On the tiny bert's real database: a stored text, or one with a token changed in
place, runs the fed model with every served layer reading the stored attention;
anything else (another length, a second segment, too many changed tokens) runs the
model exactly as without the key. Batches and padding: tests/test_serving_paths.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import attmemo
from attmemo.store import MemoDatabase, MemoDatabaseError, serving
from attmemo.store.documents import DocumentIndex
from conftest import TINY_CORPUS


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text)["input_ids"], np.int64)[None]


def _feed(session, ids: np.ndarray, **overrides) -> dict[str, np.ndarray]:
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids), **overrides}
    return {i.name: feed[i.name] for i in session.get_inputs()}


def _hits(session) -> list[int]:
    return [entry["hits"] for _, entry in sorted(session.memo_stats().items())]


def test_a_stored_text_runs_the_fed_model_and_gives_the_exact_output(documents_only, tokenizer, exact):
    model, db = documents_only
    session = attmemo.InferenceSession(str(model), db=db)
    assert "document key at 0.9 on layers 0,1" in session.memo_status
    for text in TINY_CORPUS[:5]:
        feed = _feed(session, _ids(tokenizer, text))
        np.testing.assert_allclose(session.run(None, feed)[0], exact.run(None, feed)[0], atol=2e-4)
    assert _hits(session) == [5, 5]


def test_a_token_changed_in_place_still_hits_within_the_threshold(documents_only, tokenizer, exact):
    model, db = documents_only
    session = attmemo.InferenceSession(str(model), db=db)
    stored = _ids(tokenizer, TINY_CORPUS[-1])            # 14 tokens: one change keeps 13/14 = 0.93
    edited = stored.copy()
    edited[0, 3] = stored[0, 4]
    feed = _feed(session, edited)
    reused = session.run(None, feed)[0]
    assert _hits(session) == [1, 1]
    assert not np.allclose(reused, exact.run(None, feed)[0], atol=1e-6), "the stored attention was reused"
    twice = edited.copy()
    twice[0, 5] = stored[0, 6]                           # 12/14 = 0.86 < 0.9: a miss, computed exactly
    feed = _feed(session, twice)
    np.testing.assert_array_equal(session.run(None, feed)[0], exact.run(None, feed)[0])
    assert _hits(session) == [1, 1] and session.memo_stats()[0]["lookups"] == 2


def test_inputs_the_key_cannot_describe_compute_exactly(documents_only, tokenizer, exact):
    model, db = documents_only
    session = attmemo.InferenceSession(str(model), db=db)
    ids = _ids(tokenizer, TINY_CORPUS[0])
    cases = {
        "second segment": _feed(session, ids, token_type_ids=np.ones_like(ids)),
        "length never stored": _feed(session, _ids(tokenizer, "price")),
        "padded at the start": _feed(session, np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1),
                                     attention_mask=np.concatenate([np.zeros((1, 3), np.int64),
                                                                    np.ones_like(ids)], axis=1)),
    }
    for name, feed in cases.items():
        np.testing.assert_array_equal(session.run(None, feed)[0], exact.run(None, feed)[0], err_msg=name)
    assert session.memo_stats() == {}, "none of them was compared with a stored text"


def test_nearest_compares_only_texts_of_the_same_length_position_by_position():
    tokens = {4: np.array([[1, 2, 3, 0], [1, 2, 9, 9], [5, 6, 7, 8]], np.int32)}
    index = DocumentIndex(tokens, {4: np.array([3, 4, 4])})
    match = index.nearest(np.array([1, 2, 9, 4]))
    assert (match.bucket, match.row, match.similarity) == (4, 1, 0.75)
    assert index.nearest(np.array([2, 3, 1])).similarity == 0.0   # same length, shifted: nothing aligned
    assert index.nearest(np.array([1, 2])) is None


def test_a_closer_tier_adds_its_layers_only_to_closer_matches(documents_only, tokenizer, exact):
    """Layer 1 at 0.9, layer 0 too from 0.95: one changed token in 14 (0.93) reuses layer 1 alone."""
    model, db = documents_only
    serving.write(db, thresholds={}, measured={},
                  documents=serving.Documents(0.9, (1,), closer=serving.Documents(0.95, (0,))))
    session = attmemo.InferenceSession(str(model), db=db)
    assert "document key at 0.9 on layers 1; at 0.95 on layers 0 too" in session.memo_status
    stored = _ids(tokenizer, TINY_CORPUS[-1])
    np.testing.assert_allclose(session.run(None, _feed(session, stored))[0],
                               exact.run(None, _feed(session, stored))[0], atol=2e-4)
    assert _hits(session) == [1, 1], "a verbatim repeat reuses both layers"
    edited = stored.copy()
    edited[0, 3] = stored[0, 4]
    reused = session.run(None, _feed(session, edited))[0]
    assert _hits(session) == [1, 2], "a changed token reuses layer 1 only"
    assert [e["lookups"] for _, e in sorted(session.memo_stats().items())] == [2, 2]
    assert not np.allclose(reused, exact.run(None, _feed(session, edited))[0], atol=1e-6)


@pytest.mark.parametrize("documents", [{"threshold": 0.9}, {"threshold": 0.9, "layers": [7]},
                                       {"threshold": 1.5, "layers": [0]}, {"threshold": True, "layers": [0]},
                                       {"threshold": 0.9, "layers": []}, "all",
                                       {"threshold": 0.9, "layers": [0, 0]},
                                       {"threshold": 0.9, "layers": [0], "closer": {"threshold": 0.8, "layers": [1]}},
                                       {"threshold": 0.9, "layers": [0], "closer": {"threshold": 0.95, "layers": [0]}},
                                       {"threshold": 0.9, "layers": [0], "closer": "all"}])
def test_a_damaged_document_choice_is_refused_in_one_sentence(documents_only, documents):
    _, db = documents_only
    manifest = json.loads((db / "manifest.json").read_text())
    manifest["serving"]["documents"] = documents
    (db / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemoDatabaseError, match=r"manifest.json: .*documents") as error:
        MemoDatabase.open(db)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def float16_db(tiny_db, tmp_path_factory):
    """The tiny corpus stored as float16 (values.py): a document-key hit feeds the mapping in place."""
    from attmemo.builder.build import build_database
    from attmemo.builder.train import KeyTraining

    model, _, corpus = tiny_db
    db = tmp_path_factory.mktemp("float16") / "bert.memo"
    build_database(model, corpus, out=db, max_length=32, dtype="float16", training=KeyTraining(epochs=5))
    return model, db


def test_a_float16_database_serves_both_paths(float16_db, tokenizer, exact):
    model, db = float16_db
    assert MemoDatabase.open(db).manifest.dtype == "float16"
    feeds = [_feed(exact, _ids(tokenizer, text)) for text in TINY_CORPUS[:4]]
    documents = attmemo.InferenceSession(str(model), db=db)
    for feed in feeds:
        np.testing.assert_allclose(documents.run(None, feed)[0], exact.run(None, feed)[0], rtol=1e-3, atol=5e-4)
    assert _hits(documents) == [4, 4]
    # A plain onnxruntime session has no document key: the lookup op serves (converting to unorm16 per hit).
    plain = ort.InferenceSession(str(model), attmemo.session_options(db=db))
    before = _hits(documents)
    for feed in feeds:
        np.testing.assert_allclose(plain.run(None, feed)[0], exact.run(None, feed)[0], rtol=1e-3, atol=5e-4)
    assert [after - b for after, b in zip(_hits(documents), before)] == [4, 4]


def test_a_model_given_as_bytes_serves_the_document_key_too(documents_only, tokenizer, exact):
    model, db = documents_only
    session = attmemo.InferenceSession(model.read_bytes(), db=db)
    feed = _feed(session, _ids(tokenizer, TINY_CORPUS[2]))
    np.testing.assert_allclose(session.run(None, feed)[0], exact.run(None, feed)[0], atol=2e-4)
    assert _hits(session) == [1, 1]


def test_with_two_sessions_spinning_is_off_unless_the_caller_chose(documents_only):
    """Idle spinning threads of one session steal the cores of the other (docs: 2x slower)."""
    model, db = documents_only
    spinning = "session.intra_op.allow_spinning"
    mine = ort.SessionOptions()
    attmemo.InferenceSession(str(model), db=db, sess_options=mine)
    assert mine.get_session_config_entry(spinning) == "0"
    chosen = ort.SessionOptions()
    chosen.add_session_config_entry(spinning, "1")
    attmemo.InferenceSession(str(model), db=db, sess_options=chosen)
    assert chosen.get_session_config_entry(spinning) == "1"
