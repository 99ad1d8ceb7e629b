"""Record a corpus on a Ray cluster: ``attmemo build-db --ray ADDRESS|local``.

Ray Data cuts the texts (TextToRecord, token ids made by the driver) into blocks;
a pool of ``_RecordTexts`` actors, one per worker, each holding one onnxruntime
session of one thread, records them with records.record_text; the records come
back to the driver in corpus order as Ray blocks (the shards), and build.py
writes them into the database exactly as it writes a local recording. So the
database equals the one-process build of the same corpus (tests/test_ray_build.py),
and only the driver writes files: the cluster needs no shared storage for the
database. The workers do open the model at the driver's path, so on several
machines put it on storage they all mount.

Columns of a recorded block, one row per text (layer numbers in the names):
``index`` int64, ``ids`` int64[n], ``augmented`` bool, ``edit_distances``
float32[layers] (nan unless augmented) and per layer ``probs.<layer>`` [H, n, n]
encoded, ``hidden.<layer>`` float32[n, D] and ``edited_hidden.<layer>`` float32[n', D]
(empty unless augmented). The workers return hidden states, not pooled key features:
pooling is a BLAS matrix product, whose rounding changes with the thread count (Ray
workers run OpenBLAS on one thread), so the driver pools, as the local build does.

Ray is optional (``pip install attmemo[ray]``) and imported here only, lazily.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from attmemo.store.manifest import MemoDatabaseError

from .recorder import Recorder, recording_graph
from .records import Recording, RecordSettings, TextRecord, TextToRecord, record_text

log = logging.getLogger(__name__)

LOCAL = "local"
TEXTS_PER_BLOCK = 4      # small blocks keep both workers busy to the end and the records streaming in order


def ray_recording(address: str, *, workers: int | None = None) -> Recording:
    """A recording (records.Recording) on the Ray cluster at ``address``, with ``workers`` onnxruntime sessions.

    ``address``: ``"local"`` starts Ray on this machine for the build (``workers`` CPUs, default every
    core); ``"auto"`` or ``host:port`` joins a running cluster (``workers`` default: one per CPU it has).
    If this process already runs Ray (``ray.init`` was called), that cluster is used. Raises
    MemoDatabaseError in one sentence if Ray is not installed or nothing answers at ``address``.
    """
    _import_ray()
    if workers is not None and workers < 1:
        raise MemoDatabaseError(f"{workers} Ray workers record nothing; give at least 1.")
    check_address(address)
    return functools.partial(_record_on_ray, address=address, workers=workers)


def check_address(address: str) -> None:
    """Raise MemoDatabaseError unless ``address`` is "local", "auto" or a host:port that accepts connections."""
    if address in (LOCAL, "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MemoDatabaseError(f"--ray {address!r} is not a Ray address; give HOST:PORT of the cluster's head "
                                "(ray start --head prints it), auto, or local.")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as error:
        raise MemoDatabaseError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one "
                                "with ray start --head there, or give --ray local.") from None


def _record_on_ray(model_path: Path, scratch: Path, texts: Iterable[TextToRecord], settings: RecordSettings, *,
                   address: str, workers: int | None) -> Iterator[TextRecord]:
    ray = _import_ray()
    recording_graph(model_path)     # a model no worker can record fails here, in one sentence, before Ray starts
    started = _connect(ray, address, workers)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if workers is not None and workers > cpus:
            raise MemoDatabaseError(f"{workers} Ray workers need {workers} CPUs and the cluster has {cpus}; "
                                    f"give --ray-workers {cpus} or fewer.")
        workers = workers or max(1, cpus)
        items = [{"index": t.index, "ids": t.ids, "augmented": t.augmented} for t in texts]
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True     # records must reach the writer in corpus order
        context.enable_progress_bars = False                 # the build reports its own progress
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        blocks = min(len(items), max(2 * workers, math.ceil(len(items) / TEXTS_PER_BLOCK)))
        recorded = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _RecordTexts, fn_constructor_kwargs={"model_path": str(Path(model_path).resolve()), "settings": settings},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)
        log.info("recording %d texts on %d Ray workers", len(items), workers)
        for batch in _unwrapped_errors(ray, recorded.iter_batches(batch_size=None, batch_format="numpy")):
            yield from _records(batch)
    finally:
        if started:
            ray.shutdown()


class _RecordTexts:
    """One Ray Data actor: one recording session of one thread; records a batch of texts into columns."""

    def __init__(self, model_path: str, settings: RecordSettings):
        scratch = Path(tempfile.mkdtemp(prefix="attmemo-ray-record-"))
        try:
            self._recorder = Recorder(Path(model_path), scratch, threads=1)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)    # the session has read the recording model
        self._settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [record_text(self._recorder, TextToRecord(int(i), np.asarray(ids, np.int64), bool(a)),
                               self._settings)
                   for i, ids, a in zip(batch["index"], batch["ids"], batch["augmented"])]
        return _columns(records)


def _columns(records: list[TextRecord]) -> dict[str, np.ndarray]:
    layers = sorted(records[0].probs)
    columns = {"index": np.array([r.index for r in records], np.int64), "ids": _ragged([r.ids for r in records]),
               "augmented": np.array([r.edited_hidden is not None for r in records]),
               "edit_distances": np.stack([r.edit_distances if r.edit_distances is not None
                                           else np.full(len(layers), np.nan, np.float32) for r in records])}
    for layer in layers:
        columns[f"probs.{layer}"] = _ragged([r.probs[layer] for r in records])
        columns[f"hidden.{layer}"] = _ragged([r.hidden[layer] for r in records])
        columns[f"edited_hidden.{layer}"] = _ragged([
            r.edited_hidden[layer] if r.edited_hidden is not None else np.zeros((0, 0), np.float32) for r in records])
    return columns


def _records(batch: dict[str, np.ndarray]) -> Iterator[TextRecord]:
    """The TextRecords of one recorded block (the inverse of _columns)."""
    layers = sorted(int(name.split(".")[1]) for name in batch if name.startswith("probs."))
    for j in range(len(batch["index"])):
        augmented = bool(batch["augmented"][j])
        yield TextRecord(
            index=int(batch["index"][j]), ids=np.asarray(batch["ids"][j], np.int64),
            probs={layer: np.asarray(batch[f"probs.{layer}"][j]) for layer in layers},
            hidden={layer: np.asarray(batch[f"hidden.{layer}"][j]) for layer in layers},
            edited_hidden={layer: np.asarray(batch[f"edited_hidden.{layer}"][j]) for layer in layers}
            if augmented else None,
            edit_distances=np.asarray(batch["edit_distances"][j], np.float32) if augmented else None)


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of arrays of different shapes (Ray stores it as a variable-shaped tensor column)."""
    column = np.empty(len(arrays), object)
    column[:] = arrays
    return column


def _connect(ray, address: str, workers: int | None) -> bool:
    """Join or start Ray; return whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == LOCAL:
            ray.init(num_cpus=workers, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MemoDatabaseError(f"could not join the Ray cluster at {address} ({reason}); check --ray.") from None
    return True


# The last line of a worker's traceback, as Ray's error messages carry it.
_USER_ERROR = re.compile(r"^(?:attmemo\.store\.manifest\.MemoDatabaseError|ValueError|FileNotFoundError): (.+)$",
                         re.M)


def _unwrapped_errors(ray, batches):
    """``batches``, with an error a worker raised for the user (its model file missing on that node,
    say) re-raised in one sentence; Ray's own errors pass unchanged."""
    try:
        yield from batches
    except ray.exceptions.RayError as error:
        found = _USER_ERROR.findall(str(error))
        if not found:
            raise
        raise MemoDatabaseError(f"a Ray worker failed: {found[-1].strip()}") from None


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MemoDatabaseError("building on Ray needs Ray, which is not installed; "
                                "install it with pip install attmemo[ray].") from None
    return ray
