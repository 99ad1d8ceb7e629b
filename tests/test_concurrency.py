"""Serving from one memo database concurrently gives what one thread gets.

Over the tiny bert's database: threads with a session each, threads sharing one
session, and two processes at once run the same requests (corpus members, which
hit; texts the corpus never had, which miss; padded batches of both). Every
output must equal the single-threaded one bit for bit, and the hit counters
must add up to the single-threaded counts. Every wait is bounded, so a deadlock
fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest

import attmemo
from attmemo.custom_ops import registry
from attmemo.export.memo_export import tokenizer_dir_for
from attmemo.store import MemoDatabase
from conftest import TINY_CORPUS

MAX_LENGTH = 32
MEMBERS = [TINY_CORPUS[i] for i in (0, 5, 10, 15)]
OTHERS = ["music film world city sport business", "memo query key value token softmax"]
BATCHES = [[MEMBERS[0], OTHERS[0]], [TINY_CORPUS[1], TINY_CORPUS[14]], [TINY_CORPUS[2], TINY_CORPUS[13]]]
# Hits per layer (2 layers) each request makes: a member hits in every layer, a batch once per member.
HITS = [[1, 1]] * len(MEMBERS) + [[0, 0]] * len(OTHERS) + [[1, 1], [2, 2], [2, 2]]
THREADS = 4
ROUNDS = 10        # each thread runs every request this many times, in its own order
TIMEOUT = 120      # seconds; the runs themselves take about one


@pytest.fixture(scope="module")
def requests(tiny_db) -> list[dict[str, np.ndarray]]:
    """Feeds of every request: one text each, then the right-padded batches."""
    import onnx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir_for(tiny_db[0])))
    names = {i.name for i in onnx.load(tiny_db[0], load_external_data=False).graph.input}
    texts = [[t] for t in MEMBERS + OTHERS] + BATCHES
    feeds = [tokenizer(t, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np") for t in texts]
    return [{k: v.astype(np.int64) for k, v in feed.items() if k in names} for feed in feeds]


@pytest.fixture(scope="module")
def single_thread(tiny_db, requests) -> list[np.ndarray]:
    """The outputs of one thread running each request once; checks each request's hits against HITS."""
    session = attmemo.InferenceSession(str(tiny_db[0]), db=tiny_db[1])
    outputs = []
    for feed, hits in zip(requests, HITS):
        before = _hits([session])
        outputs.append(session.run(None, feed)[0])
        assert [a - b for a, b in zip(_hits([session]), before)] == hits
    registry.detach(session._memo.model_id)
    return outputs


@pytest.fixture(autouse=True)
def _detach(tiny_db):
    """Sessions attach the database process-wide; leave no attachment to later tests."""
    yield
    registry.detach(MemoDatabase.open(tiny_db[1]).model_id)


def _hits(sessions) -> list[int]:
    """Hits per layer counted by the database objects of ``sessions``, each object once.

    Sessions over one folder share one database object (attmemo/session.py), which
    counts every lookup of the model routed to it (custom_ops/registry.py).
    """
    databases = {id(s._memo): s._memo for s in sessions}.values()
    stats = [d.stats.snapshot() for d in databases]
    return [sum(s.get(layer, {}).get("hits", 0) for s in stats) for layer in range(len(HITS[0]))]


def _schedule(seed: int, count: int) -> list[int]:
    """Every request ROUNDS times, in an order of its own."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(count), ROUNDS)).tolist()


def _in_threads(work, args: list) -> list:
    """work(arg) for each arg in its own thread; fails, rather than hangs, if one is not done in TIMEOUT."""
    pool = ThreadPoolExecutor(max_workers=len(args))
    futures = [pool.submit(work, arg) for arg in args]
    _, pending = wait(futures, timeout=TIMEOUT)
    # A deadlocked thread cannot be stopped: fail now (it still holds up interpreter exit).
    pool.shutdown(wait=not pending, cancel_futures=True)
    assert not pending, f"{len(pending)} of {len(args)} threads still running after {TIMEOUT} s: a deadlock?"
    return [future.result() for future in futures]


def _total_hits(repeats: int) -> list[int]:
    return [repeats * sum(layer) for layer in zip(*HITS)]


def test_threads_with_a_session_each_match_a_single_thread(tiny_db, requests, single_thread):
    model, db, _ = tiny_db

    before = _hits([attmemo.InferenceSession(str(model), db=db)])

    def serve(seed: int):
        session = attmemo.InferenceSession(str(model), db=db)   # created while the other threads serve
        return session, [(i, session.run(None, requests[i])[0]) for i in _schedule(seed, len(requests))]

    results = _in_threads(serve, list(range(THREADS)))
    for _, runs in results:
        assert len(runs) == ROUNDS * len(requests)
        for i, output in runs:
            np.testing.assert_array_equal(output, single_thread[i])
    after = _hits([session for session, _ in results])
    assert [a - b for a, b in zip(after, before)] == _total_hits(THREADS * ROUNDS)


def test_threads_sharing_one_session_match_a_single_thread(tiny_db, requests, single_thread):
    model, db, _ = tiny_db
    session = attmemo.InferenceSession(str(model), db=db)
    before = _hits([session])

    def serve(seed: int):
        return [(i, session.run(None, requests[i])[0]) for i in _schedule(seed, len(requests))]

    for runs in _in_threads(serve, list(range(THREADS))):
        for i, output in runs:
            np.testing.assert_array_equal(output, single_thread[i])
    assert [a - b for a, b in zip(_hits([session]), before)] == _total_hits(THREADS * ROUNDS)


# One serving process: opens the database, says "ready", waits for "go" on stdin (so that both
# processes serve at the same time), runs every request `rounds` times, saves the first round's
# outputs and prints whether later rounds repeated them, and its hits per layer, as JSON.
_SERVER = """
import json, sys
import numpy as np
import attmemo

model, db, requests_path, out_path, rounds = sys.argv[1:6]
stored = np.load(requests_path, allow_pickle=False)
requests = [{name: stored[f"{i}/{name}"] for name in json.loads(str(stored[f"{i}/names"]))}
            for i in range(int(stored["count"]))]
session = attmemo.InferenceSession(model, db=db)
print("ready", flush=True)
sys.stdin.readline()
first = [session.run(None, feed)[0] for feed in requests]
stable = all(np.array_equal(session.run(None, feed)[0], want)
             for _ in range(int(rounds) - 1) for feed, want in zip(requests, first))
np.savez(out_path, *first)
stats = session.memo_stats()
print(json.dumps({"stable": stable, "hits": [stats[layer]["hits"] for layer in sorted(stats)]}), flush=True)
"""


def test_two_processes_serve_from_one_database_at_once(tiny_db, requests, single_thread, tmp_path):
    """Both map the same files read-only; each gets the in-process answers, and the files stay as built."""
    model, db, _ = tiny_db
    stored = {"count": np.array(len(requests))}
    for i, feed in enumerate(requests):
        stored[f"{i}/names"] = np.array(json.dumps(sorted(feed)))
        stored.update({f"{i}/{name}": value for name, value in feed.items()})
    np.savez(tmp_path / "requests.npz", **stored)
    rounds = 30
    servers = [subprocess.Popen([sys.executable, "-c", _SERVER, str(model), str(db), str(tmp_path / "requests.npz"),
                                 str(tmp_path / f"out{n}.npz"), str(rounds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for n in range(2)]
    watchdogs = [threading.Timer(TIMEOUT, server.kill) for server in servers]   # a hung server ends its pipes
    try:
        for watchdog in watchdogs:
            watchdog.start()
        for server in servers:
            assert server.stdout.readline().strip() == "ready", server.stderr.read()
        for server in servers:
            server.stdin.write("go\n")
            server.stdin.flush()
        finished = [server.communicate(timeout=TIMEOUT) for server in servers]
    finally:
        for server, watchdog in zip(servers, watchdogs):
            watchdog.cancel()
            server.kill()
    for n, (server, (stdout, stderr)) in enumerate(zip(servers, finished)):
        assert server.returncode == 0, stderr
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result == {"stable": True, "hits": _total_hits(rounds)}
        outputs = np.load(tmp_path / f"out{n}.npz", allow_pickle=False)
        for i, want in enumerate(single_thread):
            np.testing.assert_array_equal(outputs[f"arr_{i}"], want)
    MemoDatabase.open(db, verify_checksums=True)
