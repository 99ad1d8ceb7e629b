"""store/shift_index.py: find the stored text a query was edited from, wherever the edits shifted it.

Real Annoy indexes on disk under tmp_path. Stored texts: eight seeded random id
sequences of 24 to 80 tokens; queries are edited copies of text 5 (48 tokens).
"""

from __future__ import annotations

import numpy as np
import pytest

from attmemo.store.manifest import MemoDatabaseError
from attmemo.store.shift_index import KEY_DIM, KEY_TOKENS, ShiftIndex, build, shift_key

LENGTHS = [24, 80, 40, 64, 32, 48, 56, 72]
TEXTS = [np.random.default_rng(row).integers(1000, 30000, n) for row, n in enumerate(LENGTHS)]
TEXT = TEXTS[5]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> ShiftIndex:
    folder = tmp_path_factory.mktemp("shift")
    assert build((t for t in TEXTS), folder, trees=4, seed=0) == 8   # a generator: the build streams
    return ShiftIndex(folder)


def test_every_stored_text_finds_itself_with_share_1(index):
    for row, text in enumerate(TEXTS):
        match = index.nearest(text)
        assert (match.row, match.share) == (row, 1.0)
        assert np.array_equal(index.tokens(row), text)


def test_an_insertion_at_the_start_shifts_every_position_and_still_finds_the_text(index):
    query = np.concatenate([[7, 8, 9], TEXT])
    match = index.nearest(query)
    assert (match.row, match.share) == (5, 48 / 51)
    assert match.alignment.stored_of_query.tolist() == [-1, -1, -1, *range(48)]


def test_a_deletion_finds_the_text_with_every_remaining_token_aligned(index):
    query = np.concatenate([TEXT[:10], TEXT[14:]])
    match = index.nearest(query)
    assert (match.row, match.share) == (5, 1.0)
    assert match.alignment.query_of_stored[10:14].tolist() == [-1, -1, -1, -1]


def test_a_phrase_replaced_by_one_of_another_length_finds_the_text(index):
    query = np.concatenate([TEXT[:20], [5, 6, 7, 8, 9], TEXT[22:]])   # 2 tokens -> 5
    match = index.nearest(query)
    assert (match.row, match.share) == (5, 46 / 51)


def test_an_unrelated_text_of_the_same_length_misses(index):
    unrelated = np.random.default_rng(99).integers(1000, 30000, 48)
    assert index.nearest(unrelated, min_share=0.5) is None
    assert index.nearest(unrelated).share < 0.1


def test_a_reloaded_index_gives_the_same_answers_and_the_same_seed_the_same_files(index, tmp_path):
    build(TEXTS, tmp_path / "again", trees=4, seed=0)
    again = ShiftIndex(tmp_path / "again")
    for query in (np.concatenate([[7, 8, 9], TEXT]), TEXTS[2][5:]):
        first, second = index.nearest(query), again.nearest(query)
        assert (first.row, first.share, first.distance) == (second.row, second.share, second.distance)
    for name in ("shift.ann", "tokens.i32", "offsets.npy", "shift.json"):
        assert (tmp_path / "again" / name).read_bytes() == (index.folder / name).read_bytes(), name


def test_the_key_of_a_near_duplicate_is_closer_than_an_unrelated_ones():
    query = np.concatenate([[7, 8, 9], TEXT[:30], TEXT[33:]])
    cosine = lambda a, b: float(shift_key(a) @ shift_key(b))  # noqa: E731
    assert cosine(query, TEXT) > 0.7 > 0.4 > cosine(query, TEXTS[3])   # ~39 of 46 3-grams shared
    assert shift_key([5]).shape == (KEY_DIM,) and np.isclose(np.linalg.norm(shift_key([5, 6])), 1.0)


def test_damaged_or_mismatched_files_are_refused_in_one_sentence(tmp_path):
    build(TEXTS, tmp_path, trees=2, seed=0)
    with open(tmp_path / "tokens.i32", "ab") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(MemoDatabaseError, match="disagree") as error:
        ShiftIndex(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "shift.json").unlink()
    with pytest.raises(MemoDatabaseError, match="unreadable shift index"):
        ShiftIndex(tmp_path)
    with pytest.raises(ValueError, match="at least one stored text"):
        build([], tmp_path / "empty")


def test_only_the_first_key_tokens_are_keyed_so_a_longer_stored_text_keys_like_its_window():
    long = np.random.default_rng(7).integers(1000, 30000, 300)
    assert np.array_equal(shift_key(long), shift_key(long[:KEY_TOKENS]))
    assert not np.array_equal(shift_key(long), shift_key(long[:KEY_TOKENS - 1]))
