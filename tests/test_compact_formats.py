"""Log-coded stored attention (store/log_codes.py): codes on literal rows, the round trip, and serving.

The serving tests build the tiny bert's database in each log format and check that a
document-key hit of attmemo.InferenceSession (the fed model, decoding in the graph) and
of a plain onnxruntime session (the Python ops, decoding in numpy) both give what the
oracle model gives when fed the stored codes decoded by hand here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import attmemo
from attmemo.store import MemoDatabase, log_codes, values
from attmemo.transforms.names import probs_value
from attmemo.transforms.unfuse import oracle_model
from conftest import TINY_CORPUS

HEADS = 2


def test_log4_codes_literal_row():
    # step = ln(1e4)/15: levels 1, 0.5412, 0.2929, 0.1585, ...; 0.5 is nearer 0.5412 than 0.2929.
    codes = log_codes.encode(np.array([[1.0, 0.5, 0.25, 0.0]], np.float32), log_codes.LOG4)
    assert codes.tolist() == [[15 | 13 << 4, 14 | 0 << 4]]   # columns 0, 1 low nibbles; 2, 3 high
    decoded = np.empty((1, 4), np.float32)
    log_codes.decode(codes, decoded, log_codes.LOG4)
    np.testing.assert_allclose(decoded, [[0.545216, 0.295055, 0.159675, 0.0000545216]], rtol=1e-4)


def test_log4_is_relative_to_the_row_maximum_and_odd_rows_keep_n_columns():
    codes = log_codes.encode(np.array([[0.2, 0.5, 0.3]], np.float32), log_codes.LOG4)
    assert codes.tolist() == [[13 | 14 << 4, 15]]           # 0.5 is the row's 15; the last high nibble pads
    decoded = np.empty((1, 3), np.float32)
    log_codes.decode(codes, decoded, log_codes.LOG4)
    np.testing.assert_allclose(decoded.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(decoded, [[0.159675, 0.545216, 0.295055]], rtol=1e-4)   # 0.4, 1, 0.6 of the max


def test_log8_codes_literal_row():
    # step = ln(1e8)/255: 0.5 -> 255 - round(ln 2 / step) = 245; 0 -> 0, which decodes to 1e-8.
    codes = log_codes.encode(np.array([[0.5, 0.25, 0.125, 0.125, 0.0]], np.float32), log_codes.LOG8)
    assert codes.tolist() == [[245, 236, 226, 226, 0]]
    decoded = np.empty((1, 5), np.float32)
    log_codes.decode(codes, decoded, log_codes.LOG8)
    np.testing.assert_allclose(decoded, [[0.485595, 0.253467, 0.123082, 0.123082, 1e-8]], rtol=1e-4)


def _probs(n: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((HEADS, n, n)).astype(np.float32) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Relative error: log8 levels are 7.5 % apart, log4 levels 85 % (and rows renormalised).
@pytest.mark.parametrize("dtype, columns, rtol", [("log8", 8, 0.04), ("log4", 4, 0.5)])
def test_log_values_round_trip_through_a_fresh_mapping(tmp_path, dtype, columns, rtol):
    codec = values.codec(dtype)
    stored = {0: _probs(5, 0), 1: _probs(8, 1)}
    writer = values.ValueFile(tmp_path / "v", count=2, heads=HEADS, bucket=8, dtype=dtype, mode="w+")
    for row, p in stored.items():
        writer.write(row, p)
    writer.flush()
    expected = {row: writer.read(row, p.shape[-1]) for row, p in stored.items()}
    del writer
    assert (tmp_path / "v").stat().st_size == 2 * values.entry_bytes(HEADS, 8, dtype) == 2 * HEADS * 8 * columns
    reader = values.ValueFile(tmp_path / "v", count=2, heads=HEADS, bucket=8, dtype=dtype, mode="r")
    for row, p in stored.items():
        n = p.shape[-1]
        np.testing.assert_array_equal(reader.read(row, n), expected[row])
        np.testing.assert_array_equal(reader.stored(row, n), codec.encode(p))
        np.testing.assert_allclose(reader.read(row, n), p, rtol=rtol, atol=1e-3)   # coarse, but near
        # What the per-layer lookup op returns: rows of 65535.
        assert (reader.unorm16(row, n).sum(-1, dtype=np.int64) == values.UNORM_MAX).all()
        as_float = reader.as_float(row, n, np.empty((1, HEADS, n, n), np.float32))
        np.testing.assert_array_equal(as_float[0], expected[row])
    # The codes of a block filling its bucket go to the fed model in place; a shorter one is copied.
    full = reader.fed(1, 8, np.empty((1, HEADS, 8, columns), np.uint8))
    assert np.shares_memory(full, reader.rows) and full.shape == (1, HEADS, 8, columns)
    short = reader.fed(0, 5, np.empty((1, HEADS, 5, codec.columns(5)), np.uint8))
    np.testing.assert_array_equal(short[0], codec.encode(stored[0]))


def _by_hand(stored_Hnc: np.ndarray, dtype: str, n: int) -> np.ndarray:
    """float32[H, n, n]: the stored codes decoded from the module docstring's formulas, not log_codes.decode."""
    if dtype == "log8":
        return np.exp(np.float32(np.log(1e8) / 255) * (stored_Hnc.astype(np.float32) - 255))
    codes = np.concatenate([stored_Hnc % 16, stored_Hnc // 16], axis=-1)[..., :n]
    levels = np.exp(np.float32(np.log(1e4) / 15) * (codes.astype(np.float32) - 15))
    return levels / levels.sum(-1, keepdims=True)


@pytest.fixture(scope="module", params=["log8", "log4"])
def log_db(request, tiny_db, tmp_path_factory):
    """The tiny corpus stored in a log format, built as a user would: ``attmemo build-db --dtype``."""
    from attmemo.cli import main

    model, _, corpus = tiny_db
    db = tmp_path_factory.mktemp(request.param) / "bert.memo"
    assert main(["build-db", str(model), "--corpus", str(corpus), "--out", str(db), "--max-length", "32",
                 "--dtype", request.param]) == 0
    return model, db, request.param


def test_a_log_coded_database_serves_the_decoded_attention_on_both_paths(log_db, tokenizer, exact):
    model, db, dtype = log_db
    database = MemoDatabase.open(db)
    assert database.manifest.dtype == dtype
    oracle_ir = ir.load(model)
    oracle_model(oracle_ir)
    oracle = ort.InferenceSession(ir.serde.serialize_model(oracle_ir).SerializeToString())
    documents = attmemo.InferenceSession(str(model), db=db)
    plain = ort.InferenceSession(str(model), attmemo.session_options(db=db))
    texts = [np.asarray(tokenizer(text)["input_ids"], np.int64)[None] for text in TINY_CORPUS]
    odd = next(ids for ids in texts if ids.shape[1] % 2)     # log4 then stores one padding nibble a row
    even = next(ids for ids in texts if ids.shape[1] % 2 == 0)
    for ids in (odd, even, texts[-1]):
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feed = {i.name: feed[i.name] for i in documents.get_inputs()}
        n = ids.shape[1]
        match = database.documents.nearest(ids[0])
        assert database.document_serving.served(match.similarity) == (0, 1)
        fed = {probs_value(layer): _by_hand(np.asarray(database._layers[layer].buckets[match.bucket].values.stored(
            match.row, n)), dtype, n)[None] for layer in (0, 1)}
        expected = oracle.run(None, {**feed, **fed})[0]
        before = _hits(documents)
        np.testing.assert_allclose(documents.run(None, feed)[0], expected, atol=2e-5)
        assert [after - b for after, b in zip(_hits(documents), before)] == [1, 1]   # the fed model served
        # The exact path differs from the decoded codes by far more than 2e-5: the Python ops served.
        assert np.abs(exact.run(None, feed)[0] - expected).max() > 1e-3
        np.testing.assert_allclose(plain.run(None, feed)[0], expected, atol=2e-5)


def _hits(session) -> list[int]:
    return [entry["hits"] for _, entry in sorted(session.memo_stats().items())]


def test_a_padded_batch_over_a_log_coded_database_serves_what_each_sequence_gets_alone(log_db, tokenizer):
    """A batch goes through MemoGate / MemoFetch (numpy decode into its place in the batch);
    one sequence alone through the fed model (graph decode): both must give the same."""
    model, db, _ = log_db
    session = attmemo.InferenceSession(str(model), db=db)
    names = {i.name for i in session.get_inputs()}
    texts = [np.asarray(tokenizer(text)["input_ids"], np.int64) for text in (TINY_CORPUS[0], TINY_CORPUS[-1])]
    size = max(len(ids) for ids in texts)
    ids_BS, mask_BS = np.zeros((2, size), np.int64), np.zeros((2, size), np.int64)
    for b, ids in enumerate(texts):
        ids_BS[b, :len(ids)], mask_BS[b, :len(ids)] = ids, 1
    batch = {"input_ids": ids_BS, "attention_mask": mask_BS, "token_type_ids": np.zeros_like(ids_BS)}
    before = _hits(session)
    out = session.run(None, {k: v for k, v in batch.items() if k in names})[0]
    assert [after - b for after, b in zip(_hits(session), before)] == [2, 2]
    for b, ids in enumerate(texts):
        alone = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64),
                 "token_type_ids": np.zeros((1, len(ids)), np.int64)}
        expected = session.run(None, {k: v for k, v in alone.items() if k in names})[0][0]
        np.testing.assert_allclose(out[b, :len(ids)], expected, atol=2e-5)


def test_an_edit_that_shifts_positions_reuses_log_codes_through_the_alignment(log_db, tokenizer, tmp_path):
    """The aligned fed model (store/shift_index.py found the text) decodes the codes as the plain fed model does."""
    import shutil

    from attmemo.store import serving
    from attmemo.store.align import align
    from attmemo.transforms.aligned_feed import remapped_probs

    model, built, dtype = log_db
    db = shutil.copytree(built, tmp_path / "db")
    serving.write(db, thresholds={}, documents=serving.Documents(0.8, (0, 1)), measured={})
    session = attmemo.InferenceSession(str(model), db=db)
    stored_text = TINY_CORPUS[12]
    stored = np.asarray(tokenizer(stored_text)["input_ids"], np.int64)
    query = np.asarray(tokenizer("news " + stored_text)["input_ids"], np.int64)   # every position shifts
    feed = {"input_ids": query[None], "attention_mask": np.ones((1, len(query)), np.int64),
            "token_type_ids": np.zeros((1, len(query)), np.int64)}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    got = session.run(None, feed)[0]
    assert _hits(session) == [1, 1]
    database = MemoDatabase.open(db)
    found = database.documents.best(query, min_share=0.8)
    assert found.alignment is not None and found.stored_length == len(stored)
    oracle_ir = ir.load(model)
    oracle_model(oracle_ir)
    oracle = ort.InferenceSession(ir.serde.serialize_model(oracle_ir).SerializeToString())
    explicit = {}
    for layer in (0, 1):
        codes = np.asarray(database._layers[layer].buckets[found.bucket].values.stored(found.row, len(stored)))
        explicit[probs_value(layer)] = remapped_probs(_by_hand(codes, dtype, len(stored)), align(query, stored))[None]
    np.testing.assert_allclose(got, oracle.run(None, {**feed, **explicit})[0], atol=2e-5)


def test_admitting_into_a_log_coded_database_is_refused_in_one_sentence(log_db, tmp_path):
    import shutil

    model, built, dtype = log_db
    db = shutil.copytree(built, tmp_path / "db")
    with pytest.raises(ValueError, match=f"stores {dtype} attention, which admission cannot write yet; admit into "
                                         "a database built with --dtype float32, float16 or unorm16"):
        attmemo.InferenceSession(str(model), db=db, admit=True, max_db_bytes=10**9)
