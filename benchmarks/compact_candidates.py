"""Which compact format keeps quality? Candidates compared offline, before any was built (issue 15 item 3).

    python benchmarks/compact_candidates.py --workdir /tmp/attmemo-compact [--texts 32]

all-MiniLM-L6-v2, the `edited` workload at 256 tokens: for each of the first TEXTS queries
whose stored original has its token count, every layer of the oracle model is fed the
original's attention passed through a candidate's encode and decode (numpy), and the
sentence embedding is compared with the query's exact one (cosine mean, p1), as
`attmemo eval` does. Bytes are per value, float32 = 4.

Candidates: float16, unorm16; top-k entries per row (uint16 index + float16 value,
renormalised); 4-bit codes on a geometric scale, absolute (levels down to LO) or relative
to each row's largest entry (renormalised), and their decoded rows left unnormalised; 8-bit
log codes. log8 and log4 are what store/log_codes.py ships.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _renorm(p):
    return p / np.maximum(p.sum(-1, keepdims=True), 1e-30)


def _levels(count: int, lo: float) -> np.ndarray:
    return np.exp(np.log(lo) * (1 - np.arange(count) / (count - 1))).astype(np.float32)   # lo .. 1


def _nearest(x, levels):
    i = np.clip(np.searchsorted(levels, x), 1, len(levels) - 1)
    below, above = levels[i - 1], levels[i]
    return np.where(x - below < above - x, below, above)


def _geometric(count: int, lo: float, *, relative: bool, renormalise: bool = True):
    levels = np.concatenate([[0.0], _levels(count - 1, lo)]).astype(np.float32)   # 0 is a code of its own

    def codec(p):
        top = p.max(-1, keepdims=True) if relative else 1.0
        q = _nearest(p / top, levels) * top
        return _renorm(q) if renormalise else q
    return codec


def _top_k(k: int):
    def codec(p):
        index = np.argpartition(-p, k - 1, axis=-1)[..., :k]
        kept = np.zeros_like(p)
        np.put_along_axis(kept, index, np.take_along_axis(p, index, -1).astype(np.float16).astype(np.float32), -1)
        return _renorm(kept)
    return codec


def _shipped(name: str):
    from attmemo.store import values

    codec = values.codec(name)

    def roundtrip(p):
        out = np.empty_like(p)
        codec.decode(codec.encode(p), out)
        return out
    return roundtrip


CANDIDATES = {   # name: (bytes per value, float32[H, n, n] -> what a hit would feed)
    "float32": (4, lambda p: p),
    "float16": (2, lambda p: p.astype(np.float16).astype(np.float32)),
    "unorm16": (2, lambda p: np.rint(p * 65535) / 65535),
    "top-16 (of 256)": (0.25, _top_k(16)),
    "top-32 (of 256)": (0.5, _top_k(32)),
    "4-bit absolute, 0 + 1e-4..1": (0.5, _geometric(16, 1e-4, relative=False)),
    "4-bit absolute, 0 + 1e-3..1": (0.5, _geometric(16, 1e-3, relative=False)),
    "4-bit absolute, 0 + 1e-3..1, rows not renormalised": (0.5, _geometric(16, 1e-3, relative=False,
                                                                           renormalise=False)),
    "4-bit relative, 0 + 1e-3..1": (0.5, _geometric(16, 1e-3, relative=True)),
    "8-bit absolute, 0 + 1e-6..1": (1, _geometric(256, 1e-6, relative=False)),
    "log8 (shipped)": (1, _shipped("log8")),
    "log4 (shipped)": (0.5, _shipped("log4")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where attmemo eval's MiniLM models are (made if not)")
    parser.add_argument("--texts", type=int, default=32)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from attmemo.bench import quiet_session_options
    from attmemo.builder.recorder import Recorder, load_tokenizer, unpadded_inputs
    from attmemo.embedding import sentence_embedding
    from attmemo.evaluation import models
    from attmemo.transforms.names import probs_value
    from attmemo.workloads import make_workload

    paths = models(args.workdir)
    workload = make_workload("edited", stored=64, queries=48)
    tokenizer = load_tokenizer(paths["memo"], {})
    ids = lambda text: np.asarray(tokenizer(text, truncation=True, max_length=256)["input_ids"], np.int64)  # noqa: E731
    pairs = [(ids(q), ids(s)) for q, s in zip(workload.queries, workload.stored)]
    pairs = [(q, s) for q, s in pairs if len(q) == len(s)][: args.texts]   # the document key needs the same length
    with tempfile.TemporaryDirectory(prefix="attmemo-candidates-") as scratch:
        recorder = Recorder(paths["memo"], Path(scratch))
    plain = ort.InferenceSession(str(paths["plain"]), quiet_session_options())
    oracle = ort.InferenceSession(str(paths["oracle"]), quiet_session_options())
    names = {i.name for i in plain.get_inputs()}
    feeds = [{k: v for k, v in unpadded_inputs(q[None]).items() if k in names} for q, _ in pairs]
    embed = lambda session, feed: sentence_embedding(session.run(None, feed)[0], feed["attention_mask"])[0]  # noqa: E731
    exact = [embed(plain, f) for f in feeds]
    stored = [{layer: p for layer, (_, p) in recorder.run(s).items()} for _, s in pairs]
    print(f"{len(pairs)} edited queries, every layer fed the stored original's attention after each candidate")
    print("| candidate | bytes per value | cosine mean | cosine p1 |\n|---|---|---|---|")
    for name, (size, codec) in CANDIDATES.items():
        cosine = np.array([embed(oracle, {**f, **{probs_value(layer): codec(p)[None] for layer, p in s.items()}}) @ e
                           for f, s, e in zip(feeds, stored, exact)])
        print(f"| {name} | {size:g} | {cosine.mean():.5f} | {np.percentile(cosine, 1):.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
