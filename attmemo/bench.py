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
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from .session import session_options
from .builder.recorder import unpadded_inputs

log = logging.getLogger(__name__)

# What onnxruntime raises for a model it cannot load or run (none of them derives from RuntimeError).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in vars(_ort_state).values() if isinstance(c, type) and issubclass(c, Exception)
    and c.__module__ == _ort_state.__name__)
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def quiet_session_options(threads: int = 0) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so


def open_sessions(models: Mapping[str, str], threads: int = 0) -> dict[str, ort.InferenceSession]:
    """One session per model, all with the same options (attmemo ops registered in each).

    Raises ValueError naming the file when onnxruntime cannot load a model.
    """
    sessions = {}
    for name, path in models.items():
        try:
            sessions[name] = ort.InferenceSession(path, session_options(sess_options=quiet_session_options(threads)))
        except ORT_ERRORS as error:
            raise ValueError(f"{path}: onnxruntime cannot load this model ({ort_reason(error)}).") from error
    return sessions


def ort_reason(error: Exception) -> str:
    """The gist of an onnxruntime error: its first line, without the ``[ONNXRuntimeError] : 2 : CODE :`` prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.rsplit(" : ", 1)[-1].strip().rstrip(".")


def check_encoder(path, model, *, memo: bool) -> None:
    """Raise ValueError (one sentence) unless ``model`` (an onnx.ModelProto) is an encoder bench can feed,
    and, with ``memo``, one rewritten by attmemo."""
    from attmemo.custom_ops.registry import MODEL_ID_KEY

    if memo and not any(p.key == MODEL_ID_KEY for p in model.metadata_props):
        raise ValueError(f"{path}: has no {MODEL_ID_KEY} metadata, so it is not a MemoAttention model; "
                         "rewrite it with attmemo transform and pass the result as --memo.")
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if "input_ids" not in inputs or not set(inputs) <= set(ENCODER_INPUTS):
        raise ValueError(f"{path}: takes inputs {', '.join(inputs) or '(none)'}, but bench feeds only "
                         f"{', '.join(ENCODER_INPUTS)}; give a Transformer encoder export.")


def _embedding_tables(model) -> list[tuple[str, str, int]]:
    """(table name, indices name, rows) of every Gather from a 2-D initializer (embedding lookups)."""
    rows = {i.name: i.dims[0] for i in model.graph.initializer if len(i.dims) == 2}
    return [(n.input[0], n.input[1], int(rows[n.input[0]])) for n in model.graph.node
            if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in rows]


def vocab_size(model) -> int | None:
    """Rows of the token embedding table (the one gathered by ``input_ids``), or None if not found."""
    return min((rows for _, indices, rows in _embedding_tables(model) if indices == "input_ids"), default=None)


def position_table_size(model) -> int | None:
    """Rows of the absolute position embedding table (an initializer named like ``position_embeddings``),
    or None if the model has none that is recognisable."""
    return min((rows for table, indices, rows in _embedding_tables(model)
                if "position_embeddings" in table and "rel" not in table and indices not in ENCODER_INPUTS),
               default=None)


def encoder_feed(session: ort.InferenceSession, *, batch: int, seq_len: int, seed: int = 0,
                 vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """Random token ids (no padding) for whatever of input_ids / attention_mask / token_type_ids the model takes.

    Ids are drawn from [1000, 5000), or from the upper half of a smaller ``vocab_size``.
    """
    rng = np.random.default_rng(seed)
    high = 5000 if vocab_size is None else min(5000, vocab_size)
    ids = rng.integers(min(1000, high // 2), high, size=(batch, seq_len), dtype=np.int64)
    known = unpadded_inputs(ids)
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


def total_seconds(sessions: Mapping[str, ort.InferenceSession], feeds: list[dict[str, np.ndarray]], *,
                  rounds: int) -> dict[str, float]:
    """Per session, the total over ``feeds`` of each feed's median seconds over ``rounds`` interleaved rounds.

    Totals, not a median feed: where some feeds hit and others miss, the median says nothing of
    the time a stream saves.
    """
    first = next(iter(sessions))
    totals = dict.fromkeys(sessions, 0.0)
    for feed in feeds:
        timing = interleaved(sessions, feed, baseline=first, rounds=rounds, warmup=1)
        for name in sessions:
            totals[name] += timing.median_ms[name] / 1e3
    return totals
