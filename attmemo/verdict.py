"""The plain-words verdict that ends every report (``attmemo demo``, ``eval``, ``calibrate``).

One or two sentences: what was faster by how much, at what fidelity (the sentence
embedding's cosine to the exact model's), and, where memoization is off, why. The
numbers come from the caller; this module only words them, so all three reports say
the same thing the same way.

Definitions used in the wording (stated once here, and in each report's table header):
- latency ratio: total time with memoization / total time of the exact model on the same
  texts, interleaved; 0.77 means "23 % faster";
- memo rate: the share of (text, layer) attention computations that reused a stored matrix;
- cosine to exact: of the sentence embedding (mean-pooled last hidden state), 1.0 = identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# Latency ratios closer to 1 than this are within the timing noise of the 2-core machine.
NOISE = 0.02


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A serving choice calibration timed: its description, latency ratio and memo rate."""
    describe: str
    latency_ratio: float | None
    memo_rate: float


def verdict(*, subject: str, serving: bool, latency_ratio: float | None, memo_rate: float,
            cosine_mean: float | None, cosine_p1: float | None, off_reason: str | None = None,
            against: str = "the unmodified model") -> str:
    """The verdict sentence(s) for one workload or corpus (``subject``, e.g. "edited documents").

    serving: whether memoization serves anything; latency_ratio: memoized / exact total time
    (None if not timed); cosine_*: of the memoized embeddings to exact (None if not measured);
    off_reason: why nothing serves (a clause), used only when ``serving`` is False;
    against: what the latency ratio compares with.
    """
    if not serving:
        reason = f" because {off_reason}" if off_reason else ""
        cost = "" if latency_ratio is None else f"; it runs the exact model, {_same_cost(latency_ratio, against)}"
        return f"On {subject}, memoization switched itself off{reason}{cost}."
    speed = "untimed" if latency_ratio is None else _speed(latency_ratio, against=against)
    fidelity = ("" if cosine_mean is None else
                f" at cosine {cosine_mean:.3f} to exact (1st percentile {cosine_p1:.3f})")
    return (f"On {subject}, the memoized model reused {memo_rate:.0%} of attention computations and ran "
            f"{speed}{fidelity}.")


def _same_cost(ratio: float, against: str) -> str:
    """The exact model is the same computation as the unmodified one: any gap is timing noise."""
    if abs(1 - ratio) < NOISE:
        return f"which costs what {against} costs (measured time ratio {ratio:.2f})"
    return (f"the same computation as {against} (measured time ratio {ratio:.2f}: "
            "the gap is timing noise on few queries)")


def _speed(ratio: float, *, against: str) -> str:
    if abs(1 - ratio) < NOISE:
        return f"as fast as {against} (time ratio {ratio:.2f}, within noise)"
    if ratio < 1:
        return f"{1 - ratio:.0%} faster than {against} (time ratio {ratio:.2f})"
    return f"{ratio - 1:.0%} slower than {against} (time ratio {ratio:.2f})"


def off_reason(candidates: Sequence[Candidate], *, min_gain: float, budget_text: str) -> str:
    """Why calibration switched memoization off, as a clause for ``verdict``.

    candidates: every choice calibration measured; those it timed (latency_ratio set) were
    within budget on both halves of its texts. None timed: nothing reused attention within
    the budget, or nothing reused any at all.
    """
    timed = [c for c in candidates if c.latency_ratio is not None]
    if not any(c.memo_rate > 0 for c in candidates):
        return "no held-out text was close enough to a stored one to reuse any attention"
    if not timed:
        return f"no choice reused any attention within the quality budget ({budget_text})"
    best = min(timed, key=lambda c: c.latency_ratio)
    return (f"the fastest choice within the quality budget ({best.describe}, reusing {best.memo_rate:.0%}) took "
            f"{best.latency_ratio:.2f} of the exact time, not the {min_gain:.0%} saving it must show")


def beats_exact_note(metric: str, memo: float, exact: float, samples: int) -> str | None:
    """A note where the memoized model scores above the exact one on ``metric``: noise, not a gain."""
    if memo <= exact:
        return None
    return (f"note: memoized {metric} {memo:.3f} is above exact {exact:.3f}: on {samples} samples that is "
            "noise (a few texts landing on the other side), not a gain from reuse")


def budget_text(budget, *, labels: bool) -> str:
    """E.g. "cosine mean >= 0.99, 1st percentile >= 0.97, accuracy loss <= 0.5 pt" (an attmemo.calibrate.Budget)."""
    text = f"cosine mean >= {budget.cosine_mean:g}, 1st percentile >= {budget.cosine_p1:g}"
    return text + (f", accuracy loss <= {100 * budget.accuracy_loss:g} pt" if labels else "")
