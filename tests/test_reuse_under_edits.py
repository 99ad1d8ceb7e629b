"""Reuse that survives edits: a stored text found after insertions and deletions, its attention carried through the alignment.

On the tiny bert's real database (built by build-db, which writes the shift index): a
query that is a stored text with a word inserted at the start (every position shifts), a
word deleted, or a word replaced by two, runs the aligned fed model; its output equals the
model fed, per served layer, the explicitly remapped stored attention
(aligned_feed.remapped_probs, the definition). A text sharing no stored text's tokens misses
and computes exactly. The delivery itself on a small example: tests/test_aligned_feed.py.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import attmemo
from attmemo.store import MemoDatabase, serving
from attmemo.store.align import align
from attmemo.store.layout import tokens_file
from attmemo.transforms.aligned_feed import remapped_probs
from attmemo.transforms.names import probs_value
from attmemo.transforms.unfuse import oracle_model
from conftest import TINY_CORPUS

STORED = TINY_CORPUS[12]   # 12 words, stored: "the model has a cache of attention scores for each layer and"


@pytest.fixture
def aligned_db(documents_only):
    model, db = documents_only
    serving.write(db, thresholds={}, documents=serving.Documents(0.8, (0, 1)), measured={})
    return model, db


@pytest.fixture(scope="module")
def oracle(tiny_db):
    """The model reading every layer's attention from an input: what reuse through an alignment must equal."""
    model = ir.load(tiny_db[0])
    oracle_model(model)
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text)["input_ids"], np.int64)


def _feed(ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = ids[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _hits(session) -> list[int]:
    return [entry["hits"] for _, entry in sorted(session.memo_stats().items())]


@pytest.mark.parametrize("edit", [
    lambda words: ["news", *words],                      # an insertion at the start: every position shifts
    lambda words: words[:4] + words[5:],                 # a deletion
    lambda words: words[:6] + ["market", "price"] + words[7:],   # a word replaced by two
], ids=["insert-at-start", "delete", "replace-longer"])
def test_an_edited_stored_text_reuses_its_attention_through_the_alignment(aligned_db, tokenizer, oracle, exact,
                                                                          edit):
    model, db = aligned_db
    session = attmemo.InferenceSession(str(model), db=db)
    stored = _ids(tokenizer, STORED)
    query = _ids(tokenizer, " ".join(edit(STORED.split())))
    assert len(query) != len(stored)                     # the position key cannot serve it
    got = session.run(None, _feed(query))[0]
    assert _hits(session) == [1, 1]

    database = MemoDatabase.open(db)
    found = database.documents.best(query, min_share=0.8)
    assert found.alignment is not None
    tokens = np.load(db / tokens_file(found.bucket))[found.row, :found.stored_length]
    np.testing.assert_array_equal(tokens, stored)        # found the text it was edited from
    alignment = align(query, stored)
    explicit = {}
    for layer in (0, 1):
        heads = database.heads(layer)
        stored_P = database.probs_float(layer, found.bucket, found.row, len(stored),
                                        np.empty((1, heads, len(stored), len(stored)), np.float32))[0]
        explicit[probs_value(layer)] = remapped_probs(stored_P, alignment)[None]
    np.testing.assert_allclose(got, oracle.run(None, {**_feed(query), **explicit})[0], atol=2e-5)
    assert not np.allclose(got, exact.run(None, _feed(query))[0], atol=1e-5), "the stored attention was reused"


def test_an_unrelated_text_of_a_stored_length_misses_and_computes_exactly(aligned_db, tokenizer, exact):
    model, db = aligned_db
    session = attmemo.InferenceSession(str(model), db=db)
    stored = _ids(tokenizer, STORED)
    price = _ids(tokenizer, "price")[1]
    query = np.array([stored[0], *[price] * (len(stored) - 2), stored[-1]])   # same length, only [CLS], [SEP] shared
    np.testing.assert_array_equal(session.run(None, _feed(query))[0], exact.run(None, _feed(query))[0])
    assert _hits(session) == [0, 0]


def test_a_database_without_a_shift_index_serves_position_for_position_only(aligned_db, tokenizer, exact):
    """An older database (no shift/ files listed): an edit that shifts positions is a miss, not an error."""
    import json
    import shutil

    from attmemo.store.manifest import FILENAME

    model, db = aligned_db
    manifest = json.loads((db / FILENAME).read_text())
    manifest["files"] = {name: entry for name, entry in manifest["files"].items() if not name.startswith("shift/")}
    (db / FILENAME).write_text(json.dumps(manifest))
    shutil.rmtree(db / "shift")
    session = attmemo.InferenceSession(str(model), db=db)
    query = _ids(tokenizer, "news " + STORED)
    np.testing.assert_array_equal(session.run(None, _feed(query))[0], exact.run(None, _feed(query))[0])
    assert sum(_hits(session)) == 0
    feed = _feed(_ids(tokenizer, STORED))
    np.testing.assert_allclose(session.run(None, feed)[0], exact.run(None, feed)[0], atol=2e-4)
    assert _hits(session) == [1, 1]
