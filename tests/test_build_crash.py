"""Killing ``attmemo build-db`` at any moment never loses the previous database.

Real build subprocesses (the installed ``attmemo`` command, writing over a copy
of the tiny bert's database) are killed with SIGKILL, which runs no cleanup, at
every stage of a build: as it starts, while recording, while training, and at
the three instants around the renames that put the new folder in place (too
short to hit by timing, so a start-up hook in the child kills it exactly
there). After each kill the previous database must open with every checksum
right and give the answers it gave before the build; the next build must
restart cleanly: put a database left aside back, remove every leftover, succeed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import attmemo
from attmemo.custom_ops import registry
from attmemo.export.memo_export import tokenizer_dir_for
from attmemo.store import MemoDatabase, MemoDatabaseError
from attmemo.builder.build import build_database
from attmemo.builder.train import KeyTraining
from conftest import TINY_CORPUS

BIN = Path(sys.executable).parent
MAX_LENGTH = 32
# Members of the tiny corpus (hits) and a text of words the corpus never has (a miss).
TEXTS = TINY_CORPUS[::5] + ["music film world city sport business"]

# Loaded by the build subprocess at start-up (as sitecustomize): SIGKILL itself at one of the
# renames of _replace_dir, which take microseconds and cannot be hit by a timed kill.
_KILL_AT_RENAME = """
import os, signal
_out, _when = os.environ["ATTMEMO_TEST_OUT"], os.environ["ATTMEMO_TEST_KILL"]
_replace = os.replace

def _replace_then_maybe_die(src, dst, **kwargs):
    moves_out_aside = os.path.realpath(src) == _out
    if _when == "before-renames" and moves_out_aside:
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(src, dst, **kwargs)
    if (_when == "between-renames" and moves_out_aside) or (_when == "after-renames" and os.path.realpath(dst) == _out):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = _replace_then_maybe_die
"""


def _recorded_half(line: str) -> bool:
    match = re.match(r"recording: (\d+)/(\d+) texts", line)
    return match is not None and 2 * int(match[1]) >= int(match[2])


@dataclasses.dataclass
class Kill:
    at: str                                       # where the build dies
    on_line: Callable[[str], bool] | None = None  # killed when it prints such a line ...
    hook: bool = False                            # ... or it kills itself at a rename (_KILL_AT_RENAME)
    leaves: set[str] | None = None                # leftover folder kinds ("building", "old"); None: timing decides


KILLS = [
    Kill("start", on_line=lambda line: line.startswith("building the memo database")),   # before or after mkdtemp
    Kill("recording", on_line=_recorded_half, leaves={"building"}),
    Kill("training", on_line=lambda line: line.startswith("training key embeddings: 1/"), leaves={"building"}),
    Kill("before-renames", hook=True, leaves={"building"}),            # manifest written, nothing renamed
    Kill("between-renames", hook=True, leaves={"building", "old"}),    # nothing at --out
    Kill("after-renames", hook=True, leaves={"building", "old"}),      # the new database in place
]


def _killed_build(model: Path, corpus: Path, db: Path, kill: Kill, hook_dir: Path) -> tuple[int, str]:
    """Run ``attmemo build-db`` over ``db`` and SIGKILL it as ``kill`` says; return (exit status, output)."""
    env = dict(os.environ)
    if kill.hook:
        env.update(PYTHONPATH=str(hook_dir), ATTMEMO_TEST_OUT=str(db.resolve()), ATTMEMO_TEST_KILL=kill.at)
    proc = subprocess.Popen([str(BIN / "attmemo"), "build-db", str(model), "--corpus", str(corpus),
                             "--out", str(db), "--max-length", str(MAX_LENGTH)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(180, proc.kill)   # a hung build ends the read loop below
    watchdog.start()
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            if kill.on_line and kill.on_line(line):
                proc.send_signal(signal.SIGKILL)
                break
        return proc.wait(timeout=60), "".join(output)
    finally:
        watchdog.cancel()
        proc.stdout.close()


def _answers(model: Path, db: Path, tokenizer) -> tuple[list[np.ndarray], list[int]]:
    """Outputs of TEXTS (one run each) served from ``db``, and the hits per layer they made."""
    MemoDatabase.open(db, verify_checksums=True)   # raises MemoDatabaseError naming a damaged file
    session = attmemo.InferenceSession(str(model), db=db)
    try:
        names = {i.name for i in session.get_inputs()}
        outputs = []
        for text in TEXTS:
            feed = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
            outputs.append(session.run(None, {k: v.astype(np.int64) for k, v in feed.items() if k in names})[0])
        return outputs, [s["hits"] for _, s in sorted(session.memo_stats().items())]
    finally:
        registry.detach(session._memo.model_id)


def _leftovers(db: Path) -> dict[str, list[str]]:
    """Folders beside ``db`` that builds of it leave: {"building": [...], "old": [...]}."""
    names = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(f".{db.name}."))
    return {kind: [n for n in names if n.startswith(f".{db.name}.{kind}-")] for kind in ("building", "old")}


@pytest.fixture(scope="module")
def tokenizer(tiny_db):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tokenizer_dir_for(tiny_db[0])))


@pytest.fixture(scope="module")
def before(tiny_db, tokenizer):
    """The answers of the untouched database, which every kill must preserve."""
    outputs, hits = _answers(tiny_db[0], tiny_db[1], tokenizer)
    assert all(h > 0 for h in hits)   # members hit: a database that lost entries would answer differently
    return outputs, hits


def _assert_same_answers(model: Path, db: Path, tokenizer, before) -> None:
    outputs, hits = _answers(model, db, tokenizer)
    assert hits == before[1]
    for got, want in zip(outputs, before[0]):
        np.testing.assert_array_equal(got, want)


def _rebuild(model: Path, corpus: Path, db: Path) -> None:
    """What build-db runs, in process (a CLI start costs ~8 s): it must start over cleanly and finish."""
    build_database(model, corpus, out=db, max_length=MAX_LENGTH, training=KeyTraining(epochs=5))
    assert _leftovers(db) == {"building": [], "old": []}
    MemoDatabase.open(db, verify_checksums=True)


def test_a_build_killed_at_any_stage_keeps_the_previous_database(tiny_db, tokenizer, before, tmp_path):
    model, original, corpus = tiny_db
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_KILL_AT_RENAME)
    dbs = {kill.at: tmp_path / kill.at / "tiny.memo" for kill in KILLS}
    for db in dbs.values():
        shutil.copytree(original, db)
    manifest = (original / "manifest.json").read_bytes()

    # The builds run at once (each over its own copy): their start-up, not the build, takes the time.
    with ThreadPoolExecutor(max_workers=len(KILLS)) as pool:
        results = list(pool.map(lambda k: _killed_build(model, corpus, dbs[k.at], k, tmp_path / "hook"), KILLS))

    for kill, (status, output) in zip(KILLS, results):
        db = dbs[kill.at]
        assert status == -signal.SIGKILL, f"{kill.at}: the build was not killed (status {status}):\n{output}"
        assert "wrote" not in output, kill.at
        left = _leftovers(db)
        if kill.leaves is not None:
            assert {kind for kind, names in left.items() if names} == kill.leaves, f"{kill.at}: {left}"
        if kill.at == "after-renames":
            MemoDatabase.open(db, verify_checksums=True)   # the new database, complete
        elif kill.at == "between-renames":
            assert not db.exists()
            previous = db.parent / left["old"][0]
            assert (previous / "manifest.json").read_bytes() == manifest
            _assert_same_answers(model, previous, tokenizer, before)
        else:
            assert (db / "manifest.json").read_bytes() == manifest
            _assert_same_answers(model, db, tokenizer, before)
        _rebuild(model, corpus, db)


def test_build_db_after_a_kill_between_the_renames_restores_the_database_and_finishes(tiny_db, tmp_path):
    model, original, corpus = tiny_db
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_KILL_AT_RENAME)
    db = tmp_path / "tiny.memo"
    shutil.copytree(original, db)
    status, output = _killed_build(model, corpus, db, Kill("between-renames", hook=True), tmp_path / "hook")
    assert status == -signal.SIGKILL and not db.exists(), output

    rerun = subprocess.run([str(BIN / "attmemo"), "build-db", str(model), "--corpus", str(corpus), "--out", str(db),
                            "--max-length", str(MAX_LENGTH)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "restored the previous database" in rerun.stderr and f"wrote {db}" in rerun.stdout
    assert _leftovers(db) == {"building": [], "old": []}
    MemoDatabase.open(db, verify_checksums=True)


def test_a_database_left_aside_is_back_even_if_the_next_build_fails(tiny_db, tokenizer, before, tmp_path):
    """What a kill between the renames leaves (see above), made by hand: the next build restores it first."""
    model, original, _ = tiny_db
    db = tmp_path / "tiny.memo"
    shutil.copytree(original, tmp_path / f".tiny.memo.old-{_exited_pid()}")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(MemoDatabaseError, match="no non-empty text"):
        build_database(model, empty, out=db, max_length=MAX_LENGTH)
    assert _leftovers(db) == {"building": [], "old": []}
    _assert_same_answers(model, db, tokenizer, before)


def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    return exited.pid


def test_a_new_build_never_touches_the_folders_of_a_running_build(tiny_db, tmp_path):
    """Leftovers are told apart by the pid in their names: only those of exited processes go."""
    model, original, corpus = tiny_db
    db = tmp_path / "tiny.memo"
    shutil.copytree(original, db)
    running = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (_exited_pid(), running.pid):
            (tmp_path / f".tiny.memo.building-{pid}-x1y2").mkdir()
            (tmp_path / f".tiny.memo.old-{pid}").mkdir()
        (tmp_path / ".other.memo.building-1-abc").mkdir()   # another database's build: not ours to judge
        build_database(model, corpus, out=db, max_length=MAX_LENGTH, training=KeyTraining(epochs=5))
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
            ".other.memo.building-1-abc", f".tiny.memo.building-{running.pid}-x1y2", f".tiny.memo.old-{running.pid}"]
    finally:
        running.kill()
        running.wait()
