"""Damaged memo databases: a clean refusal or exact answers, never a crash or a wrong answer.

Hypothesis mutates a copy of the real tiny database (conftest ``tiny_db``):
JSON-level edits of manifest.json, and byte flips, truncations, extensions,
deletions and symlinks out of the folder for any of its files. Each copy is
opened twice, as a real session of the real model:

- strict (``db=`` given): either MemoDatabaseError, one line starting with a
  path inside the copy, or a session whose outputs match the exact model;
- not strict (the copy found beside the model): never raises; refused exactly
  when strict refused, and then bit-identical to the exact model.

"Match" is within the unorm16 storage tolerance: corpus texts hit and reuse
stored attention. The texts that do not hit have token counts the corpus never
had, so no threshold can make them hit. One damage only ``attmemo verify-db``
sees: a flipped byte inside a value store (checking value stores per lookup
would cost as much as a hit saves), so for those the session must only not
crash, and ``MemoDatabase.open(verify_checksums=True)`` must refuse the copy.

Every byte-level change to a file other than manifest.json must be refused at
open (sizes, and sha256 of all but the value stores), except that value-store
flip. Outcome counts per kind of mutation are printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attmemo
from attmemo.custom_ops import registry
from attmemo.export.memo_export import tokenizer_dir_for
from attmemo.store import MemoDatabase, MemoDatabaseError
from conftest import TINY_CORPUS, max_diff_on_real_tokens

# unorm16 stores each probability to 1/131070; measured on the tiny bert after two reused layers: 5e-5.
STORED_ATOL = 1e-3
# Fixed seeds (derandomize), so the outcome counts printed at the end are reproducible; each test sets its examples.
SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

OUTCOMES: Counter[tuple[str, str, str]] = Counter()   # (mutation, target, outcome) -> examples


@pytest.fixture(scope="module")
def world(tiny_db, tmp_path_factory):
    """The pristine database, a model copy whose sibling ``model.memo`` each example replaces, and exact outputs."""
    model, db, _ = tiny_db
    home = tmp_path_factory.mktemp("mutations")
    shutil.copyfile(model, home / "model.onnx")
    pristine = MemoDatabase.open(db)
    tokenizer = _tokenizer(model)
    short = next(t for t in ("price", "price data", "news market price data", "price data news market team game")
                 if len(tokenizer(t)["input_ids"]) not in pristine.stored_lengths)
    batches = [[TINY_CORPUS[0]], [TINY_CORPUS[9]], [short], [TINY_CORPUS[5], short]]
    registry.detach(pristine.model_id)
    exact_session = ort.InferenceSession(str(model), attmemo.session_options())
    feeds = [_feed(tokenizer, exact_session, texts) for texts in batches]
    return dict(db=db, model=home / "model.onnx", copy=home / "model.memo", model_id=pristine.model_id,
                feeds=feeds, exact=[exact_session.run(None, feed)[0] for feed in feeds],
                files=sorted(str(p.relative_to(db)) for p in db.rglob("*") if p.is_file()))


def _tokenizer(model: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tokenizer_dir_for(model)))


def _feed(tokenizer, session, texts: list[str]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v.astype(np.int64) for k, v in tokenizer(texts, padding=True, return_tensors="np").items()
            if k in names}


@pytest.fixture(scope="module", autouse=True)
def report_outcomes(request):
    """Print what every kind of mutation produced (the numbers of the issue's closing note)."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not OUTCOMES:
        return
    with capture.global_and_fixture_disabled():   # teardown output is captured otherwise
        reporter.write_line(f"\nmemo database mutations: {sum(OUTCOMES.values())} examples")
        for (mutation, target, outcome), count in sorted(OUTCOMES.items()):
            reporter.write_line(f"  {count:4d}  {mutation:<16} {target:<14} {outcome}")


def test_the_pristine_copy_hits_and_matches_the_exact_model(world):
    """Without this the mutation tests could pass by never serving anything."""
    shutil.copytree(world["db"], world["copy"])
    try:
        outcome, outputs = _open_strict(world)
        assert outcome == "served"
        _assert_matches_exact(world, outputs)
        session = attmemo.InferenceSession(str(world["model"]))
        assert session.memo_status.startswith(f"serving {world['copy']}:")
        before = [s["hits"] for s in session.memo_stats().values()] or [0, 0]  # shared with the strict session
        for feed in world["feeds"]:
            session.run(None, feed)
        after = [s["hits"] for s in session.memo_stats().values()]
        assert [a - b for a, b in zip(after, before)] == [3, 3]
    finally:
        registry.detach(world["model_id"])
        shutil.rmtree(world["copy"])


# --- manifest.json, edited as JSON ---------------------------------------------------------------

FIELDS = ["buckets", "corpus", "dtype", "files", "key", "layers", "model_id", "schema_version", "threshold"]
NUMERIC_FIELDS = ["buckets", "corpus", "files", "key", "layers", "schema_version", "threshold"]
ANY_JSON = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8)
            | st.lists(st.integers(0, 99), max_size=3)
            | st.dictionaries(st.text(max_size=4), st.integers(0, 99), max_size=3))


@pytest.mark.parametrize("kind, field", [("delete", f) for f in FIELDS] + [("retype", f) for f in FIELDS]
                         + [("renumber", f) for f in NUMERIC_FIELDS])
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_manifest_edits_are_refused_or_harmless(world, kind, field, data):
    """Delete a field or something inside it, give it a random JSON value, or change one of its numbers."""
    with _mutated_copy(world) as copy:
        manifest = json.loads((copy / "manifest.json").read_text())
        if kind == "renumber":
            path = data.draw(st.sampled_from([p for p in _number_paths(manifest) if p[0] == field]))
            value = _at(manifest, path)
            new = data.draw(st.sampled_from([value + 1, value - 1, -value, 0, value * 2, value / 2, value + 0.5,
                                             10**6]))
        else:
            path = _draw_path(manifest, field, data)
            new = data.draw(ANY_JSON)
        parent = _at(manifest, path[:-1])
        if kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
        (copy / "manifest.json").write_text(json.dumps(manifest))
        _check(world, mutation=kind, target=field, must_refuse=False)


ESCAPES = {"path-escape": "files", "schema-version": "schema_version", "model-id": "model_id",
           "layer-index": "layers"}   # kind -> field it edits


@pytest.mark.parametrize("kind", ESCAPES)
@settings(SETTINGS, max_examples=6)
@given(data=st.data())
def test_manifest_edits_that_must_be_refused(world, kind, data):
    """A listed path out of the folder, another schema, another model, a layer the model lacks."""
    with _mutated_copy(world) as copy:
        manifest = json.loads((copy / "manifest.json").read_text())
        _escape(kind, manifest, copy, world, data)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        _check(world, mutation=kind, target=ESCAPES[kind], must_refuse=True)


def _escape(kind: str, manifest: dict, copy: Path, world, data) -> None:
    if kind == "path-escape":
        name = data.draw(st.sampled_from(sorted(manifest["files"])))
        outside = data.draw(st.sampled_from(
            ["../" + name, "L0/../../" + name, str(world["db"] / name), "/" + name, f"{name}/../../x"]))
        manifest["files"][outside] = manifest["files"].pop(name)
    elif kind == "schema-version":
        manifest["schema_version"] = data.draw(st.sampled_from([0, 2, 99, -1, "1", 1.0, True, None]))
    elif kind == "model-id":
        manifest["model_id"] = data.draw(st.sampled_from(["0" * 16, manifest["model_id"] + "0", "other model"]))
    else:   # a consistent database whose layer index the model does not have
        layer = data.draw(st.sampled_from(sorted(manifest["layers"])))
        new = str(data.draw(st.integers(2, 9)))
        manifest["layers"][new] = manifest["layers"].pop(layer)
        os.rename(copy / f"L{layer}", copy / f"L{new}")
        manifest["files"] = {re.sub(rf"^L{layer}/", f"L{new}/", k): v for k, v in manifest["files"].items()}


def _draw_path(tree: dict, field: str, data) -> list[str]:
    """A path to ``field`` or a node inside it, each level deeper on a coin flip."""
    path, node = [field], tree[field]
    while isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        path.append(key)
        node = node[key]
    return path


def _number_paths(tree, prefix=()) -> list[tuple]:
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _number_paths(v, prefix + (k,))]
    return [prefix] if type(tree) in (int, float) else []


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


# --- any file, edited as bytes -------------------------------------------------------------------

FILE_MUTATIONS = ["flip", "truncate", "extend", "delete", "symlink-out"]
TARGETS = ["manifest.json", "lengths", "tokens", "key weights", ".ann", ".values"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("op", FILE_MUTATIONS)
@settings(SETTINGS, max_examples=4)
@given(data=st.data())
def test_file_mutations_are_refused_unless_only_verify_db_can_see_them(world, op, target, data):
    name = data.draw(st.sampled_from([name for name in world["files"] if _kind_of(name) == target]))
    with _mutated_copy(world) as copy:
        file = copy / name
        size = file.stat().st_size
        if op == "flip":
            offset, mask = data.draw(st.integers(0, size - 1)), data.draw(st.integers(1, 255))
            with open(file, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)[0]
                f.seek(offset)
                f.write(bytes([byte ^ mask]))
        elif op == "truncate":
            os.truncate(file, data.draw(st.integers(0, size - 1)))
        elif op == "extend":
            with open(file, "ab") as f:
                f.write(data.draw(st.binary(min_size=1, max_size=64)))
        elif op == "delete":
            file.unlink()
        else:   # the same bytes, but through a symlink (of the file or its folder) out of the database
            victim = file.parent if file.parent != copy and data.draw(st.booleans()) else file
            shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
            victim.symlink_to(world["db"] / victim.relative_to(copy))
        values_flip = op == "flip" and target == ".values"
        outcome = _check(world, mutation=op, target=target, values_flip=values_flip,
                         must_refuse=target != "manifest.json" and not values_flip)
        if values_flip:
            assert outcome.startswith("served")
            with pytest.raises(MemoDatabaseError, match=re.escape(name) + ": checksum"):
                MemoDatabase.open(copy, verify_checksums=True)


def _kind_of(name: str) -> str:
    if name == "manifest.json" or name.startswith(("lengths/", "tokens/")):
        return name.split("/")[0]
    return "key weights" if "/key." in name else Path(name).suffix


# --- strict or not -------------------------------------------------------------------------------

def test_strict_by_default_only_for_a_database_you_give(world):
    from attmemo.session import refused_databases

    with _mutated_copy(world) as copy:
        index = copy / "L1" / "b8.ann"
        index.write_bytes(index.read_bytes()[::-1])   # same size, other bytes
        before = refused_databases[str(copy)]
        with pytest.raises(MemoDatabaseError, match=r"L1/b8\.ann: checksum differs"):
            attmemo.InferenceSession(str(world["model"]), db=copy)
        with pytest.raises(MemoDatabaseError, match=r"L1/b8\.ann: checksum differs"):
            attmemo.InferenceSession(str(world["model"]), strict=True)                # found beside it, but strict
        with pytest.raises(MemoDatabaseError, match=r"L1/b8\.ann: checksum differs"):
            attmemo.session_options(db=copy)
        for session in (attmemo.InferenceSession(str(world["model"])),                # found beside it
                        attmemo.InferenceSession(str(world["model"]), db=copy, strict=False)):
            assert session.memo_status.startswith("disabled: ") and "b8.ann: checksum differs" in session.memo_status
            assert session.memo_stats() == {}
            assert np.array_equal(session.run(None, world["feeds"][0])[0], world["exact"][0])
        attmemo.session_options(db=copy, strict=False)
        assert registry.memo_for(world["model_id"]) is None
        assert refused_databases[str(copy)] == before + 3


def test_a_database_is_checked_against_the_model_before_it_is_attached(world):
    with _mutated_copy(world) as copy:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["model_id"] = "another model"
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(MemoDatabaseError, match="built for model another model, but this model is "
                                                    + world["model_id"]):
            attmemo.InferenceSession(str(world["model"]), db=copy)
        assert registry.memo_for("another model") is None and registry.memo_for(world["model_id"]) is None


# --- the checks every mutated copy goes through ---------------------------------------------------

@contextlib.contextmanager
def _mutated_copy(world):
    """A fresh copy of the pristine database as ``model.memo`` beside the model copy, removed afterwards."""
    shutil.copytree(world["db"], world["copy"])
    try:
        yield world["copy"]
    finally:
        registry.detach(world["model_id"])
        shutil.rmtree(world["copy"], ignore_errors=True)


def _check(world, *, mutation: str, target: str, must_refuse: bool, values_flip: bool = False) -> str:
    outcome, outputs = _open_strict(world)
    if outcome == "served" and not values_flip:
        _assert_matches_exact(world, outputs)
    elif outcome == "served":   # no assertion on the outputs: record whether the flip reached them
        changed = any(max_diff_on_real_tokens(got, exact, feed["attention_mask"]) > STORED_ATOL
                      for feed, got, exact in zip(world["feeds"], outputs, world["exact"]))
        outcome = f"served, outputs {'changed' if changed else 'unchanged'}; verify-db refuses"
    status, lenient = _open_lenient(world)
    assert status.startswith("disabled: ") == outcome.startswith("refused"), status
    if outcome.startswith("refused"):
        assert all(np.array_equal(a, b) for a, b in zip(lenient, world["exact"]))
    elif not values_flip:
        _assert_matches_exact(world, lenient)
    OUTCOMES[mutation, target, outcome] += 1
    assert not must_refuse or outcome.startswith("refused"), f"{mutation} of {target} was served"
    return outcome


def _open_strict(world) -> tuple[str, list[np.ndarray] | None]:
    """("refused: <reason>", None) or ("served", outputs of every feed)."""
    try:
        session = attmemo.InferenceSession(str(world["model"]), db=world["copy"], strict=True)
    except MemoDatabaseError as error:
        message = str(error)
        assert "\n" not in message and message.endswith(".")
        assert re.match(re.escape(str(world["copy"])) + r"\S*: ", message), message   # names a file of the copy
        return f"refused: {_reason(message)}", None
    try:
        return "served", [session.run(None, feed)[0] for feed in world["feeds"]]
    finally:
        registry.detach(world["model_id"])


def _open_lenient(world) -> tuple[str, list[np.ndarray]]:
    session = attmemo.InferenceSession(str(world["model"]))    # finds model.memo beside it: not strict
    try:
        return session.memo_status, [session.run(None, feed)[0] for feed in world["feeds"]]
    finally:
        registry.detach(world["model_id"])


def _assert_matches_exact(world, outputs: list[np.ndarray]) -> None:
    for feed, got, exact in zip(world["feeds"], outputs, world["exact"]):
        assert max_diff_on_real_tokens(got, exact, feed["attention_mask"]) <= STORED_ATOL


_REASONS = [("outside the database folder", "path outside the folder"), ("schema version", "schema version"),
            ("not a valid attmemo manifest", "schema"), ("checksum", "checksum"), ("bytes", "size"),
            ("missing", "missing file"), ("does not list", "unlisted file"), ("built for model", "model id"),
            ("MemoAttention layers", "layer count"), ("integer lengths", "rows vs length table"),
            ("key-embedding", "key size vs weights"), ("keys pool", "key pooling")]


def _reason(message: str) -> str:
    return next((reason for pattern, reason in _REASONS if pattern in message), f"other ({message[-60:]})")
