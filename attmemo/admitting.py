"""Learning from traffic: ``attmemo.InferenceSession(model, db=FOLDER, admit=True, max_db_bytes=N)``.

A batch-1 unpadded text that the document key missed runs the admitting model instead of
the model (transforms.unfuse.admitting_model: the exact model whose served layers' attention
are extra outputs, encoded as the store keeps them), and the store (store/admission.py)
writes them as one entry, evicting to stay within ``max_db_bytes``. Later runs in this
process and in any process opening the folder find the text through the one document
executor. Batches, padded inputs and plain onnxruntime sessions are served but never admit.

Never raises into the caller's run: a failed admission is logged once and the run's outputs
are returned all the same.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from attmemo.custom_ops.registry import LAYERS_KEY, MODEL_ID_KEY
from attmemo.document_tier import single_sequence
from attmemo.store import admission, admitted_folder
from attmemo.store.layout import ADMITTED_DESCRIPTOR, ADMITTED_DIR
from attmemo.store.manifest import FILENAME as MANIFEST, MemoDatabaseError
from attmemo.transforms.names import probs_value

log = logging.getLogger(__name__)

# What a folder with no build stores: float32 is read in place by the fed model (a hit cost 0.77 of
# the unmodified model on edited documents, float16 0.815: docs/benchmarks.md), at twice the bytes.
NEW_STORE_DTYPE = "float32"


class Admitter:
    """The admitting model's session and the store it writes to."""

    def __init__(self, session: ort.InferenceSession, store: admission.AdmittedStore, outputs: list[str], executor):
        self.session, self.store, self.outputs, self.executor = session, store, outputs, executor
        self.layers = sorted(store.heads)
        self._probs = [probs_value(layer) for layer in self.layers]
        self._failed = False

    def run(self, output_names, input_feed: dict, run_options=None) -> list | None:
        """The model's outputs for a text the store accepts, admitting it on the way; None for any other input."""
        ids = single_sequence(input_feed)
        if ids is None or not self.store.accepts(len(ids)):
            return None
        # The fast door (document_tier) missed this text just before: count the lookup the
        # model's MemoGate would have counted had the model run.
        self.executor.count_single((), 0.0)
        names = list(output_names) if output_names else self.outputs
        results = self.session.run(names + self._probs, input_feed, run_options)
        try:
            self.store.admit(ids, {layer: results[len(names) + i][0] for i, layer in enumerate(self.layers)})
        except Exception as error:  # noqa: BLE001 - storing is a side effect: the run's answer stands
            if not self._failed:
                self._failed = True
                log.error("could not admit a text into %s (%s: %s); serving on (logged once)",
                          self.store.folder, type(error).__name__, error)
        return results[:len(names)]


def check_arguments(db, max_db_bytes, eviction: str) -> None:
    """Raise ValueError (one sentence) for admission arguments that cannot work."""
    if db is None:
        raise ValueError("admit=True needs db=FOLDER, the folder to store admitted texts in (new or existing).")
    if max_db_bytes is None:
        raise ValueError("admit=True needs max_db_bytes=N, the most bytes the folder may take on disk.")
    if not (isinstance(max_db_bytes, int) and not isinstance(max_db_bytes, bool) and max_db_bytes > 0):
        raise ValueError(f"max_db_bytes={max_db_bytes!r}: give the folder's byte budget as a positive integer.")
    if eviction not in admission.EVICTION:
        raise ValueError(f"eviction={eviction!r}: use one of {', '.join(admission.EVICTION)}.")


def prepare_folder(db, path_or_bytes, kwargs) -> None:
    """Make ``db`` a store if it is neither a built database nor one yet (a new or empty folder).

    Learns the model's heads by one 2-token run of its admitting model. Raises
    MemoDatabaseError (one sentence) for a folder holding something else.
    """
    folder = Path(db)
    if folder.exists() and not folder.is_dir():
        raise MemoDatabaseError(f"{folder}: is a file; give a folder for the memo store.")
    try:
        _prepare(folder, path_or_bytes, kwargs)
    except OSError as error:
        raise MemoDatabaseError(f"{error.filename or folder}: cannot be written ({error.strerror or error}); "
                                "give a folder this process may write to.") from error


def _prepare(folder: Path, path_or_bytes, kwargs) -> None:
    if (folder / MANIFEST).exists():
        (folder / ADMITTED_DIR).mkdir(exist_ok=True)
        return
    if folder.is_dir() and not admission.has_segment(folder) and any(folder.iterdir()):
        raise MemoDatabaseError(f"{folder}: holds other files and is no attmemo database; "
                                "give a new or empty folder to admit into.")
    if (folder / ADMITTED_DESCRIPTOR).exists():
        return
    model = admitting_model_bytes(path_or_bytes, None, NEW_STORE_DTYPE)
    if model is None:
        raise MemoDatabaseError(f"{_name(path_or_bytes)}: could not be rewritten to record attention (logged); "
                                "admission needs a MemoAttention model (attmemo transform).")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    probe = ort.InferenceSession(model, sess_options=options, **kwargs)
    metadata = probe.get_modelmeta().custom_metadata_map
    probs = [o.name for o in probe.get_outputs() if o.name.startswith(probs_value(""))]
    if MODEL_ID_KEY not in metadata or not probs:
        raise MemoDatabaseError(f"{_name(path_or_bytes)}: is not a MemoAttention model; "
                                "rewrite it with attmemo transform first.")
    layers = [int(name[len(probs_value("")):]) for name in probs]
    heads = {layer: int(p.shape[1]) for layer, p in zip(layers, probe.run(probs, _probe_feed(probe)))}
    admitted_folder.create(folder, model_id=metadata[MODEL_ID_KEY], heads=heads, dtype=NEW_STORE_DTYPE)


def admitter(database, path_or_bytes, options: ort.SessionOptions, kwargs, *, max_db_bytes, eviction: str,
             outputs: list[str]) -> Admitter | None:
    """The Admitter of a session over ``database``; None (logged) where its plan serves no document key.

    Raises ValueError (one sentence) if the budget leaves no room.
    """
    if database.documents is not None and database.documents.admitted is None:
        admitted_folder.attach(database)      # opened before this process made its admitted/ folder
    store = database.documents.admitted if database.documents is not None else None
    if database.codec.log is not None:
        # The admitting model would have to encode log codes in the graph (unfuse._encode_probs); not yet.
        raise ValueError(f"admit=True: {database.folder} stores {database.manifest.dtype} attention, which "
                         "admission cannot write yet; admit into a database built with --dtype float32, "
                         "float16 or unorm16.")
    if store is None:
        log.warning("%s: its plan serves no document key (attmemo calibrate switched it off, or the build has "
                    "no token tables), so nothing is admitted", database.folder)
        return None
    store.enable(max_db_bytes=max_db_bytes, eviction=eviction)
    # Every stored layer: the variant a new folder's probe made (attmemo.model_cache has it already).
    every = set(store.heads) == set(database.manifest.layers)
    model = admitting_model_bytes(path_or_bytes, None if every else sorted(store.heads), store.dtype)
    if model is None:
        return None
    return Admitter(ort.InferenceSession(model, sess_options=options, **kwargs), store, outputs,
                    database.executor)


def stats(database) -> dict | None:
    """The admission counters of ``database``'s folder, None if it has no admitted segment."""
    store = database.documents.admitted if database.documents is not None else None
    return store.stats() if store is not None else None


def version_file(folder: Path) -> Path:
    """The file whose change means the folder must be opened anew: the manifest, or an admitted-only store's description."""
    manifest = Path(folder) / MANIFEST
    return manifest if manifest.exists() else Path(folder) / ADMITTED_DESCRIPTOR


def _name(path_or_bytes) -> str:
    return str(path_or_bytes) if isinstance(path_or_bytes, (str, os.PathLike)) else "the model bytes given"


def admitting_model_bytes(path_or_bytes, layers: list[int], dtype: str) -> bytes | None:
    from attmemo.session import rewritten_model_bytes
    from attmemo.store.values import codec
    from attmemo.transforms.unfuse import admitting_model

    """The admitting model of ``layers`` (None: every layer) storing ``dtype``; None if it cannot be made (logged)."""
    chosen = None if layers is None else set(layers)
    return rewritten_model_bytes(path_or_bytes, lambda model: admitting_model(model, chosen, codec(dtype)),
                                 variant=f"admit {'all' if layers is None else tuple(layers)} {dtype}")


def _probe_feed(session: ort.InferenceSession) -> dict[str, np.ndarray]:
    ids = np.zeros((1, 2), np.int64)
    known = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: known[i.name] for i in session.get_inputs() if i.name in known}
