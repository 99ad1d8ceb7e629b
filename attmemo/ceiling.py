"""What any attention memoization could reach on a workload, and two simpler alternatives.

The ceiling is a perfect retriever: for each query and layer, exhaustive search over the
stored texts of the same true length for the attention matrix nearest to the query's own,
by mean total-variation distance (``store.augment.tv_distance``, the distance the key
network learns). Its similarity, 1 - that distance, is what a hit policy thresholds; the
share of (query, layer) pairs at or above a threshold bounds the memo rate any key and
index can achieve at that threshold. Texts are compared unpadded (padding fakes
similarity, ../shared/notes/attmemo.md), so only texts of equal length compete.

The alternatives answer a query without attention reuse, from sentence embeddings the
caller computed with the exact model (float32 [N, D], any pooling):
- ``exact_input_cache``: a query whose token ids are verbatim a stored text's gets that
  text's embedding; any other query runs the model (exact);
- ``nearest_output``: every query gets the embedding of the nearest stored text by a
  key computed from token ids alone (TF-IDF over token ids, cosine), never running the model.

Letters in names: Q queries, S stored texts, L layers, H heads, n tokens, D embedding width.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from attmemo.store.augment import tv_distance

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30   # query attention held in memory at once by record_best_match


@dataclasses.dataclass
class BestMatch:
    similarity: np.ndarray   # float32 [Q, L]: 1 - min mean TV distance; NaN where no stored text has the length
    nearest: np.ndarray      # int64 [Q, L]: index of that stored text, -1 where none


@dataclasses.dataclass
class MemoRate:
    per_layer: list[float]   # share of queries at or above the threshold, per layer
    overall: float           # share of all (query, layer) pairs


@dataclasses.dataclass
class CosineStats:
    mean: float
    p1: float                # 1st percentile
    min: float


@dataclasses.dataclass
class Alternative:
    hit_rate: float          # share of queries answered from the store, without running the model
    cosine: CosineStats      # of each query's answer to its exact embedding
    source: np.ndarray       # int64 [Q]: stored text whose embedding was returned, -1 where the model ran


def best_match(stored: Iterable[Sequence[np.ndarray]], queries: Sequence[Sequence[np.ndarray]]) -> BestMatch:
    """Exhaustive nearest stored attention per query and layer.

    stored: per stored text, its L matrices float32 [H, n, n] (layer order); consumed once, so
        it may be a generator; its position is the index reported in ``nearest``.
    queries: per query, the same. Texts of different lengths are never compared.
    """
    layers = len(queries[0]) if queries else 0
    distance = np.full((len(queries), layers), np.inf, np.float32)
    nearest = np.full((len(queries), layers), -1, np.int64)
    by_length = _group_by_length([probs[0].shape[-1] for probs in queries])
    for s, probs in enumerate(stored):
        for q in by_length.get(probs[0].shape[-1], []):
            for layer in range(layers):
                d = tv_distance(queries[q][layer], probs[layer])
                if d < distance[q, layer]:
                    distance[q, layer], nearest[q, layer] = d, s
    similarity = np.where(nearest >= 0, 1.0 - distance, np.nan).astype(np.float32)
    return BestMatch(similarity, nearest)


def record_best_match(model_path: str | Path, stored_ids: Sequence[np.ndarray], query_ids: Sequence[np.ndarray], *,
                      sample: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                      scratch: str | Path | None = None, bars=None) -> BestMatch:
    """``best_match`` on the true attention of a MemoAttention model, recorded unpadded at batch 1.

    stored_ids, query_ids: int64 [n] token ids per text (already truncated to the length to test).
    sample: use only the first ``sample`` stored texts and the first ``sample`` queries
        (the workloads order texts labels in turn, so a prefix stays balanced).
    max_bytes: query attention held at once. Queries are taken one length at a time, in
        chunks of about this size; each chunk is compared with every stored text of its
        length, recorded again per chunk and dropped after use; other lengths are never run.
    scratch: folder for the temporary recording model (default: the system's temp folder).
    bars: progress bars (attmemo.progress), one step per stored text compared; None: none.
    Returns similarity float32 [Q, L] and nearest int64 [Q, L] for the sampled queries.

    Cost: one TV distance per (query, stored text of its length, layer), about 1 ms each for
    12 heads at 256 tokens on the 2-core development machine, plus one model run per query
    and per stored text per chunk.
    """
    from attmemo.builder.recorder import Recorder
    from attmemo.progress import no_bars

    stored_ids, query_ids = list(stored_ids)[:sample], list(query_ids)[:sample]
    groups = sorted(_group_by_length([len(ids) for ids in query_ids]).items())
    stored_lengths = [len(ids) for ids in stored_ids]
    # One step per stored text of a query's length (more if the queries take several chunks).
    bar = (bars or no_bars)(desc="perfect-retriever search", total=sum(map(stored_lengths.count, dict(groups))),
                            unit="stored text")
    with tempfile.TemporaryDirectory(prefix="attmemo-ceiling-", dir=scratch) as tmp:
        recorder = Recorder(Path(model_path), Path(tmp))
        layers = len(recorder.layers)
        result = BestMatch(np.full((len(query_ids), layers), np.nan, np.float32),
                           np.full((len(query_ids), layers), -1, np.int64))
        for length, members in groups:
            matching = [s for s, ids in enumerate(stored_ids) if len(ids) == length]
            if not matching:
                continue
            for chunk, queries in _recorded_chunks(recorder, query_ids, members, max_bytes=max_bytes):
                found = best_match((_counted(bar, _record(recorder, stored_ids[s])) for s in matching), queries)
                result.similarity[chunk] = found.similarity
                result.nearest[chunk] = np.where(found.nearest >= 0, np.asarray(matching)[found.nearest], -1)
                log.info("ceiling: %d queries of length %d against %d stored texts", len(chunk), length, len(matching))
                queries.clear()   # free this chunk before the next one is recorded
    bar.close()
    return result


def _counted(bar, item):
    bar.update(1)
    return item


def _group_by_length(lengths: Sequence[int]) -> dict[int, list[int]]:
    """{length: indices of the texts of that length}."""
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    return groups


def _recorded_chunks(recorder, query_ids: Sequence[np.ndarray], members: list[int], *,
                     max_bytes: int) -> Iterator[tuple[list[int], list[list[np.ndarray]]]]:
    """(query indices, their recorded attention) for consecutive ``members``, about ``max_bytes`` at a time."""
    chunk, queries, held = [], [], 0
    for q in members:
        chunk.append(q)
        queries.append(_record(recorder, query_ids[q]))
        held += sum(p.nbytes for p in queries[-1])
        if held >= max_bytes:
            yield chunk, queries
            chunk, queries, held = [], [], 0
    if chunk:
        yield chunk, queries


def _record(recorder, ids: np.ndarray) -> list[np.ndarray]:
    """The L attention matrices float32 [H, n, n] of one unpadded text, in layer order."""
    recorded = recorder.run(np.asarray(ids))
    return [recorded[layer][1] for layer in sorted(recorded)]


def ceiling_memo_rate(similarity_QL: np.ndarray, threshold: float | Mapping[int, float], *,
                      chained: bool = False) -> MemoRate:
    """Share of (query, layer) pairs whose best similarity is >= the threshold, per layer and overall.

    threshold: one for every layer, or {layer: threshold} (a layer left out is not memoized).
    NaN (no stored text of the query's length) counts as a miss. chained: a layer counts only
    if every earlier layer of the query also hit, as in attmemo's lookups, which stop at the
    first layer where nothing hit.
    """
    layers = similarity_QL.shape[1]
    if isinstance(threshold, Mapping):
        taus = np.array([threshold.get(layer, np.inf) for layer in range(layers)], np.float64)
    else:
        taus = np.full(layers, threshold, np.float64)
    hits = np.nan_to_num(similarity_QL.astype(np.float64), nan=-np.inf) >= taus
    if chained:
        hits = np.logical_and.accumulate(hits, axis=1)
    if hits.size == 0:
        return MemoRate([0.0] * layers, 0.0)
    return MemoRate([float(r) for r in hits.mean(axis=0)], float(hits.mean()))


def cosine_stats(approx_ND: np.ndarray, exact_ND: np.ndarray) -> CosineStats:
    """Mean, 1st percentile and minimum over rows of the cosine between two float [N, D] arrays."""
    return stats_of(row_cosines(approx_ND, exact_ND))


def row_cosines(approx_ND: np.ndarray, exact_ND: np.ndarray) -> np.ndarray:
    """float [N]: the cosine between each row of two float [N, D] arrays."""
    a = approx_ND / np.linalg.norm(approx_ND, axis=1, keepdims=True)
    b = exact_ND / np.linalg.norm(exact_ND, axis=1, keepdims=True)
    return np.clip((a * b).sum(axis=1), -1.0, 1.0)


def stats_of(cosines_N: np.ndarray) -> CosineStats:
    return CosineStats(float(cosines_N.mean()), float(np.percentile(cosines_N, 1)), float(cosines_N.min()))


def exact_input_cache(stored_ids: Sequence[np.ndarray], stored_embeddings: np.ndarray,
                      query_ids: Sequence[np.ndarray], query_embeddings: np.ndarray) -> Alternative:
    """A cache keyed by the exact token ids: hits return the stored embedding, misses run the model.

    Embeddings: float32 [S, D] and [Q, D] from the exact model. The cosine is measured, not
    assumed: a hit's stored embedding against the query's own exact embedding.
    """
    index = {tuple(np.asarray(ids).tolist()): s for s, ids in enumerate(stored_ids)}
    source = np.array([index.get(tuple(np.asarray(ids).tolist()), -1) for ids in query_ids], np.int64)
    answers = np.where((source >= 0)[:, None], stored_embeddings[np.maximum(source, 0)], query_embeddings)
    return Alternative(float((source >= 0).mean()), cosine_stats(answers, query_embeddings), source)


def nearest_output(stored_ids: Sequence[np.ndarray], stored_embeddings: np.ndarray,
                   query_ids: Sequence[np.ndarray], query_embeddings: np.ndarray, *,
                   block: int = 256) -> Alternative:
    """Return, for every query, the embedding of the nearest stored text; never run the model.

    Nearest by cosine of TF-IDF vectors over token ids (counts x log((1 + S) / (1 + document
    frequency)) + 1, over the stored texts' vocabulary): what a cache in front of the model
    can compute from the tokenizer alone. Embeddings: float32 [S, D] and [Q, D]; the stored
    ones are the answers, the query ones the exact reference. Stored keys are built ``block``
    texts at a time, so memory stays at (Q + block) x stored vocabulary floats.
    """
    vocab = np.unique(np.concatenate([np.asarray(ids) for ids in stored_ids]))
    df = np.zeros(len(vocab), np.float32)
    for ids in stored_ids:
        df[np.searchsorted(vocab, np.unique(ids))] += 1
    idf = np.log((1 + len(stored_ids)) / (1 + df)) + 1
    keys_QV = _tfidf(query_ids, vocab, idf)
    best, source = np.full(len(query_ids), -np.inf, np.float32), np.zeros(len(query_ids), np.int64)
    for start in range(0, len(stored_ids), block):
        scores = keys_QV @ _tfidf(stored_ids[start:start + block], vocab, idf).T
        better = scores.max(axis=1) > best
        best[better] = scores.max(axis=1)[better]
        source[better] = start + scores.argmax(axis=1)[better]
    return Alternative(1.0, cosine_stats(stored_embeddings[source], query_embeddings), source)


def _tfidf(ids_list: Sequence[np.ndarray], vocab: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """float32 [N, V] L2-normalised TF-IDF rows; ids outside ``vocab`` are dropped."""
    keys = np.zeros((len(ids_list), len(vocab)), np.float32)
    for row, ids in enumerate(ids_list):
        ids = np.asarray(ids)
        pos = np.searchsorted(vocab, ids).clip(0, len(vocab) - 1)
        known = vocab[pos] == ids
        np.add.at(keys[row], pos[known], 1.0)
    keys *= idf
    return keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
