"""Sessions that can run MemoAttention models.

``session_options`` registers attmemo's Python ops in a SessionOptions (yours
or a new one); ``InferenceSession`` is an ``onnxruntime.InferenceSession``
that does that for you. Without a memo database every MemoAttention layer
computes attention exactly, through the model's own native nodes.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

from attmemo import custom_ops

log = logging.getLogger(__name__)

_REGISTERED_KEY = "attmemo.ops_registered"


def session_options(db: str | os.PathLike | None = None,
                    sess_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Return ``sess_options`` (or a new SessionOptions) with attmemo's ops registered.

    db: a memo database folder to serve from; None computes every layer exactly.
    """
    so = sess_options if sess_options is not None else ort.SessionOptions()
    if not _is_registered(so):
        so.register_custom_ops_library(custom_ops.library_path())
        so.add_session_config_entry(_REGISTERED_KEY, "1")
    if db is not None:
        raise NotImplementedError("Memo databases are not available in this version of attmemo.")
    return so


def _is_registered(so: ort.SessionOptions) -> bool:
    try:
        return so.get_session_config_entry(_REGISTERED_KEY) == "1"
    except Exception:  # noqa: BLE001 - onnxruntime raises a bare RuntimeError for a missing key
        return False


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` with attmemo's ops registered.

    Accepts every argument onnxruntime's session does; the caller's
    SessionOptions are honoured (the ops are added to them).
    """

    def __init__(self, path_or_bytes, db: str | os.PathLike | None = None,
                 sess_options: ort.SessionOptions | None = None, **kwargs):
        super().__init__(path_or_bytes, sess_options=session_options(db, sess_options), **kwargs)
