"""One-sentence errors for what a user passes to ``attmemo.InferenceSession``.

onnxruntime reports a missing or non-ONNX model as "[ONNXRuntimeError] : 3 : NO_SUCHFILE
..." or "INVALID_PROTOBUF", and a file given as ``db=`` would otherwise read as a missing
folder. These checks say which path is wrong and what to give instead, as the CLI does.
They are cheap (a stat each): the model's content is only judged by onnxruntime itself,
whose parse error ``model_errors`` translates.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from attmemo.custom_ops import DOMAIN as OPS_DOMAIN
from attmemo.store import MemoDatabaseError


class ModelFileError(ValueError):
    """A model file onnxruntime cannot read; the message names it and what to give instead."""


def check_model_path(path_or_bytes) -> None:
    """Raise FileNotFoundError, PermissionError or ModelFileError (one sentence) for a bad model path.

    Bytes (a serialized model) are left to onnxruntime; see ``model_errors``.
    """
    if not isinstance(path_or_bytes, (str, os.PathLike)):
        return
    path = Path(path_or_bytes)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file; give the path of an .onnx model written by "
                                "attmemo-export or attmemo transform.")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file; give the path of the .onnx file in it.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: is empty, not a readable ONNX model; give an .onnx file written by an ONNX "
                             "exporter, attmemo-export or attmemo transform.")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: cannot be read (permission denied); fix its permissions or copy it.")


def check_db_folder(db) -> None:
    """Raise MemoDatabaseError (one sentence) if ``db`` is not an existing folder."""
    path = Path(db)
    if path.is_file():
        raise MemoDatabaseError(f"{path}: is a file, not a memo database folder; give the folder attmemo build-db "
                                "wrote (MODEL.memo/ beside the model), or leave db out.")
    if not path.exists():
        raise MemoDatabaseError(f"{path}: no such memo database folder; build one with attmemo build-db, "
                                "or leave db out to compute attention exactly.")


@contextlib.contextmanager
def model_errors(path_or_bytes):
    """Turn onnxruntime's parse failure of the model into ModelFileError (one sentence)."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph, InvalidProtobuf

    what = path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike)) else "the model bytes given"
    try:
        yield
    except InvalidGraph as error:
        if f'"{OPS_DOMAIN}"' not in str(error):
            raise
        # The ops' signatures changed between versions (MemoGate reads the token ids since issue 11).
        raise ModelFileError(f"{what}: its attmemo nodes do not match this attmemo's ops (written by another "
                             "version); export it again with attmemo-export or attmemo transform.") from error
    except (InvalidProtobuf, InvalidArgument) as error:
        # InvalidArgument also covers mistakes that are not the model's (such as a bad provider option).
        if isinstance(error, InvalidArgument) and "No graph was found" not in str(error):
            raise
        raise ModelFileError(f"{what}: not a readable ONNX model (onnxruntime could not parse it); give an .onnx "
                             "file written by an ONNX exporter, attmemo-export or attmemo transform.") from error
