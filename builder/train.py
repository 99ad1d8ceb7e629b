"""Per layer: pair targets, key-embedding training (torch, in attmemo.models) and Annoy indexes.

Training texts: at most ``max_train_texts`` of the corpus (seeded choice),
paired within groups (pairs.py), plus each augmented text paired with its
edited copy (augment.py). Held out: every pair of one tenth of the groups.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from attmemo.store import index, keys, pairs as pair_targets, values
from attmemo.store.layout import index_file, layer_dir, values_file


@dataclasses.dataclass(frozen=True)
class KeyTraining:
    group: int = 8               # texts per pair group (minibatch)
    target_rows: int = 64        # rows sampled for far-pair TV targets
    epochs: int = 40
    max_train_texts: int = 20_000
    # every k-th training text also gets an edited copy (0: none). 1 doubles the model runs of a
    # build but, on 200 BBC documents at 256 tokens, raised held-out Spearman from 0.46-0.80 to
    # 0.76-0.90 and the hit rate of 1 %-edited members from 5-20 % to 60-80 % (cosine 0.999).
    augment_every: int = 1
    index_trees: int = 10
    seed: int = 0


@dataclasses.dataclass
class Corpus:
    """What the build knows about each text (arrays indexed by text number)."""
    lengths: np.ndarray     # int32 true token counts
    bucket_of: np.ndarray   # int32 bucket length
    row_of: np.ndarray      # int64 row in its bucket's files
    counts: dict[int, int]  # bucket -> rows


class TrainingPlan:
    """Which texts train, which are augmented, the pairs and the held-out split (all seeded)."""

    def __init__(self, texts: int, settings: KeyTraining):
        rng = np.random.default_rng(settings.seed)
        self.train_texts = np.sort(rng.permutation(texts)[:settings.max_train_texts])
        self.pairs = pair_targets.group_pairs(len(self.train_texts), group=settings.group, seed=settings.seed)
        every = settings.augment_every
        self.augmented = self.train_texts[::every] if every else np.zeros(0, np.int64)   # text numbers
        groups = int(self.pairs.group.max()) + 1 if len(self.pairs.group) else 0
        self.held_groups = rng.permutation(groups)[:max(1, groups // 10)] if groups > 1 else np.zeros(0, np.int64)

    def group_of_position(self, position: np.ndarray) -> np.ndarray:
        return self.pairs.group_of[position]


def train_and_index(layer: int, heads: int, *, db: Path, features_path: Path, aug_features_path: Path,
                    aug_targets: np.ndarray, corpus: Corpus, plan: TrainingPlan, dtype: str,
                    key_spec: keys.KeySpec, feature_size: int, settings: KeyTraining):
    """Train layer ``layer``'s key embedding, save it and index every stored row; return the TrainReport."""
    from attmemo.models.key_embedding import train_key_embedding

    folder = db / layer_dir(layer)
    stores = {b: values.ValueFile(db / values_file(layer, b), count=c, heads=heads, bucket=b, dtype=dtype, mode="r")
              for b, c in corpus.counts.items()}
    features = np.memmap(features_path, dtype=np.float32, mode="r", shape=(len(corpus.lengths), feature_size))
    train_x = np.asarray(features[plan.train_texts])
    left, right, groups, targets = _far_pairs(plan, corpus, stores, heads, dtype, settings.target_rows)
    if len(plan.augmented):
        aug_x = np.fromfile(aug_features_path, dtype=np.float32).reshape(len(plan.augmented), feature_size)
        position = np.searchsorted(plan.train_texts, plan.augmented)
        left = np.concatenate([left, position])
        right = np.concatenate([right, len(train_x) + np.arange(len(plan.augmented))])
        groups = np.concatenate([groups, plan.group_of_position(position)])
        targets = np.concatenate([targets, aug_targets[:, layer]])
        train_x = np.concatenate([train_x, aug_x])
    weights, report = train_key_embedding(train_x, left, right, targets, np.isin(groups, plan.held_groups),
                                          hidden=key_spec.width, dim=key_spec.dim, epochs=settings.epochs,
                                          seed=settings.seed)
    key = keys.KeyEmbedding(**weights)
    key.save(folder)
    for b in corpus.counts:
        members = np.flatnonzero(corpus.bucket_of == b)   # in row order
        embedded = np.concatenate([key.embed(np.asarray(features[chunk]))
                                   for chunk in np.array_split(members, max(1, len(members) // 4096))])
        index.build(embedded, corpus.lengths[members], db / index_file(layer, b), trees=settings.index_trees,
                    seed=settings.seed)
    return report


def _far_pairs(plan: TrainingPlan, corpus: Corpus, stores: dict, heads: int, dtype: str, rows: int):
    def read_rows(position: int, r: np.ndarray) -> np.ndarray:
        text = plan.train_texts[position]
        return stores[int(corpus.bucket_of[text])].read_rows(corpus.row_of[text], int(corpus.lengths[text]), r)

    targets = pair_targets.tv_targets(plan.pairs, lengths=corpus.lengths[plan.train_texts], read_rows=read_rows,
                                      rows=rows)
    return plan.pairs.left, plan.pairs.right, plan.pairs.group, targets
