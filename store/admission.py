"""Texts admitted from traffic: an appendable segment of a database folder, within a byte budget.

    admitted/<name>.entry   one text: header, its token ids, then per layer [H, n, n] attention
    admitted/generation     replaced after every commit or eviction (readers stat it per run)
    admitted/store.json     model id, heads and codec, for a folder that has no build
    admitted/.lock          held (filelock) by the one process admitting or evicting

Found by the one document executor: the folder's DocumentIndex consults this segment
(documents.py) and a match in it has bucket ADMITTED_BUCKET, whose rows MemoDatabase hands
here for delivery (``fed``, ``as_float``). Another process's commits reach this one when its
generation file changes: one os.stat per lookup (~1 us), a directory listing when it did.

Writing. ``admit`` makes a text reusable in this process at once (served from the run's own
arrays) and hands it to a background writer: creating the file costs as much as the run.

Crash safety. An entry is written whole under a temporary name, then renamed: a text is in
the store entirely or not at all. Eviction unlinks whole entries. So a process killed by
SIGKILL at any point leaves only (a) a temporary file, removed by the next admission, or (b)
a change the generation file does not announce yet, which new openers see and running
readers pick up at the next announced change; a reader whose match was evicted meanwhile
treats it as a miss. Written files are not fsynced: this survives killed processes, not
power loss; a text still waiting for the writer is simply not kept. Two processes admitting into one folder serialise on the lock (flock: released
by the kernel when a holder dies) and each re-reads the folder under it.

Budget. Bytes on disk (sizes of the built database's files + everything under admitted/)
never exceed ``max_db_bytes``: before writing an entry, entries are evicted, least recently
used first (cachetools keeps the order: a hit counts as a use), until it fits. The order is the
admitting process's own: texts another process committed count as used when this one first sees
them. Opening a folder reads every entry's header (one small read per admitted text).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import signal
import struct
import threading
from collections import Counter
from pathlib import Path

import cachetools
import filelock
import numpy as np

from . import admitted_entry
from .admitted_index import AdmittedIndex
from .layout import (ADMITTED_DESCRIPTOR, ADMITTED_DIR, ADMITTED_GENERATION, ADMITTED_LOCK, ADMITTED_SUFFIX,
                     ADMITTED_TEMPORARY)
from .values import codec as value_codec

log = logging.getLogger(__name__)

_GENERATION_RESERVE = 32     # the generation file's bytes, counted in the budget before it exists
_MAX_MAPS = 256              # mapped entries kept open: each mapping holds a file descriptor
LOCK_SECONDS = 10.0         # an admission waits this long for another process's, then is skipped
_QUEUE = 4                   # texts waiting for the writer (MiniLM at 256 tokens: 19 MB each in memory)
EVICTION = {"lru": cachetools.LRUCache, "lfu": cachetools.LFUCache, "random": cachetools.RRCache}
# Tests name a point here; the process then kills itself there with SIGKILL (tests/test_admission.py).
_KILL_AT = os.environ.get("ATTMEMO_TEST_KILL_AT")


def _crash_point(name: str) -> None:
    if _KILL_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


class AdmittedStore:
    """The admitted segment of one folder. Thread-safe. Reads always; admits once ``enable``d."""

    def __init__(self, folder: Path, *, model_id: str, heads: dict[int, int], dtype: str, min_share: float,
                 base_bytes: int):
        """heads: {layer: H} every entry stores; min_share: the lowest similarity the plan serves;
        base_bytes: what the built database's files take on disk (counted in the budget)."""
        self.folder, self.dir = Path(folder), Path(folder) / ADMITTED_DIR
        self.model_id, self.heads, self.dtype = model_id, dict(heads), dtype
        self.storage = value_codec(dtype).storage
        self.base_bytes = base_bytes
        self.budget: int | None = None
        self.index = AdmittedIndex(min_share)
        self._entries: dict[int, admitted_entry.Entry] = {}
        self._rows: dict[str, int] = {}               # file name -> row
        self._next_row = 0
        self._uses = EVICTION["lru"](maxsize=math.inf)
        self._maps = cachetools.LRUCache(maxsize=_MAX_MAPS)
        self._lock = threading.RLock()
        self._file_lock = filelock.FileLock(str(self.folder / ADMITTED_LOCK), timeout=LOCK_SECONDS)
        self._seen: tuple | None = None
        self._queue: queue.Queue[int] = queue.Queue(maxsize=_QUEUE)
        self._writer: threading.Thread | None = None
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._refresh(force=True)

    # ---- reading -----------------------------------------------------------------------
    def nearest(self, ids_n: np.ndarray) -> tuple[int, float] | None:
        """(row, share of equal positions) of the best admitted text at >= the plan's threshold, or None.

        A match counts as a use (eviction keeps what is used). One whose file another process
        evicted since this one last looked is dropped: a miss, never an error.
        """
        with self._lock:
            self._refresh()
            found = self.index.nearest(ids_n)
            if found is None:
                return None
            if self._entries[found[0]].pending is None and self._mapped(found[0]) is None:
                self._forget(found[0])
                return None
            self._uses.get(found[0])     # touch: LRU moves it last, LFU counts it
            return found

    def fed(self, layer: int, row: int, n: int, out_1Hnn: np.ndarray) -> np.ndarray:
        """[1, H, n, n] of ``row`` as the fed model reads it: in place for float32/float16, else widened."""
        block = self._block(layer, row, n)
        if block.dtype == out_1Hnn.dtype:
            return block
        np.copyto(out_1Hnn, block)
        return out_1Hnn

    def as_float(self, layer: int, row: int, n: int, out_1Hnn: np.ndarray) -> np.ndarray:
        block = self._block(layer, row, n)
        if block.dtype == np.float32:
            return block
        value_codec(self.dtype).decode(block, out_1Hnn)
        return out_1Hnn

    def _block(self, layer: int, row: int, n: int) -> np.ndarray:
        with self._lock:
            entry = self._entries[row]
            pending = entry.pending
            rows = self._mapped(row) if pending is None else None
        if entry.n != n or (rows is None and pending is None):
            raise LookupError(f"admitted entry {entry.name} is gone or is not {n} tokens long")
        if pending is not None:
            return pending[layer][None]
        start = sum(h * n * n for k, h in sorted(entry.heads.items()) if k < layer)
        return rows[start:start + entry.heads[layer] * n * n].reshape(1, entry.heads[layer], n, n)

    def _mapped(self, row: int) -> np.ndarray | None:
        rows = self._maps.get(row)
        if rows is None:
            entry = self._entries[row]
            try:
                rows = np.memmap(self.dir / entry.name, dtype=self.storage, mode="r", offset=entry.offset,
                                 shape=((entry.size - entry.offset) // self.storage.itemsize,))
            except (OSError, ValueError):
                return None
            self._maps[row] = rows
        return rows

    def _refresh(self, *, force: bool = False) -> None:
        """Take in what other processes committed or evicted, if the generation file says anything changed."""
        stamp = _stamp(self.folder / ADMITTED_GENERATION)
        if stamp == self._seen and not force:
            return
        self._seen = stamp
        try:
            names = {p for p in os.listdir(self.dir) if p.endswith(ADMITTED_SUFFIX)}
        except FileNotFoundError:
            names = set()
        for name in set(self._rows) - names:
            self._forget(self._rows[name])
        for name in sorted(names - set(self._rows)):
            self._load(name)

    def _load(self, name: str) -> None:
        try:
            entry, ids = admitted_entry.read(self.dir / name, model_id=self.model_id, dtype=self.dtype,
                                             heads=self.heads)
        except FileNotFoundError:
            return                       # evicted while we listed
        except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
            self._log_once("unreadable", f"{self.dir / name}: not a readable admitted entry ({error}); skipped")
            return
        row, self._next_row = self._next_row, self._next_row + 1
        self._entries[row], self._rows[name] = entry, row
        self.index.add(row, ids)
        self._uses[row] = entry.size

    def _forget(self, row: int) -> None:
        entry = self._entries.pop(row, None)
        if entry is not None:
            self._rows.pop(entry.name, None)
        self.index.remove(row)
        self._uses.pop(row, None)
        self._maps.pop(row, None)

    # ---- admitting ---------------------------------------------------------------------
    def enable(self, *, max_db_bytes: int, eviction: str = "lru") -> None:
        """Admit from now on, keeping the folder within ``max_db_bytes``; raise ValueError (one sentence) if it cannot."""
        if eviction not in EVICTION:
            raise ValueError(f"eviction={eviction!r}: use one of {', '.join(EVICTION)}.")
        if not (isinstance(max_db_bytes, int) and not isinstance(max_db_bytes, bool) and max_db_bytes > 0):
            raise ValueError(f"max_db_bytes={max_db_bytes!r}: give the folder's byte budget as a positive integer.")
        floor = self.base_bytes + self._overhead()
        if max_db_bytes <= floor:
            raise ValueError(f"max_db_bytes={max_db_bytes} leaves no room to admit: {self.folder} already takes "
                             f"{floor} bytes; give a larger budget.")
        with self._lock:
            self.budget = max_db_bytes
            if not isinstance(self._uses, EVICTION[eviction]):
                uses, self._uses = self._uses, EVICTION[eviction](maxsize=math.inf)
                for row in uses:
                    self._uses[row] = self._entries[row].size

    def accepts(self, n: int) -> bool:
        """Whether a text of ``n`` tokens would be admitted: admitting is on and one such text fits the budget.

        The admission policy. What reaches it already missed the document key (a text
        that matched a stored one is served, not stored twice).
        """
        if self.budget is None or n < 1:
            return False
        if self.base_bytes + self._overhead() + admitted_entry.entry_bytes(self._header(n)) > self.budget:
            self._log_once(f"too-long-{n}", f"a text of {n} tokens needs more than max_db_bytes={self.budget} "
                                            "leaves for admitted texts; such texts are not admitted")
            return False
        return True

    def admit(self, ids_n: np.ndarray, probs: dict[int, np.ndarray]) -> bool:
        """Admit one text: int[n] ids and {layer: [H, n, n] in the store's dtype}. False if skipped.

        Served from memory at once (this process); written to disk by a background writer,
        because creating a file of a MiniLM text's attention (19 MB at 256 tokens) cost
        6-100 ms here, as much as the run itself. With ``_QUEUE`` texts waiting to be written
        it waits for the writer (memory stays bounded when misses come faster than the disk).
        Raises ValueError for attention of the wrong shape (the caller logs it).
        """
        ids_n = np.ascontiguousarray(ids_n, np.int32)
        n = len(ids_n)
        if not self.accepts(n):
            return False
        blocks = {layer: np.ascontiguousarray(probs[layer], self.storage).reshape(self.heads[layer], n, n)
                  for layer in sorted(self.heads)}
        with self._lock:
            self._refresh()
            if self.index.nearest(ids_n) is not None:
                return False                  # admitted meanwhile (another thread or process)
            row, self._next_row = self._next_row, self._next_row + 1
            self._entries[row] = admitted_entry.pending_entry(ids_n, blocks, self._header(n))
            self.index.add(row, ids_n)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="attmemo-admission", daemon=True)
                self._writer.start()
                atexit.register(self.flush)
        self._queue.put(row)
        return True

    def flush(self) -> None:
        """Wait until every text admitted so far is on disk (or failed, logged)."""
        self._queue.join()

    def _write_queued(self) -> None:
        while True:
            row = self._queue.get()
            try:
                self._persist(row)
            except Exception as error:  # noqa: BLE001 - a background thread: log, drop the text, go on
                self._log_once(type(error).__name__, f"could not write an admitted text into {self.dir} "
                                                     f"({type(error).__name__}: {error}); it is not kept")
                with self._lock:
                    self._forget(row)
            finally:
                self._queue.task_done()

    def _persist(self, row: int) -> None:
        """Write ``row``'s pending text under the folder lock: refresh, evict to fit, write, rename, announce."""
        try:
            with self._file_lock:
                with self._lock:
                    entry = self._entries.get(row)
                    if entry is None or entry.pending is None:
                        return
                    self._refresh(force=True)
                    self._remove_temporaries()
                    self._evict_for(entry.size)
                _crash_point("before-write")
                name = self._write(entry.ids, entry.pending, self._header(entry.n))
                with self._lock:
                    self._announce()
                    entry.name, entry.pending, entry.ids = name, None, None
                    self._rows[name] = row
                    self._uses[row] = entry.size
                    self.counts["admitted"] += 1
        except filelock.Timeout:
            self._log_once("lock", f"{self.folder / ADMITTED_LOCK}: held by another process for over "
                                   f"{LOCK_SECONDS:g} s; a text was not admitted")
            with self._lock:
                self._forget(row)

    def _header(self, n: int) -> dict:
        return admitted_entry.header(n, self.heads, self.dtype, self.model_id)

    def _evict_for(self, size: int) -> None:
        while len(self._uses) and self.base_bytes + self._overhead() + self._used() + size > self.budget:
            row, _ = self._uses.popitem()
            entry = self._entries[row]
            try:
                os.unlink(self.dir / entry.name)
            except FileNotFoundError:
                pass
            self._forget(row)
            self.counts["evicted"] += 1
            _crash_point("evicting")

    def _write(self, ids_n: np.ndarray, blocks: dict[int, np.ndarray], head: dict) -> str:
        """Write one entry under a temporary name, then rename it into place; return its file name."""
        name = f"{os.getpid()}-{os.urandom(6).hex()}{ADMITTED_SUFFIX}"
        temporary = self.dir / f"{ADMITTED_TEMPORARY}{name}"
        admitted_entry.write(temporary, ids_n, blocks, head, after_layer=lambda: _crash_point("writing"))
        os.replace(temporary, self.dir / name)
        _crash_point("committed")
        return name

    def _announce(self) -> None:
        """Replace the generation file, so readers in other processes look again."""
        path = self.folder / ADMITTED_GENERATION
        try:
            generation = int(path.read_text()) + 1
        except (OSError, ValueError):
            generation = 1
        temporary = self.dir / f"{ADMITTED_TEMPORARY}generation-{os.getpid()}"
        temporary.write_text(str(generation))
        os.replace(temporary, path)
        self._seen = _stamp(path)

    def _remove_temporaries(self) -> None:
        """Writes left by killed processes (under the lock, nobody else is writing)."""
        for name in os.listdir(self.dir):
            if name.startswith(ADMITTED_TEMPORARY):
                try:
                    os.unlink(self.dir / name)
                    log.info("removed %s, left by an interrupted admission", self.dir / name)
                except FileNotFoundError:
                    pass

    def _used(self) -> int:
        """Bytes of the entries on disk (not those still pending)."""
        return sum(entry.size for entry in self._entries.values() if entry.pending is None)

    def _overhead(self, *, reserve: bool = True) -> int:
        """Bytes of the small files; ``reserve``: the generation file's at most, before it is rewritten."""
        sizes = [_size(self.folder / ADMITTED_DESCRIPTOR), _size(self.folder / ADMITTED_GENERATION)]
        return sizes[0] + (max(sizes[1], _GENERATION_RESERVE) if reserve else sizes[1])

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("%s (logged once)", message)

    def stats(self) -> dict | None:
        """{"admitted" (written), "evicted": by this process;
        "entries" (with those still being written), "bytes": the folder's on disk now (built + admitted)}.

        None while the folder has no admitted segment.
        """
        if not has_segment(self.folder):
            return None
        with self._lock:
            self._refresh()
            return {"admitted": self.counts["admitted"], "evicted": self.counts["evicted"],
                    "entries": len(self._entries),
                    "bytes": self.base_bytes + self._overhead(reserve=False) + self._used()}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _stamp(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def has_segment(folder: Path) -> bool:
    return (Path(folder) / ADMITTED_DIR).is_dir()

