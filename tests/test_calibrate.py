"""Selective memoization: calibration writes where reuse pays into the manifest, and sessions obey it.

On the tiny bert a lookup costs more than the attention it saves, so an honest
calibration must switch memoization off; a hand-written choice must be obeyed
layer by layer; a damaged choice is refused like any other manifest damage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attmemo
from attmemo.calibrate import Budget, calibrate
from attmemo.custom_ops import registry
from attmemo.store import MemoDatabase, MemoDatabaseError, serving
from conftest import TINY_CORPUS

BIN = Path(sys.executable).parent


@pytest.fixture
def db_copy(tiny_db, tmp_path):
    model, db, corpus = tiny_db
    copy = tmp_path / "bert.memo"
    shutil.copytree(db, copy)
    return model, copy


def _run_members(model, db) -> dict[int, dict]:
    from transformers import AutoTokenizer

    from attmemo.export.hf_export import tokenizer_dir_for
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))
    session = attmemo.InferenceSession(str(model), db=db)
    names = {i.name for i in session.get_inputs()}
    for text in TINY_CORPUS[:6]:
        feed = {k: v.astype(np.int64) for k, v in tokenizer(text, return_tensors="np").items() if k in names}
        session.run(None, feed)
    return session.memo_stats()


def test_without_a_choice_every_layer_serves_at_the_build_threshold(db_copy):
    model, db = db_copy
    stats = _run_members(model, db)
    assert [stats[layer]["hits"] for layer in (0, 1)] == [6, 6]


def test_a_written_choice_is_obeyed_layer_by_layer(db_copy):
    model, db = db_copy
    serving.write(db, thresholds={1: 0.9}, measured={})
    assert MemoDatabase.open(db).thresholds == {1: 0.9}
    stats = _run_members(model, db)
    assert stats.get(0, {}).get("lookups", 0) == 0      # layer 0 switched off: no lookup at all
    assert stats[1]["hits"] == 6                          # layer 1 still reuses


def test_an_empty_choice_switches_memoization_off(db_copy):
    model, db = db_copy
    serving.write(db, thresholds={}, measured={})
    assert all(s["lookups"] == 0 for s in _run_members(model, db).values())


@pytest.mark.parametrize("bad", [{"thresholds": {"7": 0.9}}, {"thresholds": {"0": 1.5}}, {"thresholds": [0.9]}])
def test_a_damaged_choice_is_refused_naming_the_manifest(db_copy, bad):
    _, db = db_copy
    manifest = json.loads((db / "manifest.json").read_text())
    manifest["serving"] = bad
    (db / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemoDatabaseError, match="manifest.json"):
        MemoDatabase.open(db)


def test_calibration_switches_off_where_lookups_cost_more_than_they_save(db_copy):
    """The tiny model runs in well under a millisecond: no per-layer lookup can pay for itself.

    (The document key is left out: its one ~20 us lookup before a smaller fed model can pay even
    here, and whether it does on this machine under load is timing noise, not this test's subject.)
    """
    model, db = db_copy
    result = calibrate(model, TINY_CORPUS, db=db, max_length=32, rounds=3, document_thresholds=())
    assert result.trials, "every threshold is measured"
    assert any(t.memo_rate > 0 for t in result.trials), "members do hit"
    assert result.chosen.thresholds == {}
    assert MemoDatabase.open(db).thresholds == {}
    assert all(s["lookups"] == 0 for s in _run_members(model, db).values())


def test_calibration_keeps_only_choices_within_the_quality_budget(db_copy):
    """Reversed corpus texts (same lengths, other attention) reuse wrong matrices at a loose threshold."""
    model, db = db_copy
    reversed_texts = [" ".join(reversed(t.split())) for t in TINY_CORPUS]
    result = calibrate(model, reversed_texts, db=db, max_length=32, rounds=1, min_gain=-10.0,
                       thresholds=(0.01,), budget=Budget(cosine_mean=0.9999, cosine_p1=0.9999))
    loose = result.trials[0]
    assert loose.memo_rate > 0 and loose.cosine["mean"] < 0.9999, "the loose threshold does reuse, and it shows"
    assert result.chosen.thresholds == {}, "so even a free choice outside the budget is not taken"


def test_calibrate_cli_prints_the_choice_and_writes_it(db_copy, tmp_path):
    """Reversed corpus texts: no stored text is position-aligned with them (the document key misses), and
    per-layer lookups cost the tiny model more than they save, so the choice is off on any machine.
    (The stored texts themselves would let the document key run a smaller fed model, which on the tiny
    model is faster or not by timing noise.)"""
    model, db = db_copy
    corpus = tmp_path / "heldout.jsonl"
    reversed_texts = [" ".join(reversed(t.split())) for t in TINY_CORPUS]
    corpus.write_text("".join(json.dumps({"text": t, "label": str(i % 2)}) + "\n" for i, t in enumerate(reversed_texts)))
    result = subprocess.run([str(BIN / "attmemo"), "calibrate", str(model), "--corpus", str(corpus), "--db", str(db),
                             "--max-length", "32", "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "with labels" in result.stdout and "accuracy loss" in result.stdout
    assert "memoization is switched off" in result.stdout
    assert json.loads((db / "manifest.json").read_text())["serving"]["thresholds"] == {}


def test_a_database_switched_off_runs_the_exact_model(db_copy):
    """No Python op, no If: the session runs what the unmodified export runs, bit for bit."""
    import onnx_ir as ir
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from attmemo.export.hf_export import tokenizer_dir_for
    from attmemo.transforms.unfuse import exact_model

    model, db = db_copy
    serving.write(db, thresholds={}, measured={})
    session = attmemo.InferenceSession(str(model), db=db)
    assert session.memo_status.startswith("off:") and "exact model" in session.memo_status
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.astype(np.int64) for k, v in tokenizer(TINY_CORPUS[:3], padding=True, return_tensors="np").items()
            if k in names}
    registry.detach(MemoDatabase.open(db).model_id)   # earlier sessions of this model attached their databases
    with_ifs = ort.InferenceSession(str(model), attmemo.session_options()).run(None, feed)[0]
    assert np.array_equal(session.run(None, feed)[0], with_ifs)

    plain = ir.load(model)
    assert exact_model(plain) == 2
    assert not any(n.domain.startswith("attmemo") or n.op_type == "If" for n in plain.graph)


def _edited(text: str) -> str:
    """``text`` with its second word replaced in place by another single-token word."""
    words = text.split()
    words[1] = "news" if words[1] != "news" else "market"
    return " ".join(words)


def test_the_document_key_on_some_layers_is_measured_as_a_session_serves_it(db_copy):
    """Reused attention changes the input of every later layer, so a layer set's quality must
    come from its own fed model: calibration's cosine is what a session serving the choice gives."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from attmemo.ceiling import cosine_stats
    from attmemo.embedding import sentence_embedding
    from attmemo.export.hf_export import tokenizer_dir_for
    from attmemo.session import exact_model, rewritten_model_bytes

    model, db = db_copy
    edited = [_edited(t) for t in TINY_CORPUS if len(t.split()) == 12]   # 13 of 14 positions kept
    result = calibrate(model, edited, db=db, max_length=32, rounds=1, thresholds=(), document_thresholds=(0.9,),
                       budget=Budget(cosine_mean=1.0, cosine_p1=1.0), write=False)
    measured = {t.documents.layers: t for t in result.trials}
    assert set(measured) == {(0, 1), (0,), (1,)}, "every layer breaks a budget of 1.0, so each layer is tried alone"
    last = measured[(1,)]
    assert last.hit_rate[0] == 0 and last.hit_rate[1] > 0, "edited texts hit, on layer 1 only"

    serving.write(db, thresholds={}, documents=last.documents, measured={})
    session = attmemo.InferenceSession(str(model), db=db)
    exact = ort.InferenceSession(rewritten_model_bytes(model, exact_model))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))
    served, plain = [], []
    for text in edited:
        feed = {k: v.astype(np.int64) for k, v in tokenizer(text, return_tensors="np").items()}
        served.append(sentence_embedding(session.run(None, feed)[0], feed["attention_mask"])[0])
        plain.append(sentence_embedding(exact.run(None, feed)[0], feed["attention_mask"])[0])
    assert session.memo_stats()[1]["hits"] == last.hit_rate[1] * len(edited) and session.memo_stats().get(0, {}).get("hits", 0) == 0
    served_cosine = cosine_stats(np.stack(served), np.stack(plain))
    assert served_cosine.mean < 1 - 1e-6, "the reuse does change the output"
    assert served_cosine.mean == pytest.approx(last.cosine["mean"], abs=1e-6)
    assert served_cosine.min == pytest.approx(last.cosine["min"], abs=1e-6)


def test_the_layer_search_grows_the_set_while_the_budget_holds():
    """Layers join one at a time, the one keeping quality best first, until none can join."""
    from attmemo.calibrate import Trial, _document_trials
    from attmemo.store.serving import Documents

    harm = {0: 0.002, 1: 0.001, 2: 0.004, 3: 0.05}   # cosine lost per layer reusing, made additive here

    def measure(layers):
        cosine = 1 - sum(harm[layer] for layer in layers)
        return [Trial({}, {layer: 0.5 if layer in layers else 0.0 for layer in harm},
                      {"mean": cosine, "p1": cosine, "min": cosine}, None, documents=Documents(0.8, layers))]

    budget = Budget(cosine_mean=0.99, cosine_p1=0.99)
    trials = _document_trials(measure, (0, 1, 2, 3), budget, lambda t: t, lambda base, wider: base)
    tried = [t.documents.layers for t in trials]
    assert tried[0] == (0, 1, 2, 3), "every layer first"
    assert (0, 1, 2) in tried and (0, 1, 2, 3) not in tried[1:], "then 1, then 0, then 2; never 3"
    best = max((t for t in trials if budget.holds(t)), key=lambda t: t.memo_rate)
    assert best.documents.layers == (0, 1, 2)


def test_a_choice_must_also_hold_on_the_texts_it_was_not_chosen_on(db_copy):
    """Choices are made on alternate texts and confirmed on the others: here the texts chosen on
    are stored members (reuse is exact) and the others reversed texts (reuse is wrong)."""
    model, db = db_copy
    members = TINY_CORPUS[-6:]
    texts = [t for member in members for t in (member, " ".join(reversed(member.split())))]
    result = calibrate(model, texts, db=db, max_length=32, rounds=1, min_gain=-10.0, thresholds=(0.01,),
                       document_thresholds=(), budget=Budget(cosine_mean=0.9999, cosine_p1=0.9999))
    loose = result.trials[0]
    assert Budget(cosine_mean=0.9999, cosine_p1=0.9999).holds(loose.on(np.arange(0, 12, 2))), "members: exact"
    assert loose.on(np.arange(1, 12, 2)).cosine["mean"] < 0.9999, "reversed texts: wrong attention"
    assert result.chosen.thresholds == {}, "so it is not taken, even for free"


def test_a_closer_tier_is_measured_as_a_session_serves_it(db_copy):
    """Layers that break the budget on every match may still reuse on verbatim repeats: the
    search assembles that closer tier from two fed models' runs, and a session serving it
    gives the same quality."""
    model, db = db_copy
    texts = [x for t in TINY_CORPUS if len(t.split()) == 12 for x in (_edited(t), t)]   # share 13/14, then 1
    probe = calibrate(model, texts, db=db, max_length=32, rounds=1, thresholds=(), document_thresholds=(0.95, 0.9),
                      budget=Budget(cosine_mean=1.0, cosine_p1=1.0), write=False)
    at = {(t.documents.layers, t.documents.threshold): t.on(np.arange(0, len(texts), 2)) for t in probe.trials}
    both, alone = at[((0, 1), 0.9)].cosine["p1"], max(at[((0,), 0.9)].cosine["p1"], at[((1,), 0.9)].cosine["p1"])
    assert both < alone, "reusing both layers costs more than one"
    # One layer at 0.9 holds, both do not; no margin on all the texts: the two are closer than 0.002 here.
    budget = Budget(cosine_mean=0.0, cosine_p1=(both + alone) / 2, p1_margin=0.0)

    result = calibrate(model, texts, db=db, max_length=32, rounds=1, thresholds=(), min_gain=-10.0,
                       document_thresholds=(0.95, 0.9), budget=budget)
    chosen = result.chosen.documents
    assert chosen.threshold == 0.9 and len(chosen.layers) == 1
    assert chosen.closer == serving.Documents(0.95, tuple({0, 1} - set(chosen.layers))), \
        "the other layer reuses on verbatim repeats"
    assert result.chosen.hit_rate[chosen.closer.layers[0]] == 0.5, "verbatim repeats are half the texts"

    import onnxruntime as ort

    from attmemo.ceiling import cosine_stats
    from attmemo.session import exact_model, rewritten_model_bytes
    served = _embeddings(model, attmemo.InferenceSession(str(model), db=db), texts)
    exact = _embeddings(model, ort.InferenceSession(rewritten_model_bytes(model, exact_model)), texts)
    assert cosine_stats(served, exact).min == pytest.approx(result.chosen.cosine["min"], abs=1e-6)
    assert cosine_stats(served, exact).mean == pytest.approx(result.chosen.cosine["mean"], abs=1e-7)


def _embeddings(model, session, texts) -> np.ndarray:
    from transformers import AutoTokenizer

    from attmemo.embedding import sentence_embedding
    from attmemo.export.hf_export import tokenizer_dir_for
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))
    feeds = [{k: v.astype(np.int64) for k, v in tokenizer(t, return_tensors="np").items()} for t in texts]
    return np.stack([sentence_embedding(session.run(None, f)[0], f["attention_mask"])[0] for f in feeds])


def test_a_choice_within_budget_on_each_half_but_not_on_all_texts_is_refused():
    from attmemo.calibrate import PerText, Trial, _halves

    cosine = np.ones(100)
    cosine[[0, 1]] = 0.96                          # one weak text in each half (the halves alternate)
    trial = Trial({}, {}, {}, None, per_text=PerText(cosine))
    choose_on, confirm_on = _halves(100)
    budget = Budget(cosine_mean=0.99, cosine_p1=0.97)
    assert budget.holds(trial.on(choose_on)) and budget.holds(trial.on(confirm_on))   # each half: p1 0.98
    assert "not on all 100 texts" in budget.keeps(trial, confirm_on)                  # all: p1 0.96
    cosine[[0, 1]] = 0.985
    assert budget.keeps(trial, confirm_on) is None


def test_a_choice_failing_the_other_half_is_refused_with_its_numbers():
    from attmemo.calibrate import PerText, Trial, _halves

    cosine = np.ones(10)
    cosine[1] = 0.9                                # the half it was not chosen on
    trial = Trial({}, {}, {}, None, per_text=PerText(cosine))
    _, confirm_on = _halves(10)
    refusal = Budget().keeps(trial, confirm_on)
    assert refusal.startswith("not on the other half (") and "0.9" in refusal


def test_the_fastest_choice_pays_only_beyond_its_timing_spread_and_ties_go_to_more_reuse():
    from attmemo.calibrate import Trial, _fastest

    def timed(ratio, spread, memo_rate):
        return Trial({}, {0: memo_rate}, {}, None, latency_ratio=ratio, latency_spread=spread)

    looser, stricter = timed(0.721, 0.17, 1.0), timed(0.708, 0.17, 0.71)
    assert _fastest([looser, stricter], min_gain=0.01) is looser        # 0.013 apart, within the spread: a tie
    looser, stricter = timed(0.721, 0.001, 1.0), timed(0.708, 0.001, 0.71)
    assert _fastest([looser, stricter], min_gain=0.01) is stricter      # beyond both the spread and min_gain
    assert _fastest([timed(0.95, 0.05, 1.0)], min_gain=0.01) is None   # its slow end is off's time
