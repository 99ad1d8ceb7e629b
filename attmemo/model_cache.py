"""Rewritten models kept on disk, so a session does not rewrite the same model twice.

Creating an ``attmemo.InferenceSession`` rewrites the model once per variant it serves
(the exact model, a fed model per tier): ~1.5 s for MiniLM on 2 cores, most of it
importing onnx and onnx_ir and re-serializing 90 MB. A variant depends only on the model
file, the variant's own description and the code that rewrites, so it is stored under
a key of those in ``$ATTMEMO_CACHE`` (default ``~/.cache/attmemo``; ``ATTMEMO_CACHE=off``
turns it off). A model given as bytes is never cached. Files are written to a temporary
name and renamed, so concurrent processes see a whole file or none. The folder keeps the
``KEEP`` most recently written variants (a MiniLM variant is 90 MB).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# The modules whose code decides what a rewrite produces: a change to them is a new key.
# (Paths relative to attmemo/transforms; log codes' levels are constants of the fed model's decode.)
_REWRITERS = ("unfuse.py", "memo_function.py", "names.py", "aligned_feed.py", "fed_decode.py", "../store/log_codes.py")
KEEP = 8


def cache_dir() -> Path | None:
    setting = os.environ.get("ATTMEMO_CACHE", "")
    if setting.lower() in ("off", "0", "none"):
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "attmemo"


def cache_path(model_path, variant: str) -> Path | None:
    """Where the ``variant`` of the model file at ``model_path`` is kept, or None (no cache)."""
    folder = cache_dir()
    if folder is None:
        return None
    import attmemo.transforms as transforms

    stat = Path(model_path).stat()
    digest = hashlib.sha256(f"{Path(model_path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|"
                            f"{variant}".encode())
    for name in _REWRITERS:
        digest.update((Path(transforms.__file__).parent / name).read_bytes())
    return folder / f"{digest.hexdigest()[:32]}.onnx"


def load(path: Path | None) -> bytes | None:
    """The kept variant, or None if there is none or its bytes are not the ones written (then rewrite)."""
    try:
        if path is None or not path.is_file():
            return None
        model = path.read_bytes()
        if hashlib.sha256(model).hexdigest() == _digest_file(path).read_text().strip():
            return model
        log.warning("%s: the kept rewritten model was changed on disk; rewriting it", path)
    except OSError:
        pass
    return None


def _digest_file(path: Path) -> Path:
    return path.with_suffix(".sha256")


def store(path: Path | None, model: bytes) -> None:
    """Keep ``model`` at ``path``; a cache that cannot be written is logged, not raised."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".rewrite-", dir=path.parent)
        with os.fdopen(handle, "wb") as f:
            f.write(model)
        # The digest first: a reader that finds the model finds its digest (a flipped byte in
        # a kept model would otherwise be silently wrong output).
        _digest_file(path).write_text(hashlib.sha256(model).hexdigest() + "\n")
        os.replace(temporary, path)
        for old in sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime_ns)[:-KEEP]:
            old.unlink(missing_ok=True)
            _digest_file(old).unlink(missing_ok=True)
    except OSError as error:
        log.info("could not keep the rewritten model in %s (%s); it is rewritten next time", path.parent, error)
