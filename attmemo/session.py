"""Sessions that can run MemoAttention models.

``session_options`` registers attmemo's Python ops in a SessionOptions (yours
or a new one); ``InferenceSession`` is an ``onnxruntime.InferenceSession``
that does that for you. Without a memo database every MemoAttention layer
computes attention exactly, through the model's own native nodes.

A memo database (``attmemo build-db``) is attached to the process-wide op
registry under the model id in its manifest; the model's MemoAttention nodes
carry the same id, so every session of that model in the process uses it.

Strict or not, a database is validated in Python before it is attached
(MemoDatabase.open: schema, sizes, checksums of the small files). Strict: a
problem raises MemoDatabaseError, one sentence naming the file. Not strict: the
same sentence is logged as a warning and counted in ``refused_databases``, and
the session computes exactly.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from attmemo import custom_ops, session_errors
from attmemo.custom_ops import registry
from attmemo.custom_ops.registry import LAYERS_KEY, MODEL_ID_KEY
from attmemo import admitting, document_tier
from attmemo.store import MemoDatabase, MemoDatabaseError, default_db_dir
from attmemo.store.manifest import FILENAME as MANIFEST

log = logging.getLogger(__name__)

_REGISTERED_KEY = "attmemo.ops_registered"

# Database folder -> how many times a non-strict session or session_options refused it.
refused_databases: Counter[str] = Counter()
_refused_lock = threading.Lock()


def session_options(db: str | os.PathLike | None = None, sess_options: ort.SessionOptions | None = None, *,
                    strict: bool = True) -> ort.SessionOptions:
    """Return ``sess_options`` (or a new SessionOptions) with attmemo's ops registered.

    db: a memo database folder to serve from, loaded, validated and attached
    under its manifest's model id; None attaches nothing. strict: a database
    that fails validation raises MemoDatabaseError (one sentence naming the
    file); with strict=False it is logged, counted in ``refused_databases`` and
    not attached, so sessions of its model compute exactly. There is no model
    here to compare the database with: a database of another model is attached
    under that other model's id and never serves this one.
    """
    so = sess_options if sess_options is not None else ort.SessionOptions()
    if _config_entry(so, _REGISTERED_KEY) != "1":
        so.register_custom_ops_library(custom_ops.library_path())
        so.add_session_config_entry(_REGISTERED_KEY, "1")
    if db is not None:
        database, _ = _open(db, strict=strict)
        if database is not None:
            registry.attach(database.model_id, database)
    return so


def _config_entry(so: ort.SessionOptions, key: str) -> str | None:
    """The value of a session config entry, or None if unset."""
    try:
        return so.get_session_config_entry(key)
    except Exception:  # noqa: BLE001 - onnxruntime raises a bare RuntimeError for a missing key
        return None


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` with attmemo's ops registered and a memo database attached.

    db: the database folder; None uses ``<model without .onnx>.memo/`` if it
    exists (only when the model is given by path). strict: whether a database
    that fails validation raises MemoDatabaseError (one sentence naming the
    file) or is logged, counted in ``refused_databases`` and left out, the
    session computing exactly; None means True for a ``db`` you give and False
    for one found beside the model.

    What it serves is the database's plan (the manifest's ``serving`` section, written by
    attmemo calibrate), run by the database's one executor (store/document_executor.py):
    the document key inside the model for any batch, as in a plain onnxruntime session,
    plus a faster door in ``run`` for one unpadded sequence (a hit runs a fed model that
    reads the stored attention in place; one fed model per tier of the plan, and one aligned
    fed model per tier for texts found after edits that shift positions when the database
    has a shift index; see attmemo.document_tier), and the per-layer learned-key lookups where the plan has them.
    With no database, or a plan that serves nothing, the model runs as the exact model (no
    Python op, no If). ``memo_status`` says what happened: "serving <db>: ...", "off: ...",
    "disabled: <reason>" or "no database".
    Accepts every argument onnxruntime's session does; the caller's
    SessionOptions are honoured (by the fed models' sessions too); with the
    document key, intra-op spinning is turned off unless they set it (see
    ``_no_spinning_unless_set``). Only ``run`` takes the fast door;
    ``run_with_ort_values`` and IO binding run the model, whose ops serve the same plan.

    admit=True (with ``db`` a new, empty or existing folder and ``max_db_bytes`` its byte
    budget): batch-1 texts ``run`` misses are stored as they are computed and served to later
    runs here and in other processes opening the folder; ``eviction`` ("lru", "lfu" or
    "random") chooses what goes when the budget is full. See attmemo.admitting.
    """

    def __init__(self, path_or_bytes, db: str | os.PathLike | None = None, *, strict: bool | None = None,
                 sess_options: ort.SessionOptions | None = None, admit: bool = False,
                 max_db_bytes: int | None = None, eviction: str = "lru", **kwargs):
        if isinstance(db, ort.SessionOptions):
            raise TypeError("attmemo.InferenceSession(path, db, ...): the second argument is the memo database "
                            "folder; pass SessionOptions as sess_options=.")
        session_errors.check_model_path(path_or_bytes)
        self._admitter = None   # admit=True: what runs a batch-1 miss and stores it (attmemo.admitting)
        if admit:
            admitting.check_arguments(db, max_db_bytes, eviction)
            admitting.prepare_folder(db, path_or_bytes, kwargs)
        if db is not None and strict is not False:
            session_errors.check_db_folder(db)
        found = db is None and isinstance(path_or_bytes, (str, os.PathLike)) and default_db_dir(path_or_bytes).is_dir()
        if found:
            db = default_db_dir(path_or_bytes)
        strict = not found if strict is None else strict
        self._memo: MemoDatabase | None = None
        self._documents = None   # the database's document executor, for run's batch-1 fast path
        self._fed: dict[document_tier.FedModel, ort.InferenceSession] = {}   # per fed model a hit runs
        database, self.memo_status = _open(db, strict=strict) if db is not None else (None, "no database")
        # Nothing served in the graph (no database, or one with no per-layer lookups and no
        # document key): run the exact model, which costs what the unmodified export costs.
        layers_off = database is None or (not database.thresholds and database.executor is None)
        model = rewritten_model_bytes(path_or_bytes, exact_model, variant="exact") if layers_off else None
        options = session_options(None, sess_options)
        if database is not None and database.document_serving is not None:
            _no_spinning_unless_set(options)
        with session_errors.model_errors(path_or_bytes):
            super().__init__(model or path_or_bytes, sess_options=options, **kwargs)
        if database is None:
            return
        # The model is compared with the database through the created session's metadata, not
        # by onnx.load before it: onnx.load parses every initializer in the file (0.10 s and
        # 90 MB more for MiniLM, whose session takes 0.24 s), get_modelmeta costs microseconds.
        # Nothing has run yet: the ops look the database up at run time, and it is attached below.
        problem = mismatch(database, self.get_modelmeta().custom_metadata_map)
        if problem is not None:
            self.memo_status = _refuse(db, MemoDatabaseError(problem), strict=strict)
            return
        self._memo = database
        self.memo_status = self._serve(db, database, path_or_bytes, options, kwargs, layers_off=layers_off,
                                       exact=model is not None)
        if admit and self._documents is None:   # only misses of the fast door may run the admitting model
            log.warning("%s: no batch-1 fast door (see the log above), so nothing is admitted", db)
        elif admit:
            self._admitter = admitting.admitter(database, path_or_bytes, options, kwargs, max_db_bytes=max_db_bytes,
                                                eviction=eviction, outputs=[o.name for o in self.get_outputs()])
            self.memo_status += f"; admitting within {max_db_bytes} bytes" if self._admitter else ""
        log.info("%s (model %s)", self.memo_status, database.model_id)

    def _serve(self, db, database: MemoDatabase, path_or_bytes, options, kwargs, *, layers_off: bool,
               exact: bool) -> str:
        """Set up what the database's ``serving`` asks for; return the session's status."""
        if layers_off:
            return (f"off: {db} serves no layer (attmemo calibrate found none where reuse pays); "
                    f"running the {'exact model' if exact else 'model without lookups'}")
        # The graph's ops (MemoGate, MemoLookup, MemoFetch) find the database under the model id.
        registry.attach(database.model_id, database)
        served = []
        if database.executor is not None:
            served.append(f"document key at {database.executor.plan.describe()}")
            if self._serve_documents(path_or_bytes, database, options, kwargs):
                served[-1] += " (batch 1 through fed models)"
        if database.thresholds:
            served.append("per-layer lookups")
        return f"serving {db}: {' and '.join(served)}"

    def _serve_documents(self, path_or_bytes, database: MemoDatabase, options: ort.SessionOptions, kwargs) -> bool:
        """Create the fed models' sessions of the batch-1 fast path; log if they cannot be."""
        for which in document_tier.fed_models(database.executor.plan, aligns=database.documents.aligns):
            fed = fed_model_bytes(path_or_bytes, which, database)
            if fed is None:
                return False
            try:
                self._fed[which] = ort.InferenceSession(fed, sess_options=options, **kwargs)
            except Exception as error:  # noqa: BLE001 - an optimisation: the model itself still serves
                log.warning("could not load the fed model (%s); serving the document key inside the model", error)
                self._fed.clear()
                return False
        self._documents = database.executor
        return True

    def run(self, output_names, input_feed, run_options=None):
        """``onnxruntime.InferenceSession.run``; a batch-1 document-key hit runs the fed model instead (same outputs)."""
        if self._documents is not None:
            found = document_tier.fast_path(self._documents, input_feed)
            if found is not None:
                which, fed = found
                return self._fed[which].run(output_names, fed, run_options)
        if self._admitter is not None:
            admitted = self._admitter.run(output_names, input_feed, run_options)
            if admitted is not None:
                return admitted
        return super().run(output_names, input_feed, run_options)

    def memo_flush(self) -> None:
        """Wait until every text this session admitted is on disk (admission writes in the background)."""
        if self._admitter is not None:
            self._admitter.store.flush()

    def memo_stats(self) -> dict[int, dict]:
        """{layer: {"lookups", "hits", "fallbacks", "lookup_seconds"}} of this session's database.

        {} without one (see ``memo_status`` for why). Counts sequences; shared
        with other sessions in the process that use the same database object.
        A document-key lookup counts in every layer it serves (its time split
        among them); a sequence it missed may be looked up again inside the model.
        """
        stats = self._memo.stats.snapshot() if self._memo is not None else {}
        if self._memo is not None and (admitted := admitting.stats(self._memo)) is not None:
            stats["admission"] = admitted   # {"admitted", "evicted", "entries", "bytes"}: store/admission.py
        return stats


_SPINNING = "session.intra_op.allow_spinning"


def _no_spinning_unless_set(options: ort.SessionOptions) -> None:
    """Turn intra-op spinning off in ``options`` unless the caller chose a setting.

    With the document key a session runs two or more onnxruntime sessions (the model and
    the fed models). Each has its own thread pool, and threads spinning idle in one steal the cores
    of the other: MiniLM at 256 tokens on 2 cores took 83-86 ms per run alternating between
    two spinning sessions, 44-46 ms with spinning off (41.5 ms for one session alone).
    """
    if _config_entry(options, _SPINNING) is None:
        options.add_session_config_entry(_SPINNING, "0")


def rewritten_model_bytes(path_or_bytes, rewrite: Callable[[object], object], *,
                          variant: str | None = None) -> bytes | None:
    """The model rewritten in place by ``rewrite`` (transforms.unfuse), or None if that cannot be done.

    exact_model: with nothing to serve, the rewritten model would still pay one Python gate
    call and an If per layer on every run: 4-9 % of MiniLM on 10-70 token texts. The exact
    model costs what the unmodified export costs. fed_model: what a batch-1 document-key hit
    runs. Each takes ~1.5 s at creation; with a ``variant`` naming the rewrite, a model given
    by path is rewritten once and then read from attmemo.model_cache.
    """
    from attmemo import model_cache

    try:
        cached = None
        if variant is not None and isinstance(path_or_bytes, (str, os.PathLike)):
            cached = model_cache.cache_path(path_or_bytes, variant)
            if (model := model_cache.load(cached)) is not None:
                return model
        import onnx
        import onnx_ir as ir

        if isinstance(path_or_bytes, (str, os.PathLike)):
            model = ir.load(path_or_bytes)
        else:
            model = ir.serde.deserialize_model(onnx.load_model_from_string(bytes(path_or_bytes)))
        rewrite(model)
        rewritten = ir.serde.serialize_model(model).SerializeToString()
        model_cache.store(cached, rewritten)
        return rewritten
    except Exception as error:  # noqa: BLE001 - an optimisation: the rewritten model is still exact
        log.warning("could not rewrite the model (%s: %s); serving it as it is", type(error).__name__, error)
        return None


def exact_model(model) -> None:
    from attmemo.transforms.unfuse import exact_model as rewrite
    rewrite(model)


def fed_model_bytes(path_or_bytes, which: document_tier.FedModel, database: MemoDatabase) -> bytes | None:
    """The fed model ``which`` (its layers, aligned or not) for ``database``'s values, as ``rewritten_model_bytes`` gives it."""
    codec = database.codec

    def rewrite(model) -> None:
        if which.aligned:
            from attmemo.transforms.aligned_feed import aligned_fed_model
            aligned_fed_model(model, which.layers, codec=codec)
        else:
            from attmemo.transforms.unfuse import fed_model
            fed_model(model, which.layers, codec)
    kind = "aligned" if which.aligned else "fed"
    return rewritten_model_bytes(path_or_bytes, rewrite, variant=f"{kind} {which.layers} {database.manifest.dtype}")


def private_model(model, model_id: str) -> None:
    from attmemo.transforms.unfuse import rename_model_id
    rename_model_id(model, model_id)


def _open(db, *, strict: bool) -> tuple[MemoDatabase | None, str]:
    """(database or None, status): "serving DB", or "disabled: <reason>" when not strict."""
    try:
        return _shared(Path(db)), f"serving {db}"
    except MemoDatabaseError as error:
        return None, _refuse(db, error, strict=strict)


# Weak: a database no session or registry entry uses any more is closed (its mappings freed).
_opened: weakref.WeakValueDictionary[tuple, MemoDatabase] = weakref.WeakValueDictionary()
_opened_lock = threading.Lock()


def _shared(folder: Path) -> MemoDatabase:
    """One MemoDatabase object per database folder and manifest version in the process.

    The op registry serves one object per model id, so sessions over the same
    folder must share it, or an earlier session's ``memo_stats()`` would read
    counters nobody updates. A rebuilt or recalibrated folder (a new manifest) is opened anew.
    """
    try:
        stat = admitting.version_file(folder).stat()
        version = (str(folder.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return MemoDatabase.open(folder)   # raises the one-sentence error for a missing database
    with _opened_lock:
        database = _opened.get(version)
        if database is None:
            database = _opened[version] = MemoDatabase.open(folder)
        return database


def _refuse(db, error: MemoDatabaseError, *, strict: bool) -> str:
    """Raise ``error`` if strict; otherwise log it (one line), count it and return the session's status."""
    if strict:
        raise error
    with _refused_lock:
        refused_databases[str(db)] += 1
    log.warning("memo database disabled, computing exactly: %s", error)
    return f"disabled: {error}"


def mismatch(database: MemoDatabase, metadata: dict[str, str]) -> str | None:
    """Why ``database`` cannot serve the model with this metadata, or None (one sentence)."""
    where = Path(database.folder) / MANIFEST
    model_id = metadata.get(MODEL_ID_KEY)
    if model_id != database.model_id:
        return (f"{where}: built for model {database.model_id}, but this model is {model_id}; "
                "rebuild the database for this model with attmemo build-db.")
    layers = metadata.get(LAYERS_KEY, "")
    if layers.isdecimal() and max(database.manifest.layers) >= int(layers):
        return (f"{where}: has layer {max(database.manifest.layers)}, but the model has {layers} "
                "MemoAttention layers; rebuild the database for this model with attmemo build-db.")
    return None
