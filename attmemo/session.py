"""Sessions that can run MemoAttention models.

``session_options`` registers attmemo's Python ops in a SessionOptions (yours
or a new one); ``InferenceSession`` is an ``onnxruntime.InferenceSession``
that does that for you. Without a memo database every MemoAttention layer
computes attention exactly, through the model's own native nodes.

A memo database (``attmemo build-db``) is attached to the process-wide op
registry under the model id in its manifest; the model's MemoAttention nodes
carry the same id, so every session of that model in the process uses it.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

from attmemo import custom_ops
from attmemo.custom_ops import registry
from attmemo.custom_ops.registry import MODEL_ID_KEY
from attmemo.store import MemoDatabase, MemoDatabaseError, default_db_dir

log = logging.getLogger(__name__)

_REGISTERED_KEY = "attmemo.ops_registered"


def session_options(db: str | os.PathLike | None = None,
                    sess_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or a new SessionOptions) with attmemo's ops registered.

    db: a memo database folder to serve from (loaded, validated and attached
    under its manifest's model id; raises MemoDatabaseError naming the bad file);
    None attaches nothing.
    """
    so = sess_options if sess_options is not None else ort.SessionOptions()
    if not _is_registered(so):
        so.register_custom_ops_library(custom_ops.library_path())
        so.add_session_config_entry(_REGISTERED_KEY, "1")
    if db is not None:
        database = MemoDatabase.open(db)
        registry.attach(database.model_id, database)
    return so


def _is_registered(so: ort.SessionOptions) -> bool:
    try:
        return so.get_session_config_entry(_REGISTERED_KEY) == "1"
    except Exception:  # noqa: BLE001 - onnxruntime raises a bare RuntimeError for a missing key
        return False


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` with attmemo's ops registered and a memo database attached.

    db: the database folder; None uses ``<model without .onnx>.memo/`` if it
    exists (only when the model is given by path). Accepts every argument
    onnxruntime's session does; the caller's SessionOptions are honoured.
    """

    def __init__(self, path_or_bytes, db: str | os.PathLike | None = None,
                 sess_options: ort.SessionOptions | None = None, **kwargs):
        if db is None and isinstance(path_or_bytes, (str, os.PathLike)) and default_db_dir(path_or_bytes).is_dir():
            db = default_db_dir(path_or_bytes)
        self._memo = MemoDatabase.open(db) if db is not None else None
        super().__init__(path_or_bytes, sess_options=session_options(None, sess_options), **kwargs)
        if self._memo is not None:
            model_id = self.get_modelmeta().custom_metadata_map.get(MODEL_ID_KEY)
            if model_id != self._memo.model_id:
                raise MemoDatabaseError(f"{db}: built for model {self._memo.model_id}, but this model is {model_id}; "
                                 "rebuild the database for this model with attmemo build-db.")
            registry.attach(model_id, self._memo)
            log.info("serving %s from memo database %s", model_id, db)

    def memo_stats(self) -> dict[int, dict]:
        """{layer: {"lookups", "hits", "lookup_seconds"}} of this session's database ({} without one).

        Counts sequences; shared with other sessions in the process that use the same database object.
        """
        return self._memo.stats.snapshot() if self._memo is not None else {}
