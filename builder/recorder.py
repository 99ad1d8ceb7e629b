"""Run a MemoAttention model exactly and record, per layer, its input hidden
states and attention probabilities (the build side; the only onnxruntime user
in attmemo.store).

One text at a time, batch 1 and unpadded, so each record is exactly the
sequence's valid region: hidden [n, D] and probabilities [H, n, n].
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from attmemo.custom_ops.registry import MODEL_ID_KEY
from attmemo.export.hf_export import SOURCE_DIR_KEY

from attmemo.store.manifest import MemoDatabaseError

log = logging.getLogger(__name__)



class Recorder:
    def __init__(self, model_path: Path, scratch: Path, *, threads: int = 0):
        """Rewrite ``model_path`` into its recording model (saved in ``scratch``) and open it with ``threads``
        intra-op threads (0: onnxruntime's choice, every core)."""
        import onnx_ir as ir
        import onnxruntime as ort

        model, self.layers = recording_graph(model_path)
        self.metadata = dict(model.metadata_props)
        self.model_id = self.metadata[MODEL_ID_KEY]
        path = scratch / "recording.onnx"
        ir.save(model, path)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to training
        so.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [name for layer in self.layers for name in (layer.hidden, layer.probs)]

    def run(self, input_ids: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{layer: (hidden float32[n, D], probs float32[H, n, n])} for one unpadded sequence int64[n]."""
        known = unpadded_inputs(input_ids.astype(np.int64)[None, :])
        missing = [name for name in self._inputs if name not in known]
        if missing:
            raise MemoDatabaseError(f"the model needs inputs {missing} that build-db cannot make; "
                             "export a plain encoder (input_ids, attention_mask, token_type_ids).")
        outputs = self._session.run(self._outputs, {name: known[name] for name in self._inputs})
        return {layer.layer: (outputs[2 * i][0], outputs[2 * i + 1][0]) for i, layer in enumerate(self.layers)}


def recording_graph(model_path: Path):
    """(onnx_ir model rewritten into its recording model, its recorded layers); one-sentence
    MemoDatabaseError unless ``model_path`` is a MemoAttention model with at least one layer."""
    import onnx_ir as ir

    from attmemo.transforms.unfuse import recording_model

    try:
        model = ir.load(model_path)
    except Exception as error:  # noqa: BLE001 - protobuf raises many types for a bad file
        raise MemoDatabaseError(f"{model_path}: not a readable ONNX model ({type(error).__name__}).") from error
    check_memo_metadata(model_path, dict(model.metadata_props))
    layers = recording_model(model)
    if not layers:
        raise MemoDatabaseError(f"{model_path}: has no MemoAttention layer; rewrite it with attmemo transform.")
    return model, layers


def read_memo_metadata(model_path: Path) -> dict[str, str]:
    """The metadata of the MemoAttention model ``model_path`` (its graph without external data)."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises many types for a bad file
        raise MemoDatabaseError(f"{model_path}: not a readable ONNX model ({type(error).__name__}).") from error
    metadata = {p.key: p.value for p in model.metadata_props}
    check_memo_metadata(model_path, metadata)
    return metadata


def check_memo_metadata(model_path: Path, metadata: dict[str, str]) -> None:
    """Raise MemoDatabaseError unless the model's metadata marks it as rewritten by attmemo."""
    if MODEL_ID_KEY not in metadata:
        raise MemoDatabaseError(f"{model_path}: has no {MODEL_ID_KEY} metadata, so it is not a MemoAttention model; "
                                "rewrite it first with attmemo transform (or export it with attmemo-export).")


def token_limit(tokenizer) -> int | None:
    """The longest sequence the tokenizer's model takes (``model_max_length``), or None if it does not say
    (transformers then reports a huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None


def unpadded_inputs(ids_BS: np.ndarray) -> dict[str, np.ndarray]:
    """input_ids, attention_mask (all ones) and token_type_ids (zeros) of unpadded int64[B, S] token ids."""
    return {"input_ids": ids_BS, "attention_mask": np.ones_like(ids_BS), "token_type_ids": np.zeros_like(ids_BS)}


def load_tokenizer(model_path: Path, metadata: dict[str, str]):
    """The tokenizer saved beside the model (``model.tokenizer/``) or in the source folder named in its metadata."""
    from transformers import AutoTokenizer

    from attmemo.export.hf_export import tokenizer_dir_for

    candidates = [tokenizer_dir_for(model_path)]
    if SOURCE_DIR_KEY in metadata:
        candidates.append(Path(metadata[SOURCE_DIR_KEY]))
    for folder in candidates:
        if folder.is_dir():
            try:
                return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError, TypeError) as error:
                log.info("no usable tokenizer in %s (%s)", folder, error)
    tried = " or ".join(str(c) for c in candidates)
    raise MemoDatabaseError(f"{model_path}: no tokenizer found (looked in {tried}); "
                     "export with attmemo-export, which saves it beside the model.")
