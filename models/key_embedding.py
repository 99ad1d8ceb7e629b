"""Train one layer's key embedding (torch): a Siamese network whose L2 distance
between two keys predicts the distance between their attention matrices.

    f(x) = Linear(E -> K)(ReLU(Linear(F -> E)((x - mean) / std)))
    loss = SmoothL1(||f(x_i) - f(x_j)||_2, target_ij)

x are pooled hidden states (attmemo.store.keys.pool), targets mean TV
distances (attmemo.store.pairs). The held-out split is by pair group, i.e. by
text. The trained network is exported as plain float32 arrays with the
standardisation folded into the first layer, for numpy inference
(attmemo.store.keys.KeyEmbedding).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

log = logging.getLogger(__name__)

MIN_STEPS = 300


@dataclasses.dataclass
class TrainReport:
    seconds: float
    train_pairs: int
    heldout_pairs: int
    spearman: float        # rank correlation predicted vs true distance on held-out pairs (nan if none)
    heldout_mae: float     # mean |predicted - true| on held-out pairs


def train_key_embedding(features_NF: np.ndarray, left: np.ndarray, right: np.ndarray, target: np.ndarray,
                        heldout: np.ndarray, *, hidden: int = 128, dim: int = 64, epochs: int = 40,
                        batch_size: int = 256, lr: float = 1e-3, seed: int = 0
                        ) -> tuple[dict[str, np.ndarray], TrainReport]:
    """Fit on pairs (left[p], right[p]) -> target[p] where ``heldout[p]`` is False.

    Returns (weights {"w1" [F, E], "b1" [E], "w2" [E, K], "b2" [K]} float32, report).
    """
    import torch

    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: the network is tiny, and with a second busy core torch's two threads
    # wait on each other (measured 0.4 s with one thread vs 6 s with two under load).
    torch.set_num_threads(1)
    try:
        return _train(features_NF, left, right, target, heldout, hidden=hidden, dim=dim, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed, start=start)
    finally:
        torch.set_num_threads(threads)


def _train(features_NF, left, right, target, heldout, *, hidden, dim, epochs, batch_size, lr, seed, start):
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(features_NF, dtype=np.float32))
    mean, std = x.mean(0), x.std(0)
    # Near-constant features would be blown up for texts unlike the corpus: floor their scale.
    std = torch.clamp(std, min=float(std.median()) * 0.1 + 1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, dim))
    z = (x - mean) / std
    train = np.flatnonzero(~heldout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    loss_fn = torch.nn.SmoothL1Loss(beta=0.05)
    generator = torch.Generator().manual_seed(seed)
    li, ri = torch.from_numpy(left.astype(np.int64)), torch.from_numpy(right.astype(np.int64))
    t = torch.from_numpy(target.astype(np.float32))
    net.train()
    # Small corpora give one or two minibatches per epoch: train at least MIN_STEPS steps.
    batches = -(-len(train) // batch_size)
    for _ in range(max(epochs, -(-MIN_STEPS // batches)) if len(train) else 0):
        for batch in torch.from_numpy(train)[torch.randperm(len(train), generator=generator)].split(batch_size):
            loss = loss_fn(_distance(net, z, li[batch], ri[batch]), t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    weights = _export(net, mean, std)
    report = _evaluate(net, z, li, ri, t, heldout, seconds=time.perf_counter() - start, train_pairs=len(train))
    log.info("key embedding: %d pairs, %.1f s, held-out spearman %.3f", len(train), report.seconds, report.spearman)
    return weights, report


def _distance(net, z, i, j):
    import torch
    diff = net(z[i]) - net(z[j])
    return torch.sqrt((diff * diff).sum(1) + 1e-12)  # epsilon: the norm's gradient is undefined at 0


def _export(net, mean, std) -> dict[str, np.ndarray]:
    import torch
    with torch.no_grad():
        first, last = net[0], net[2]
        w1 = (first.weight / std).T                    # [F, E]
        b1 = first.bias - (mean / std) @ first.weight.T
        return {"w1": w1.numpy().astype(np.float32), "b1": b1.numpy().astype(np.float32),
                "w2": last.weight.T.numpy().astype(np.float32).copy(), "b2": last.bias.numpy().astype(np.float32)}


def _evaluate(net, z, li, ri, t, heldout, *, seconds, train_pairs) -> TrainReport:
    import torch
    at = torch.from_numpy(np.flatnonzero(heldout))
    if len(at) < 2:
        return TrainReport(seconds, train_pairs, len(at), float("nan"), float("nan"))
    with torch.no_grad():
        predicted = _distance(net, z, li[at], ri[at]).numpy()
    true = t[at].numpy()
    return TrainReport(seconds, train_pairs, len(at), spearman(predicted, true),
                       float(np.abs(predicted - true).mean()))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; fine for continuous values)."""
    ra, rb = (np.argsort(np.argsort(v)).astype(np.float64) for v in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
