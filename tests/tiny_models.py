"""Tiny random-weight Hugging Face models and ONNX export variants for tests.

Everything here works offline: models are built from configs with a fixed
torch seed, tokenizers from a small WordPiece vocabulary written on the fly.
Import as ``from tiny_models import ...`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import warnings
from pathlib import Path


ARCHITECTURES = ["bert", "roberta", "distilbert", "electra", "xlm-roberta", "mpnet", "deberta-v2"]

HIDDEN = 64
HEADS = 4
LAYERS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 128
VOCAB_SIZE = 512  # config vocab; the tokenizer uses fewer ids (see _vocab_tokens)
SEED = 0
JITTER = 0.1  # std of the noise added to every weight (see _jitter)

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "the of and to in is was for on that with as by at from it an be this are "
    "which or has had not but were his they have one all their new more first "
    "after who two been its also year into other time over some can only when "
    "would than most many may such these about up out there made where between "
    "memo attention model cache query key value token layer head score softmax "
    "news sport business music film world city game team market price data"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()")


def _vocab_tokens() -> list[str]:
    """Return the WordPiece vocabulary: specials, words, characters, ## suffix pieces."""
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens = _SPECIAL + _WORDS + _CHARS + pieces
    return list(dict.fromkeys(tokens))


def make_tokenizer(out_dir: Path):
    """Write a small ``BertTokenizerFast`` into ``out_dir`` and return it."""
    from transformers import BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("\n".join(_vocab_tokens()) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True,
                            model_max_length=MAX_POSITIONS - 2)
    tok.save_pretrained(str(out_dir))
    return tok


def _config(arch: str):
    """Return a tiny config for ``arch`` (pad id 0, CLS 2, SEP 3 as in the tokenizer)."""
    import transformers as tf

    ids = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
    common = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                  max_position_embeddings=MAX_POSITIONS, **ids)
    if arch == "bert":
        return tf.BertConfig(type_vocab_size=2, **common)
    if arch == "roberta":
        return tf.RobertaConfig(type_vocab_size=1, **common)
    if arch == "xlm-roberta":
        return tf.XLMRobertaConfig(type_vocab_size=1, **common)
    if arch == "electra":
        return tf.ElectraConfig(embedding_size=32, type_vocab_size=2, **common)
    if arch == "mpnet":
        return tf.MPNetConfig(relative_attention_num_buckets=32, **common)
    if arch == "distilbert":
        return tf.DistilBertConfig(vocab_size=VOCAB_SIZE, dim=HIDDEN, n_layers=LAYERS,
                                   n_heads=HEADS, hidden_dim=INTERMEDIATE,
                                   max_position_embeddings=MAX_POSITIONS, pad_token_id=0)
    if arch == "deberta-v2":
        # Same attention flavour as deberta-v3-base: relative c2p + p2c, log buckets,
        # shared key projections, no absolute position embedding.
        return tf.DebertaV2Config(
            relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=32,
            max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
            position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7, **common)
    raise ValueError(f"Unknown tiny architecture {arch!r}; use one of {ARCHITECTURES}.")


def make_tiny_model(arch: str, out_dir: Path) -> Path:
    """Build a tiny random-weight ``arch`` model plus tokenizer in ``out_dir``; return ``out_dir``."""
    import torch
    from transformers import AutoModel

    out_dir = Path(out_dir)
    config = _config(arch)
    torch.manual_seed(SEED)
    model = AutoModel.from_config(config).eval()
    _jitter(model)
    model.save_pretrained(str(out_dir))
    make_tokenizer(out_dir)
    return out_dir


def _jitter(model) -> None:
    """Add seeded noise to every parameter, in place; returns nothing.

    HF init makes all biases 0 and LayerNorm weights 1; identical initializers are
    deduplicated by the exporters (Identity nodes a real checkpoint never has), and
    near-zero weights make attention almost uniform, hiding masking mistakes.
    """
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * JITTER)


def sample_inputs(model_dir: Path, texts: list[str], names: set[str] | None = None) -> dict:
    """Tokenize ``texts`` (padded to the longest) and return int64 numpy arrays keyed by name.

    When ``names`` is given, only those inputs are kept (the ONNX graph's inputs).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    enc = tok(texts, padding=True, return_tensors="np")
    feeds = {k: v.astype("int64") for k, v in enc.items()}
    if names is not None:
        feeds = {k: v for k, v in feeds.items() if k in names}
    return feeds


def torch_last_hidden_state(model_dir: Path, feeds: dict, attn_implementation: str = "eager"):
    """Run the HF model (eager attention by default) on numpy ``feeds``; return last_hidden_state."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                      attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.last_hidden_state.numpy()


# ---------------------------------------------------------------------------
# Export variants: ONNX files as other tools would produce them.
# ---------------------------------------------------------------------------

def _optimum_main_export(model_dir: Path, tmp: Path, library_name: str, **kw) -> None:
    """Run optimum's CLI entry point (``optimum-cli export onnx``) into ``tmp``."""
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(model_dir), output=str(tmp), task="feature-extraction",
                    library_name=library_name, opset=kw.pop("opset", 18),
                    do_validation=False, local_files_only=True, **kw)


def _move_model(tmp: Path, out: Path) -> Path:
    """Move ``tmp/model.onnx`` to ``out`` (small models: no external data); return ``out``."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.load(str(tmp / "model.onnx")), str(out))
    return out


def export_optimum_default(model_dir: Path, out: Path, opset: int = 18) -> Path:
    """Export like ``optimum-cli export onnx --library-name transformers`` (default SDPA
    attention where the architecture has it); return the ONNX path."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _optimum_main_export(model_dir, Path(tmp), "transformers", opset=opset)
        return _move_model(Path(tmp), out)


def export_sentence_transformers(model_dir: Path, out: Path, opset: int = 18) -> Path:
    """Export like ``optimum-cli export onnx`` on a sentence-transformers folder
    (outputs token_embeddings and sentence_embedding); return the ONNX path."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _optimum_main_export(model_dir, Path(tmp), "sentence_transformers", opset=opset)
        return _move_model(Path(tmp), out)


def make_sentence_transformers_folder(model_dir: Path, out_dir: Path) -> Path:
    """Wrap an HF folder as a sentence-transformers folder (mean pooling); return ``out_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(str(model_dir), max_seq_length=MAX_POSITIONS - 2)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out_dir))
    return Path(out_dir)


def _last_hidden_wrapper(model):
    """Return a torch module ``(input_ids, attention_mask[, token_type_ids]) -> last_hidden_state``."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              **kw).last_hidden_state

    return LastHidden().eval()


def export_torch_onnx(model_dir: Path, out: Path, dynamo: bool, opset: int = 18,
                      attn_implementation: str = "eager") -> Path:
    """Export with ``torch.onnx.export`` (eager attention by default), inputs
    ``input_ids, attention_mask[, token_type_ids]``, output ``last_hidden_state``,
    dynamic batch and sequence axes; return the ONNX path."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True,
                                      attn_implementation=attn_implementation).eval()
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) > 1:  # as optimum: roberta-likes have 1
        names.append("token_type_ids")
    feeds = sample_inputs(model_dir, ["the model was new", "one token"], set(names))
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    wrapper = _last_hidden_wrapper(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes["last_hidden_state"] = {0: "batch_size", 1: "sequence_length"}
    kw = dict(input_names=names, output_names=["last_hidden_state"], opset_version=opset,
              dynamo=dynamo, verbose=False)
    if dynamo:
        dim_b, dim_s = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
        kw["dynamic_shapes"] = {n: {0: dim_b, 1: dim_s} for n in names}
    else:
        kw["dynamic_axes"] = axes
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(out), **kw)
    _inline_external_data(out)
    return out


def _inline_external_data(path: Path) -> None:
    """Rewrite ``path`` as a single file if the exporter wrote external data next to it."""
    import onnx

    data = Path(str(path) + ".data")
    if data.exists():
        onnx.save(onnx.load(str(path)), str(path))
        data.unlink()


def export_sdpa_layer(out: Path, *, mask: str, dynamo: bool, opset: int, scale: float | None = None) -> Path:
    """Export one attention layer that calls ``torch.nn.functional.scaled_dot_product_attention``.

    hidden [B, S, 8] (and attention_mask [B, S] int64 unless ``mask == "none"``) -> [B, S, 8],
    2 heads of 4. ``mask``: "bool" (expanded [B, 1, S, S] boolean, as transformers' newer
    mask utilities build it), "additive" ((1 - m) * min, as the SDPA mask of transformers 4.57),
    "where" (Where(m, 0, min) expanded) or "none". Covers torch's two SDPA decompositions
    (TorchScript symbolic with dynamo=False, torchlib with dynamo=True); returns the ONNX path.
    """
    import torch
    import torch.nn.functional as F

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))

        def forward(self, hidden, attention_mask=None):
            b, s, d = hidden.shape
            heads = lambda t: t.view(b, s, 2, d // 2).transpose(1, 2)  # noqa: E731
            m = attention_mask[:, None, None, :] if attention_mask is not None else None
            low = torch.finfo(hidden.dtype).min
            bias = {"bool": lambda: m.bool().expand(b, 1, s, s),
                    "additive": lambda: (1.0 - m.to(hidden.dtype)) * low,
                    "where": lambda: torch.where(m.bool(), 0.0, low).expand(b, 1, s, s),
                    "none": lambda: None}[mask]()
            context = F.scaled_dot_product_attention(heads(self.q(hidden)), heads(self.k(hidden)),
                                                     heads(self.v(hidden)), attn_mask=bias, scale=scale)
            return context.transpose(1, 2).reshape(b, s, d)

    torch.manual_seed(SEED)
    layer = Layer().eval()
    names = ["hidden"] if mask == "none" else ["hidden", "attention_mask"]
    attention_mask = torch.ones(2, 5, dtype=torch.int64)
    attention_mask[1, 3:] = 0
    args = (torch.randn(2, 5, 8),) + (() if mask == "none" else (attention_mask,))
    kw = dict(input_names=names, output_names=["context"], opset_version=opset, dynamo=dynamo, verbose=False)
    if dynamo:
        dim_b, dim_s = torch.export.Dim("batch"), torch.export.Dim("sequence")
        kw["dynamic_shapes"] = {n: {0: dim_b, 1: dim_s} for n in names}
    else:
        kw["dynamic_axes"] = {n: {0: "batch", 1: "sequence"} for n in names}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, args, str(out), **kw)
    _inline_external_data(out)
    return out
