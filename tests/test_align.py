"""store/align.py: which stored position each query token reuses, under insertions and deletions."""

from __future__ import annotations

import numpy as np
import pytest

from attmemo.store.align import align

STORED = [10, 11, 12, 13, 14, 15]


def test_an_identical_text_maps_every_token_onto_itself():
    a = align(STORED, STORED)
    assert a.stored_of_query.tolist() == a.rows.tolist() == a.query_of_stored.tolist() == [0, 1, 2, 3, 4, 5]
    assert a.share == 1.0


def test_an_insertion_at_the_start_shifts_everything_after_it():
    a = align([99, 98, *STORED], STORED)
    assert a.stored_of_query.tolist() == [-1, -1, 0, 1, 2, 3, 4, 5]
    assert a.rows.tolist() == [0, 0, 0, 1, 2, 3, 4, 5]          # inserted tokens borrow their neighbour's row
    assert a.query_of_stored.tolist() == [2, 3, 4, 5, 6, 7]
    assert a.share == 6 / 8


def test_a_deletion_loses_stored_tokens_and_pulls_the_rest_back():
    a = align([10, 11, 14, 15], STORED)
    assert a.stored_of_query.tolist() == [0, 1, 4, 5]
    assert a.query_of_stored.tolist() == [0, 1, -1, -1, 2, 3]
    assert a.share == 1.0


def test_a_phrase_replaced_by_a_longer_one_maps_one_for_one_then_inserts():
    # stored 12 13 -> query 77 78 79: one insertion and two substitutions (rapidfuzz inserts first)
    a = align([10, 11, 77, 78, 79, 14, 15], STORED)
    assert a.stored_of_query.tolist() == [0, 1, -1, 2, 3, 4, 5]
    assert a.rows.tolist() == [0, 1, 1, 2, 3, 4, 5]             # equally near both neighbours: the left one
    assert a.share == 4 / 7 and a.mapped_share == 6 / 7


def test_an_inserted_token_takes_its_nearest_mapped_neighbours_row():
    a = align([10, 11, 12, 90, 91, 92, 93, 94, 13, 14, 15], STORED)
    assert a.stored_of_query.tolist() == [0, 1, 2, -1, -1, -1, -1, -1, 3, 4, 5]
    assert a.rows.tolist() == [0, 1, 2, 2, 2, 2, 3, 3, 3, 4, 5]  # middle one ties: left


def test_an_unrelated_text_has_no_identical_counterparts():
    a = align([20, 21, 22, 23, 24, 25], STORED)
    assert a.share == 0.0
    assert a.stored_of_query.tolist() == [0, 1, 2, 3, 4, 5]     # all substitutions: mapped, never identical


def test_numpy_arrays_give_the_same_answer_as_lists():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 30000, 300)
    query = np.concatenate([[1, 2], stored[:100], stored[110:250], [3, 4, 5, 6], stored[250:]])
    a, b = align(query, stored), align(query.tolist(), stored.tolist())
    assert np.array_equal(a.stored_of_query, b.stored_of_query) and a.share == b.share
    assert a.share == (len(query) - 6) / len(query)
    mapped = a.stored_of_query >= 0
    assert np.array_equal(query[mapped], stored[a.stored_of_query[mapped]])


@pytest.mark.parametrize("bad", [[], [[1, 2]], [0.5, 1.5]])
def test_ids_that_are_not_a_flat_integer_sequence_are_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match="non-empty 1-d list or array of integers"):
        align(bad, STORED)
