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

from attmemo.store import augment, keys, values
from attmemo.store.manifest import KeySpec

from .recorder import Recorder


@dataclasses.dataclass(frozen=True)
class RecordSettings:
    dtype: str                   # stored probability format (values.codec)
    key_spec: KeySpec            # how hidden states are pooled into key features
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
    features: dict[int, np.ndarray]            # layer -> float32[F] pooled key features
    edited_features: dict[int, np.ndarray] | None   # the same of the edited copy, if augmented
    edit_distances: np.ndarray | None          # float32[layers] TV distance to the edited copy, layers sorted
    hidden_size: int                           # D


# (model_path, scratch folder, texts in corpus order, settings) -> their records in the same order
Recording = Callable[[Path, Path, Iterable[TextToRecord], RecordSettings], Iterator[TextRecord]]


def record_text(recorder: Recorder, text: TextToRecord, settings: RecordSettings) -> TextRecord:
    """Run ``text`` (and its edited copy if augmented) through ``recorder``; encode and pool its outputs."""
    codec = values.codec(settings.dtype)
    records = recorder.run(text.ids)
    hidden_size = next(iter(records.values()))[0].shape[1]
    probs = {layer: codec.encode(probs_Hnn) for layer, (_, probs_Hnn) in records.items()}
    features = {layer: keys.pool(hidden_nD, settings.key_spec) for layer, (hidden_nD, _) in records.items()}
    edited_features = distances = None
    if text.augmented:
        edited = augment.edit_tokens(text.ids, special_ids=set(settings.special_ids),
                                     rng=np.random.default_rng([settings.seed, text.index]))
        edited_records = recorder.run(edited)
        distances = np.array([augment.tv_distance(records[layer][1], edited_records[layer][1])
                              for layer in sorted(edited_records)], np.float32)
        edited_features = {layer: keys.pool(hidden_nD, settings.key_spec)
                           for layer, (hidden_nD, _) in edited_records.items()}
    return TextRecord(text.index, text.ids, probs, features, edited_features, distances, hidden_size)


def record_locally(model_path: Path, scratch: Path, texts: Iterable[TextToRecord],
                   settings: RecordSettings) -> Iterator[TextRecord]:
    """The default recording: one onnxruntime session in this process, released when the texts run out."""
    recorder = Recorder(model_path, scratch)
    for text in texts:
        yield record_text(recorder, text, settings)
