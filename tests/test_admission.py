"""Admission from traffic: texts the document key missed are stored as they run, within a byte budget.

On the tiny bert (MemoAttention export) and real files: a missed text is admitted and then
reused, here and in another process; a near duplicate reuses its attention exactly as the
fed model given that attention computes; the folder never exceeds its budget and keeps
what is reused; processes killed by SIGKILL while admitting or evicting leave a store that
opens and serves; two processes admitting into one folder both end up readable.
"""

from __future__ import annotations

import json
import os
import threading
import time
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import attmemo
from attmemo.store import MemoDatabase
from attmemo.store.layout import ADMITTED_DIR, ADMITTED_TEMPORARY
from attmemo.transforms.names import fed_input

from conftest import TINY_CORPUS


def _ids(seed: int, n: int = 14) -> np.ndarray:
    """A random text of n tokens ([CLS] ... [SEP] of the tiny vocabulary): no near duplicate of another seed's."""
    ids = np.random.default_rng(seed).integers(5, 200, n)
    ids[0], ids[-1] = 2, 3
    return ids.astype(np.int64)


def _feed(ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = ids[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _hits(session) -> list[int]:
    return [entry["hits"] for layer, entry in sorted((k, v) for k, v in session.memo_stats().items()
                                                     if isinstance(k, int))]


def _bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _admitting(model, folder, budget=10**6, **kwargs):
    return attmemo.InferenceSession(str(model), db=folder, admit=True, max_db_bytes=budget, **kwargs)


@pytest.fixture(scope="module")
def model(tiny_db):
    return tiny_db[0]


@pytest.fixture(scope="module")
def fed(model):
    """The fed model of both layers (what a hit runs), for computing reuse independently of the store."""
    from attmemo.session import rewritten_model_bytes
    from attmemo.store.values import codec
    from attmemo.transforms.unfuse import fed_model
    return ort.InferenceSession(rewritten_model_bytes(model, lambda m: fed_model(m, (0, 1), codec("float32"))))


@pytest.fixture(scope="module")
def recorder(model, tmp_path_factory):
    from attmemo.builder.recorder import Recorder
    return Recorder(model, tmp_path_factory.mktemp("recorder"))


# ---- a subprocess that opens a folder, runs texts and may be killed at a named point ------------
_CHILD = """
import json, os, sys, time
import numpy as np
import attmemo
args = json.loads(sys.argv[1])
while args["start"] and not os.path.exists(args["start"]):   # a barrier, so two children admit at once
    time.sleep(0.001)
kwargs = {"admit": True, "max_db_bytes": args["budget"]} if args["admit"] else {}
session = attmemo.InferenceSession(args["model"], db=args["folder"], **kwargs)
outputs = []
for ids in args["texts"]:
    ids = np.array([ids], np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    outputs.append(session.run(None, feed)[0].tolist())
session.memo_flush()
stats = session.memo_stats()
print(json.dumps({"hits": stats[0]["hits"], "admission": stats.get("admission"), "outputs": outputs}))
"""


def _child(model, folder, texts, *, admit=True, budget=10**6, kill_at=None, wait=True, start=None):
    env = dict(os.environ)
    if kill_at:
        env["ATTMEMO_TEST_KILL_AT"] = kill_at
    args = json.dumps({"model": str(model), "folder": str(folder), "texts": [t.tolist() for t in texts],
                       "admit": admit, "budget": budget, "start": str(start) if start else None})
    process = subprocess.Popen([sys.executable, "-c", _CHILD, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd="/")
    if not wait:
        return process
    out, err = process.communicate(timeout=120)
    return process.returncode, (json.loads(out) if process.returncode == 0 else err)


# ---- admission -------------------------------------------------------------------------------
def test_a_missed_text_is_admitted_then_reused_here_by_near_duplicates_and_in_another_process(
        model, exact, fed, recorder, tmp_path):
    folder = tmp_path / "new-store"
    session = _admitting(model, folder)
    assert "document key at 0.9 on layers 0,1" in session.memo_status and "admitting" in session.memo_status
    text = _ids(1)
    first = session.run(None, _feed(text))[0]
    np.testing.assert_array_equal(first, exact.run(None, _feed(text))[0])   # a miss computes exactly
    assert _hits(session) == [0, 0]
    # Reused at once, served from memory while the writer may still be putting it on disk.
    np.testing.assert_allclose(session.run(None, _feed(text))[0], first, atol=1e-5)
    session.memo_flush()
    assert session.memo_stats()["admission"]["admitted"] == 1
    edited = text.copy()
    edited[5] = edited[6]                                   # 13 of 14 positions equal: 0.93 >= 0.9
    reused = session.run(None, _feed(edited))[0]
    assert _hits(session) == [2, 2] and session.memo_stats()["admission"]["entries"] == 1
    stored = recorder.run(text)
    feed = {**_feed(edited), **{fed_input(k): stored[k][1][None] for k in (0, 1)}}
    np.testing.assert_allclose(reused, fed.run(None, {k: v for k, v in feed.items()
                                                      if k in {i.name for i in fed.get_inputs()}})[0], atol=1e-5)
    assert not np.allclose(reused, exact.run(None, _feed(edited))[0], atol=1e-4), "the stored attention was reused"

    plain = ort.InferenceSession(str(model), attmemo.session_options(db=folder))   # serves, inside the graph
    np.testing.assert_allclose(plain.run(None, _feed(edited))[0], reused, atol=1e-5)
    assert _hits(session) == [3, 3]

    status, result = _child(model, folder, [text, edited], admit=False)
    assert status == 0, result
    assert result["hits"] == 2 and result["admission"]["entries"] == 1
    np.testing.assert_allclose(np.array(result["outputs"][1]), reused, atol=1e-5)


def test_a_built_database_admits_beside_its_texts_and_a_live_reader_sees_the_commit(documents_only, tokenizer,
                                                                                  tmp_path):
    model, db = documents_only
    reader = attmemo.InferenceSession(str(model), db=db)       # opened before anything was admitted
    built = np.asarray(tokenizer(TINY_CORPUS[0])["input_ids"], np.int64)
    status, result = _child(model, db, [_ids(2), built], budget=_bytes_on_disk(db) + 10**5)
    assert status == 0, result
    assert result["admission"]["admitted"] == 1 and result["hits"] == 1, "a built text hits, not admitted again"
    reader.run(None, _feed(_ids(2)))
    assert _hits(reader) == [1, 1], "the other process's commit reached a session opened before it"


def test_bad_admission_arguments_are_one_sentence(model, documents_only, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="admit=True needs max_db_bytes"):
        attmemo.InferenceSession(str(model), db=tmp_path / "s", admit=True)
    with pytest.raises(ValueError, match="admit=True needs db=FOLDER"):
        attmemo.InferenceSession(str(model), admit=True, max_db_bytes=10**6)
    with pytest.raises(ValueError, match="eviction='oldest': use one of lru, lfu, random"):
        _admitting(model, tmp_path / "s", eviction="oldest")
    _, db = documents_only
    with pytest.raises(ValueError, match=r"max_db_bytes=1000 leaves no room to admit: .* already takes \d+ bytes"):
        _admitting(model, db, budget=1000)
    with pytest.raises(attmemo.MemoDatabaseError, match="is not a MemoAttention model"):
        _admitting(tiny_model("bert")[1], tmp_path / "plain")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(attmemo.MemoDatabaseError, match="holds other files and is no attmemo database"):
        _admitting(model, tmp_path / "other")


# ---- budget and eviction ---------------------------------------------------------------------
def _entry_bytes(folder: Path) -> int:
    return next((folder / ADMITTED_DIR).glob("*.entry")).stat().st_size


def test_the_folder_never_exceeds_its_budget_and_keeps_the_text_that_is_reused(model, tmp_path):
    folder = tmp_path / "store"
    session = _admitting(model, folder)
    session.run(None, _feed(_ids(100)))
    session.memo_flush()
    # Room for 3 entries of 14 tokens (and the generation file's reserve), not 4.
    budget = _bytes_on_disk(folder) + 2 * _entry_bytes(folder) + 40
    session = _admitting(model, tmp_path / "budgeted", budget=budget)
    favourite = _ids(0)
    for seed in range(1, 12):
        for text in (favourite, _ids(seed)):
            session.run(None, _feed(text))
            session.memo_flush()
            assert _bytes_on_disk(tmp_path / "budgeted") <= budget
    admission = session.memo_stats()["admission"]
    assert admission["admitted"] == 12 and admission["evicted"] == 9 and admission["entries"] == 3
    assert admission["bytes"] == _bytes_on_disk(tmp_path / "budgeted")
    assert _hits(session) == [10, 10], "the favourite was admitted once and reused every time after"


def test_a_text_longer_than_the_budget_allows_is_served_but_not_admitted(model, exact, tmp_path, caplog):
    session = _admitting(model, tmp_path / "store", budget=4000)
    text = _ids(3, n=30)
    np.testing.assert_array_equal(session.run(None, _feed(text))[0], exact.run(None, _feed(text))[0])
    assert session.memo_stats()["admission"]["admitted"] == 0
    assert "a text of 30 tokens needs more than max_db_bytes=4000" in caplog.text


# ---- crashes and concurrency -----------------------------------------------------------------
# (where the child is killed, whether its admission had to evict ``kept`` first)
KILL_POINTS = [("evicting", True),       # after unlinking an evicted entry, before announcing it
               ("before-write", True),   # evictions done, the new entry not written yet
               ("writing", False),       # half the new entry written under its temporary name
               ("committed", False)]     # renamed into place, not announced to readers yet


@pytest.mark.parametrize("point, evicts", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_a_process_killed_while_admitting_or_evicting_leaves_a_store_that_opens_and_serves(model, exact, tmp_path,
                                                                                          point, evicts):
    folder = tmp_path / "store"
    kept = _ids(10)
    first = _admitting(model, folder)
    first.run(None, _feed(kept))
    first.memo_flush()
    # Full (40: the generation file's reserve): the next admission must evict ``kept`` first.
    budget = _bytes_on_disk(folder) + 40 if evicts else 10**6
    status, output = _child(model, folder, [_ids(11)], budget=budget, kill_at=point)
    assert status == -signal.SIGKILL, output

    fresh = MemoDatabase.open(folder)          # opens, whatever the kill left
    assert (fresh.documents.nearest(kept.astype(np.int32)) is None) == evicts, "kept is whole, or evicted"
    reader = attmemo.InferenceSession(str(model), db=folder)   # the live object that admitted kept
    out = reader.run(None, _feed(kept))[0]
    if evicts:
        assert _hits(reader) == [0, 0], "its file is gone: a miss, computed exactly"
        np.testing.assert_array_equal(out, exact.run(None, _feed(kept))[0])
    else:
        assert _hits(reader) == [1, 1]
    after = _admitting(model, folder, budget=budget)
    before = (_hits(after)[0], after.memo_stats()["admission"]["admitted"])
    after.run(None, _feed(_ids(12)))
    after.run(None, _feed(_ids(12)))
    after.memo_flush()
    assert (_hits(after)[0], after.memo_stats()["admission"]["admitted"]) == (before[0] + 1, before[1] + 1)
    assert not [p for p in (folder / ADMITTED_DIR).iterdir() if p.name.startswith(ADMITTED_TEMPORARY)]
    assert _bytes_on_disk(folder) <= budget


def test_two_processes_admitting_into_one_folder_leave_both_sets_readable(model, tmp_path):
    folder = tmp_path / "store"
    _admitting(model, folder)                                  # creates the store once
    sets = [[_ids(200 + i) for i in range(8)], [_ids(300 + i) for i in range(8)]]
    children = [_child(model, folder, texts, wait=False) for texts in sets]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert json.loads(out)["admission"]["admitted"] == 8
    status, result = _child(model, folder, sets[0] + sets[1], admit=False)
    assert status == 0, result
    assert result["hits"] == 16 and result["admission"]["entries"] == 16


def test_two_processes_admitting_at_once_into_a_full_folder_stay_within_its_budget(model, tmp_path):
    folder = tmp_path / "store"
    first = _admitting(model, folder)
    first.run(None, _feed(_ids(400)))
    first.memo_flush()
    budget = _bytes_on_disk(folder) + 11 * _entry_bytes(folder) + 40          # 12 entries
    start, peak, done = tmp_path / "start", [0], threading.Event()

    def watch():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _bytes_on_disk(folder))
            except FileNotFoundError:      # a file went between listing and stat
                pass
    watcher = threading.Thread(target=watch)
    watcher.start()
    children = [_child(model, folder, [_ids(500 + 100 * c + i) for i in range(30)], budget=budget, wait=False,
                       start=start) for c in range(2)]
    time.sleep(0.5)
    start.touch()
    try:
        results = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            results.append(json.loads(out)["admission"])
    finally:
        done.set()
        watcher.join()
    assert peak[0] <= budget and _bytes_on_disk(folder) <= budget
    assert [r["admitted"] for r in results] == [30, 30] and sum(r["evicted"] for r in results) == 61 - 12
    entries = sorted((folder / ADMITTED_DIR).glob("*.entry"))
    assert len(entries) == 12
    fresh = MemoDatabase.open(folder)
    assert fresh.documents.admitted.stats()["entries"] == 12, "every entry on disk is whole and readable"
