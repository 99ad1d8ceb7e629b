"""Sentence embeddings as sentence-transformers models such as all-MiniLM-L6-v2 define them."""

from __future__ import annotations

import numpy as np


def sentence_embedding(tokens_BSD: np.ndarray, mask_BS: np.ndarray) -> np.ndarray:
    """float32[B, D]: the mean of each sequence's real-token vectors, L2-normalised."""
    mask = mask_BS[..., None].astype(np.float32)
    pooled = (tokens_BSD * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def embed(session, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """float32[N, D]: the sentence embeddings of every sequence of ``feeds`` run through ``session``, in order."""
    return np.concatenate([sentence_embedding(session.run(None, f)[0], f["attention_mask"]) for f in feeds])
