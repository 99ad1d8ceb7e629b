"""attmemo.verdict: the words every report ends with (issue 14)."""

from __future__ import annotations

from attmemo.calibrate import Budget
from attmemo.verdict import Candidate, beats_exact_note, budget_text, off_reason, verdict


def test_a_serving_verdict_says_how_much_faster_and_at_what_cosine():
    text = verdict(subject="the edited queries", serving=True, latency_ratio=0.77, memo_rate=0.98,
                   cosine_mean=0.9964, cosine_p1=0.982)
    assert text == ("On the edited queries, the memoized model reused 98% of attention computations and ran 23% "
                    "faster than the unmodified model (time ratio 0.77) at cosine 0.996 to exact "
                    "(1st percentile 0.982).")


def test_a_ratio_near_one_is_called_noise():
    text = verdict(subject="x", serving=True, latency_ratio=0.99, memo_rate=0.1, cosine_mean=1.0, cosine_p1=1.0)
    assert "as fast as the unmodified model (time ratio 0.99, within noise)" in text


def test_switched_off_says_why_and_that_the_exact_model_costs_the_same():
    nothing = off_reason([Candidate("tau 0.9 on layers 0", None, 0.0)], min_gain=0.01,
                         budget_text=budget_text(Budget(), labels=False))
    assert nothing == "no held-out text was close enough to a stored one to reuse any attention"
    over = off_reason([Candidate("tau 0.5 on layers 0", None, 0.4)], min_gain=0.01,
                      budget_text=budget_text(Budget(), labels=True))
    assert over == ("no choice reused any attention within the quality budget (cosine mean >= 0.99, "
                    "1st percentile >= 0.97, accuracy loss <= 0.5 pt)")
    slow = off_reason([Candidate("document key 0.9 on layers 0,1", 0.995, 0.3)], min_gain=0.01, budget_text="")
    assert "took 0.99 of the exact time, not the 1% saving it must show" in slow
    text = verdict(subject="the diverse queries", serving=False, latency_ratio=0.93, memo_rate=0.0,
                   cosine_mean=1.0, cosine_p1=1.0, off_reason=nothing)
    assert text.startswith("On the diverse queries, memoization switched itself off because no held-out text")
    assert "the gap is timing noise" in text and "faster" not in text


def test_memoized_above_exact_gets_a_note_and_below_does_not():
    assert "noise" in beats_exact_note("accuracy", 1.0, 0.958, 24)
    assert beats_exact_note("accuracy", 0.95, 0.958, 24) is None
