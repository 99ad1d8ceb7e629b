"""What recording a corpus yields, one text at a time, wherever it runs.

A recording is a callable ``(model_path, scratch, texts, settings) -> Iterator[TextRecord]``
that runs the recording model over ``texts`` (TextToRecord, in corpus order) and yields
one TextRecord per text, in the same order. build.py writes what any recording yields:
``record_locally`` runs one onnxruntime session in this process (the default);
ray_build.py runs one per Ray worker. Both call ``record_text``, so a text's record
does not depend on where it was made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from attmemo.store import augment, values

from .recorder import Recorder


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    dtype: str                   # stored probability format (values.codec)
    seed: int                    # edits of augmented copies: rng([seed, text number])
    special_ids: frozenset[int]  # tokens an edit never touches


@dataclasses.dataclass(frozen=True)
class TextToRecord:
    index: int                   # text number in the corpus
    ids: np.ndarray              # int64[n] token ids, unpadded
    augmented: bool              # also record an edited copy (training pairs, augment.py)


@dataclasses.dataclass
class TextRecord:
    index: int
    ids: np.ndarray                            # int64[n], as given
    probs: dict[int, np.ndarray]               # layer -> codec storage dtype [H, n, n], encoded
    hidden: dict[int, np.ndarray]              # layer -> float32[n, D] the layer's input hidden states
    edited_hidden: dict[int, np.ndarray] | None     # the same of the edited copy, if augmented
    edit_distances: np.ndarray | None          # float32[layers] TV distance to the edited copy, layers sorted


# (model_path, scratch folder, texts in corpus order, settings) -> their records in the same order
Recording = Callable[[Path, Path, Iterable[TextToRecord], RecordSettings], Iterator[TextRecord]]


def record_text(recorder: Recorder, text: TextToRecord, settings: RecordSettings) -> TextRecord:
    """Run ``text`` (and its edited copy if augmented) through ``recorder``; encode its probabilities.

    The hidden states stay as they are: the writer pools them into key features (keys.pool is a
    BLAS matrix product, whose rounding depends on the thread count, which differs on Ray workers).
    """
    codec = values.codec(settings.dtype)
    records = recorder.run(text.ids)
    probs = {layer: codec.encode(probs_Hnn) for layer, (_, probs_Hnn) in records.items()}
    hidden = {layer: hidden_nD for layer, (hidden_nD, _) in records.items()}
    edited_hidden = distances = None
    if text.augmented:
        edited = augment.edit_tokens(text.ids, special_ids=set(settings.special_ids),
                                     rng=np.random.default_rng([settings.seed, text.index]))
        edited_records = recorder.run(edited)
        distances = np.array([augment.tv_distance(records[layer][1], edited_records[layer][1])
                              for layer in sorted(edited_records)], np.float32)
        edited_hidden = {layer: hidden_nD for layer, (hidden_nD, _) in edited_records.items()}
    return TextRecord(text.index, text.ids, probs, hidden, edited_hidden, distances)


def record_locally(model_path: Path, scratch: Path, texts: Iterable[TextToRecord],
                   settings: RecordSettings) -> Iterator[TextRecord]:
    """The default recording: one onnxruntime session in this process, released when the texts run out."""
    recorder = Recorder(model_path, scratch)
    for text in texts:
        yield record_text(recorder, text, settings)
