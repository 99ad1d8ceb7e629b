"""transforms/aligned_feed.py: an edited query reuses a stored text's attention through the alignment.

The definition (remapped_probs) is checked on literal 1-head examples; the graph
is checked end to end in onnxruntime on the tiny bert (4 heads, 2 layers): the
aligned fed model, fed a stored P_s of another length and the alignment, must
give the output the oracle model gives when fed the explicit remapped matrices.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from attmemo.store.align import align
from attmemo.document_tier import alignment_feeds
from attmemo.transforms.aligned_feed import aligned_fed_model, remapped_probs
from attmemo.transforms.names import ALIGNED_COLUMNS as COLUMNS, ALIGNED_ROWS as ROWS
from attmemo.transforms.unfuse import oracle_model

P_S = np.array([[[.5, .3, .2],
                 [.1, .6, .3],
                 [.2, .2, .6]]], np.float32)   # 1 head, stored tokens 10 11 12


def test_an_insertion_at_the_start_gives_a_zero_column_and_borrows_the_neighbours_row():
    probs = remapped_probs(P_S, align([99, 10, 11, 12], [10, 11, 12]))
    np.testing.assert_allclose(probs[0], [[0, .5, .3, .2],
                                          [0, .5, .3, .2],
                                          [0, .1, .6, .3],
                                          [0, .2, .2, .6]], atol=1e-7)


def test_a_deletion_drops_the_lost_column_and_renormalises():
    probs = remapped_probs(P_S, align([10, 12], [10, 11, 12]))
    np.testing.assert_allclose(probs[0], [[.5 / .7, .2 / .7],
                                          [.2 / .8, .6 / .8]], atol=1e-7)


def test_alignment_feeds_point_lost_stored_tokens_at_the_zero_row():
    feeds = alignment_feeds(align([10, 12, 13, 99], [10, 11, 12, 13]))     # 11 lost, 99 inserted
    assert feeds[ROWS].tolist() == [0, 2, 3, 3] and feeds[COLUMNS].tolist() == [0, 4, 1, 2]


HEADS, STORED = 4, 40
STORED_IDS = np.random.default_rng(0).integers(5, 150, STORED)
EDITS = {
    "insertion at the start": np.concatenate([[7, 8, 9], STORED_IDS]),
    "deletion": np.concatenate([STORED_IDS[:15], STORED_IDS[19:]]),
    "phrase replaced by a longer one": np.concatenate([STORED_IDS[:20], [60, 61, 62, 63, 64], STORED_IDS[22:]]),
}


@pytest.fixture(scope="module")
def sessions(tiny_model, tmp_path_factory):
    """(aligned fed model of both layers, oracle model fed every layer's P), as onnxruntime sessions."""
    from attmemo.export.memo_export import export_memo_model

    folder, _ = tiny_model("bert")
    path = tmp_path_factory.mktemp("aligned") / "bert.memo.onnx"
    export_memo_model(folder, path)
    aligned, oracle = ir.load(path), ir.load(path)
    assert aligned_fed_model(aligned, [0, 1]) == ["attmemo.stored_probs.0", "attmemo.stored_probs.1"]
    assert oracle_model(oracle) == ["attmemo.probs.0", "attmemo.probs.1"]
    return tuple(ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString()) for m in (aligned, oracle))


def _stored_probs(seed: int) -> np.ndarray:
    """float32[H, m, m] softmax rows of random scores: a stand-in for a stored text's attention."""
    scores = np.random.default_rng(seed).normal(0, 2, (HEADS, STORED, STORED))
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _text_feeds(ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = ids.astype(np.int64)[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("edit", list(EDITS))
def test_the_graph_equals_the_explicit_remapped_attention_times_v(sessions, edit):
    aligned, oracle = sessions
    query = EDITS[edit]
    alignment = align(query, STORED_IDS)
    stored = {layer: _stored_probs(layer) for layer in (0, 1)}
    got = aligned.run(None, {**_text_feeds(query), **alignment_feeds(alignment),
                             **{f"attmemo.stored_probs.{k}": p[None] for k, p in stored.items()}})[0]
    remapped = {f"attmemo.probs.{k}": remapped_probs(p, alignment)[None] for k, p in stored.items()}
    want = oracle.run(None, {**_text_feeds(query), **remapped})[0]
    assert got.shape == (1, len(query), 64)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_constant_scale_on_the_stored_attention_cancels(sessions):
    """A unorm16 store feeds round(P * 65535) widened: the renormalisation needs no 1/65535."""
    aligned, _ = sessions
    query = EDITS["deletion"]
    feeds = {**_text_feeds(query), **alignment_feeds(align(query, STORED_IDS))}
    plain = {f"attmemo.stored_probs.{k}": _stored_probs(k)[None] for k in (0, 1)}
    scaled = {name: p * np.float32(65535) for name, p in plain.items()}
    np.testing.assert_allclose(aligned.run(None, {**feeds, **scaled})[0], aligned.run(None, {**feeds, **plain})[0],
                               rtol=1e-5, atol=1e-5)


def test_a_float16_store_is_cast_natively_and_gives_what_its_values_in_float32_give(sessions, tiny_model,
                                                                                    tmp_path):
    from attmemo.export.memo_export import export_memo_model

    aligned, _ = sessions
    export_memo_model(tiny_model("bert")[0], tmp_path / "bert.memo.onnx")
    model = ir.load(tmp_path / "bert.memo.onnx")
    aligned_fed_model(model, [0, 1], fed_dtype=np.float16)
    half = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    query = EDITS["phrase replaced by a longer one"]
    feeds = {**_text_feeds(query), **alignment_feeds(align(query, STORED_IDS))}
    stored = {f"attmemo.stored_probs.{k}": _stored_probs(k)[None].astype(np.float16) for k in (0, 1)}
    widened = {name: p.astype(np.float32) for name, p in stored.items()}
    np.testing.assert_allclose(half.run(None, {**feeds, **stored})[0], aligned.run(None, {**feeds, **widened})[0],
                               atol=1e-5)


def test_a_log4_store_is_decoded_natively_and_gives_what_its_decoded_values_give(sessions, tiny_model, tmp_path):
    """fed_model hands aligned_feed the decoded dense P; the division by Z renormalises log4's rows."""
    from attmemo.export.memo_export import export_memo_model
    from attmemo.store import values

    aligned, _ = sessions
    export_memo_model(tiny_model("bert")[0], tmp_path / "bert.memo.onnx")
    model = ir.load(tmp_path / "bert.memo.onnx")
    codec = values.codec("log4")
    aligned_fed_model(model, [0, 1], codec=codec)
    coded = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
    query = EDITS["phrase replaced by a longer one"]
    feeds = {**_text_feeds(query), **alignment_feeds(align(query, STORED_IDS))}
    stored = {f"attmemo.stored_probs.{k}": codec.encode(_stored_probs(k))[None] for k in (0, 1)}
    decoded = {}
    for name, codes in stored.items():
        m = codes.shape[2]
        decoded[name] = np.empty((1, codes.shape[1], m, m), np.float32)
        codec.decode(codes[0], decoded[name][0])
    np.testing.assert_allclose(coded.run(None, {**feeds, **stored})[0], aligned.run(None, {**feeds, **decoded})[0],
                               atol=1e-5)
