"""Interleaved A/B latency measurement of ONNX models in one process.

The machine is noisy, so we never compare absolute times across runs: each
round runs every model once on the same input (order rotated), and we report
per-round ratios against the baseline, summarised by their median.
Thread spinning is off in every session: an idle session's spinning threads
otherwise steal a core from the one being timed (runtime-facts.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
import onnxruntime as ort

from .session import session_options

log = logging.getLogger(__name__)


def quiet_session_options(threads: int = 0) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so


def open_sessions(models: Mapping[str, str], threads: int = 0) -> dict[str, ort.InferenceSession]:
    """One session per model, all with the same options (attmemo ops registered in each)."""
    return {name: ort.InferenceSession(path, session_options(sess_options=quiet_session_options(threads)))
            for name, path in models.items()}


def encoder_feed(session: ort.InferenceSession, *, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids (no padding) for whatever of input_ids / attention_mask / token_type_ids the model takes."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 5000, size=(batch, seq_len), dtype=np.int64)
    known = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: known[i.name] for i in session.get_inputs()}


@dataclasses.dataclass
class Timing:
    median_ms: dict[str, float]
    ratio: dict[str, float]        # median over rounds of (model time / baseline time)
    rounds: int


def interleaved(sessions: Mapping[str, ort.InferenceSession], feed: dict[str, np.ndarray], *,
                baseline: str, rounds: int, warmup: int = 3,
                progress: Callable[[int], None] | None = None,
                extra_feeds: Mapping[str, dict[str, np.ndarray]] | None = None) -> Timing:
    """extra_feeds: per model, inputs added to ``feed`` (e.g. the oracle's attention probabilities)."""
    names = list(sessions)
    feeds = {name: {**feed, **(extra_feeds or {}).get(name, {})} for name in names}
    for _ in range(warmup):
        for name in names:
            sessions[name].run(None, feeds[name])
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
        if progress:
            progress(r + 1)
    base = np.array(times[baseline])
    return Timing(
        median_ms={n: float(np.median(t)) * 1e3 for n, t in times.items()},
        ratio={n: float(np.median(np.array(t) / base)) for n, t in times.items()},
        rounds=rounds,
    )
